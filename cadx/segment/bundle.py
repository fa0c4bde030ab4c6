"""The trained organ segmenter as one file (`seg.cadx`): settings, weights, validation Dice.

Stored like the patch model bundle (`cadx.bundle.write_archive`: manifest.json, weights.pt and
a checksum); a patch model bundle can embed the same two parts under `segmenter/`.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from cadx import __version__
from cadx.bundle import read_archive, write_archive
from cadx.errors import BundleError
from cadx.segment.config import SegConfig
from cadx.segment.network import build_network

SEG_BUNDLE_FORMAT = "cadx-seg-bundle/1"


@dataclass
class SegmenterBundle:
    """A trained organ segmenter: its settings, weights and training summary."""

    config: SegConfig
    state_dict: dict[str, torch.Tensor]
    summary: dict[str, Any] = field(default_factory=dict)
    name: str = "cadx-organ-segmenter-unet2.5d"
    cadx_version: str = __version__
    created_utc: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def build_network(self) -> torch.nn.Module:
        """The UNet with its trained weights, in eval mode."""
        network = build_network(self.config)
        network.load_state_dict(self.state_dict)
        return network.eval()

    def manifest(self) -> dict[str, Any]:
        return {"format": SEG_BUNDLE_FORMAT, "name": self.name,
                "cadx_version": self.cadx_version, "created_utc": self.created_utc,
                "config": self.config.to_dict(), "summary": self.summary}

    def to_parts(self) -> dict[str, bytes]:
        """The bundle's archive parts: manifest.json and weights.pt."""
        buffer = io.BytesIO()
        torch.save(self.state_dict, buffer)
        return {"manifest.json": json.dumps(self.manifest(), indent=2).encode(),
                "weights.pt": buffer.getvalue()}

    @classmethod
    def from_parts(cls, manifest_bytes: bytes, weights_bytes: bytes,
                   source: str | Path) -> SegmenterBundle:
        """Rebuild from `to_parts` output (already checksum-verified); `source` names the file
        in errors."""
        manifest = json.loads(manifest_bytes)
        if manifest.get("format") != SEG_BUNDLE_FORMAT:
            raise BundleError(f"{source}: not an organ segmenter bundle (format "
                              f"{manifest.get('format')!r}, expected {SEG_BUNDLE_FORMAT!r})")
        state_dict = torch.load(io.BytesIO(weights_bytes), map_location="cpu", weights_only=True)
        return cls(config=SegConfig.from_dict(manifest["config"]), state_dict=state_dict,
                   summary=manifest.get("summary", {}), name=manifest["name"],
                   cadx_version=manifest["cadx_version"], created_utc=manifest["created_utc"])


def save_segmenter(bundle: SegmenterBundle, path: str | Path) -> Path:
    """Write the segmenter bundle atomically to `path`."""
    return write_archive(path, bundle.to_parts())


def load_segmenter(path: str | Path) -> SegmenterBundle:
    """Read and verify a segmenter bundle; BundleError naming the file if anything is wrong."""
    parts = read_archive(path, ["manifest.json", "weights.pt"])
    return SegmenterBundle.from_parts(parts["manifest.json"], parts["weights.pt"], path)
