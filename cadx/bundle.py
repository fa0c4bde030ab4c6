"""A trained model as one self-describing file (`.cadx`): weights, thresholds, settings, summary.

The file is a zip holding `manifest.json`, `weights.pt` and `checksum.sha256` (SHA-256 of the
two others). Loading refuses a bundle whose checksum does not match, so a truncated copy or a
hand-edited threshold is never used silently. `cadx sign` adds `signature.hmac-sha256`, an
HMAC-SHA256 of every part with a key the site holds; `cadx serve --require-signed` loads only
bundles that carry it, so an edit whose author recomputed the checksum is refused too.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cadx import __version__
from cadx.config import DecideConfig, PipelineConfig
from cadx.decide.fusion import FusionModel
from cadx.decide.roc import OperatingPoint
from cadx.errors import BundleError, ConfigError
from cadx.io.atomic import atomic_path
from cadx.models.patch_network import build_patch_network
from cadx.train.precision import warn_if_bf16_emulated

if TYPE_CHECKING:
    from cadx.segment.bundle import SegmenterBundle

BUNDLE_FORMAT = "cadx-patch-bundle/1"
# An embedded organ segmenter is stored as its own two parts under this prefix.
SEGMENTER_PREFIX = "segmenter/"


@dataclass
class PatchModelBundle:
    """Everything `diagnose` needs: network weights, both thresholds, the pipeline settings."""

    config: PipelineConfig
    state_dict: dict[str, torch.Tensor]
    patch_operating_point: OperatingPoint
    patient_operating_point: OperatingPoint
    summary: dict[str, Any] = field(default_factory=dict)
    name: str = "cadx-ct-patch-cnn"
    cadx_version: str = __version__
    created_utc: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    # Finds the organ when `diagnose` is given no mask (optional; older bundles have none).
    segmenter: SegmenterBundle | None = None
    # The validation operating point of every candidate patient score, keyed by
    # `DecideConfig.score_name` (older bundles: none).
    patient_operating_points: dict[str, OperatingPoint] = field(default_factory=dict)
    # The patient score fused with clinical values (`cadx fuse`, fitted on the validation
    # patients; older bundles: none).
    fusion: FusionModel | None = None

    @property
    def patch_threshold(self) -> float:
        return self.patch_operating_point.threshold

    @property
    def patient_threshold(self) -> float:
        return self.patient_operating_point.threshold

    def with_patient_score(self, decide: DecideConfig) -> PatchModelBundle:
        """This bundle deciding with another patient score, at that score's threshold chosen
        on the same validation patients at training time; ConfigError when the bundle holds
        none for it."""
        if decide.score_name == self.config.decide.score_name:
            return self
        point = self.patient_operating_points.get(decide.score_name)
        if point is None:
            stored = ", ".join(sorted(self.patient_operating_points)) or "none"
            raise ConfigError(f"bundle {self.name} ({self.created_utc}) holds no validation "
                              f"threshold for the patient score {decide.score_name} (stored: "
                              f"{stored}); retrain with --patient-score to use it")
        decide = replace(self.config.decide, patient_score=decide.patient_score,
                         top_k=decide.top_k)
        return replace(self, config=replace(self.config, decide=decide),
                       patient_operating_point=point)

    @property
    def training_in_plane_range_mm(self) -> tuple[float, float] | None:
        """(smallest, largest) in-plane pixel size of the training patients; None for a
        bundle from before cadx recorded it."""
        recorded = self.summary.get("in_plane_spacing_mm")
        if not recorded:
            return None
        return (float(recorded["training_min"]), float(recorded["training_max"]))

    def with_native_in_plane_spacing(self) -> PatchModelBundle:
        """This bundle keeping each scan's own pixels (z alone resampled, as the seed does)
        instead of resampling them to the training pixel size (`--keep-in-plane-spacing`)."""
        if self.config.preprocess.in_plane_spacing_mm is None:
            return self
        preprocess = replace(self.config.preprocess, in_plane_spacing_mm=None)
        return replace(self, config=replace(self.config, preprocess=preprocess))

    def in_plane_spacing_warning(self, spacing_zyx_mm: tuple[float, float, float],
                                 source: str = "") -> str | None:
        """One line when a scan's pixel size is outside the training range (see
        `cadx.preprocess.pipeline.in_plane_spacing_warning`), else None."""
        from cadx.preprocess.pipeline import in_plane_spacing_warning

        recorded = self.summary.get("in_plane_spacing_mm") or {}
        return in_plane_spacing_warning(
            spacing_zyx_mm, self.training_in_plane_range_mm, recorded.get("grid", 0.0),
            self.config.preprocess.in_plane_spacing_mm is not None,
            self.config.patches.size_px, source)

    @property
    def precision(self) -> str:
        """"fp32" or "bf16": how the patches were scored when the thresholds were chosen, and
        so how diagnose and evaluate score them (bundles from before bf16 training: fp32)."""
        return self.config.train.precision

    def build_model(self, *, warn_bf16_emulated: bool = True) -> torch.nn.Module:
        """The network with its trained weights, in eval mode, for scoring on the CPU (one
        RuntimeWarning where the bundle is bf16 and the CPU has no bf16 instructions, unless
        `warn_bf16_emulated` is False: for callers that report `bf16_emulated_warning`
        themselves, in their result's warnings, so that a terminal shows the note once)."""
        if warn_bf16_emulated:
            warn_if_bf16_emulated(self.precision)
        model = build_patch_network(self.config.model, self.config.patches.size_px,
                                    self.config.patches.channels, pretrained=False)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as exc:  # weights of another network version
            raise BundleError(f"bundle {self.name} ({self.created_utc}, cadx "
                              f"{self.cadx_version}): its weights do not fit this version's "
                              f"patch network; retrain it ({str(exc).splitlines()[0]})") from None
        return model.eval()

    def manifest(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT, "name": self.name, "cadx_version": self.cadx_version,
            "created_utc": self.created_utc, "config": self.config.to_dict(),
            "patch_operating_point": self.patch_operating_point.to_dict(),
            "patient_operating_point": self.patient_operating_point.to_dict(),
            "summary": self.summary,
            "patient_operating_points": {name: point.to_dict() for name, point
                                         in self.patient_operating_points.items()},
            **({"fusion": self.fusion.to_dict()} if self.fusion is not None else {}),
        } | ({} if self.segmenter is None else {"segmenter": {
            "name": self.segmenter.name, "created_utc": self.segmenter.created_utc,
            "validation_dice_mean": self.segmenter.summary.get("validation_dice_mean")}})


def _checksum(parts: list[bytes]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return digest.hexdigest()


def write_archive(path: str | Path, parts: dict[str, bytes]) -> Path:
    """Write named byte `parts` plus `checksum.sha256` (over the parts in the given order) as a
    zip, atomically. Every cadx bundle kind is stored this way."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name, data in parts.items():
                archive.writestr(name, data)
            archive.writestr("checksum.sha256", _checksum(list(parts.values())) + "\n")
    return path


def read_archive(path: str | Path, names: list[str]) -> dict[str, bytes]:
    """Read the `names` parts of an archive written by `write_archive` (same order) and verify
    the checksum; BundleError naming the file otherwise."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: model bundle not found")
    try:
        with zipfile.ZipFile(path) as archive:
            parts = {name: archive.read(name) for name in names}
            stored = archive.read("checksum.sha256").decode().strip()
    except (zipfile.BadZipFile, KeyError, OSError, zlib.error) as exc:
        raise BundleError(f"{path}: not a cadx model bundle ({exc})") from None
    if stored != _checksum(list(parts.values())):
        raise BundleError(f"{path}: checksum mismatch; the bundle is corrupt or was edited")
    return parts


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of any cadx bundle, unverified (to decide which loader to use)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return json.loads(archive.read("manifest.json"))
    except FileNotFoundError:
        raise BundleError(f"{path}: model bundle not found") from None
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, zlib.error) as exc:
        raise BundleError(f"{path}: not a cadx model bundle ({exc})") from None


# Optional signature: HMAC-SHA256, with a key the site holds, over every part of the archive
# (names and bytes). The checksum catches corruption; only the signature catches an edit
# whose author recomputed the checksum.
SIGNATURE_NAME = "signature.hmac-sha256"
SIGNING_KEY_ENV = "CADX_SIGNING_KEY"
MIN_SIGNING_KEY_BYTES = 32


def load_signing_key(key_file: str | Path | None = None) -> bytes:
    """The site's signing key from `key_file`, else from $CADX_SIGNING_KEY (surrounding
    whitespace removed); ConfigError if there is none or it is shorter than 32 bytes."""
    if key_file is not None:
        try:
            key = Path(key_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"{key_file}: cannot read the signing key ({exc.strerror})") from None
        source = str(key_file)
    else:
        key = os.environ.get(SIGNING_KEY_ENV, "").strip().encode()
        source = f"${SIGNING_KEY_ENV}"
        if not key:
            raise ConfigError(f"no signing key: give --signing-key-file or set ${SIGNING_KEY_ENV}")
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise ConfigError(f"{source}: the signing key must have at least "
                          f"{MIN_SIGNING_KEY_BYTES} bytes (e.g. `openssl rand -hex 32`)")
    return key


def signing_key_id(key: bytes) -> str:
    """A short public name of a key (not the key): which key signed a bundle."""
    return hashlib.sha256(b"cadx-signing-key-id:" + key).hexdigest()[:12]


def _archive_mac(archive: zipfile.ZipFile, path: Path, key: bytes) -> str:
    names = [name for name in archive.namelist() if name != SIGNATURE_NAME]
    if len(set(names)) != len(names) or "checksum.sha256" not in names:
        raise BundleError(f"{path}: not a cadx model bundle (duplicate or missing parts)")
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for name in sorted(names):
        for part in (name.encode(), archive.read(name)):
            mac.update(len(part).to_bytes(8, "little"))
            mac.update(part)
    return mac.hexdigest()


def sign_bundle(path: str | Path, key: bytes) -> Path:
    """Add (or replace) the bundle's signature with `key`, atomically; any bundle kind."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            digest = _archive_mac(archive, path, key)
            members = [(info, archive.read(info)) for info in archive.infolist()
                       if info.filename != SIGNATURE_NAME]
    except FileNotFoundError:
        raise BundleError(f"{path}: model bundle not found") from None
    except (zipfile.BadZipFile, OSError, zlib.error) as exc:
        raise BundleError(f"{path}: not a cadx model bundle ({exc})") from None
    signature = {"algorithm": "hmac-sha256", "key_id": signing_key_id(key), "digest": digest}
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as out:
            for info, data in members:
                out.writestr(info, data)
            out.writestr(SIGNATURE_NAME, json.dumps(signature) + "\n")
    return path


def verify_bundle_signature(path: str | Path, key: bytes) -> None:
    """BundleError naming the file unless the bundle carries a valid signature by `key`."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            if SIGNATURE_NAME not in archive.namelist():
                raise BundleError(f"{path}: the bundle is not signed; sign it with "
                                  "`cadx sign` (signatures are required here)")
            signature = json.loads(archive.read(SIGNATURE_NAME))
            digest = _archive_mac(archive, path, key)
    except FileNotFoundError:
        raise BundleError(f"{path}: model bundle not found") from None
    except (zipfile.BadZipFile, OSError, zlib.error, ValueError) as exc:
        raise BundleError(f"{path}: not a cadx model bundle ({exc})") from None
    ours = signing_key_id(key)
    if not isinstance(signature, dict) or signature.get("key_id") != ours:
        theirs = signature.get("key_id") if isinstance(signature, dict) else None
        raise BundleError(f"{path}: signed with another key (key id {theirs}, this site's "
                          f"{ours})")
    if not hmac.compare_digest(str(signature.get("digest", "")), digest):
        raise BundleError(f"{path}: the signature does not match: the bundle was changed "
                          "after it was signed")


def save_bundle(bundle: PatchModelBundle, path: str | Path) -> Path:
    """Write the bundle atomically to `path`."""
    buffer = io.BytesIO()
    torch.save(bundle.state_dict, buffer)
    parts = {"manifest.json": json.dumps(bundle.manifest(), indent=2).encode(),
             "weights.pt": buffer.getvalue()}
    if bundle.segmenter is not None:
        parts |= {SEGMENTER_PREFIX + name: data
                  for name, data in bundle.segmenter.to_parts().items()}
    return write_archive(path, parts)


def load_bundle(path: str | Path) -> PatchModelBundle:
    """Read and verify a bundle; raises BundleError naming the file if anything is wrong."""
    names = ["manifest.json", "weights.pt"]
    if "segmenter" in read_manifest(path):
        names += [SEGMENTER_PREFIX + "manifest.json", SEGMENTER_PREFIX + "weights.pt"]
    parts = read_archive(path, names)
    manifest = json.loads(parts["manifest.json"])
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{path}: unsupported bundle format {manifest.get('format')!r}")
    state_dict = torch.load(io.BytesIO(parts["weights.pt"]), map_location="cpu",
                            weights_only=True)
    return PatchModelBundle(
        config=PipelineConfig.from_dict(manifest["config"]),
        state_dict=state_dict,
        patch_operating_point=OperatingPoint.from_dict(manifest["patch_operating_point"]),
        patient_operating_point=OperatingPoint.from_dict(manifest["patient_operating_point"]),
        summary=manifest.get("summary", {}),
        name=manifest["name"], cadx_version=manifest["cadx_version"],
        created_utc=manifest["created_utc"],
        segmenter=_embedded_segmenter(parts, path),
        patient_operating_points={
            name: OperatingPoint.from_dict(point)
            for name, point in manifest.get("patient_operating_points", {}).items()},
        fusion=FusionModel.from_dict(manifest["fusion"]) if manifest.get("fusion") else None,
    )


def _embedded_segmenter(parts: dict[str, bytes], path: str | Path) -> SegmenterBundle | None:
    if SEGMENTER_PREFIX + "manifest.json" not in parts:
        return None
    from cadx.segment.bundle import SegmenterBundle  # cadx.segment imports this module

    return SegmenterBundle.from_parts(parts[SEGMENTER_PREFIX + "manifest.json"],
                                      parts[SEGMENTER_PREFIX + "weights.pt"], path)
