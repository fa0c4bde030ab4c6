"""Signed bundles (issue 15, item 8): an HMAC-SHA256 with the site's key over every part of a
bundle; `cadx serve --require-signed` loads only bundles that carry a valid one, so editing a
threshold and recomputing `checksum.sha256` is refused."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from cadx.bundle import (
    SIGNATURE_NAME,
    load_bundle,
    sign_bundle,
    verify_bundle_signature,
    write_archive,
)
from cadx.cli import main
from cadx.errors import BundleError
from cadx.serve.registry import load_model_folder
from tests.serve_support import write_ct_bundle, write_image_bundle

KEY = b"0123456789abcdef0123456789abcdef-site-key"
OTHER_KEY = b"fedcba9876543210fedcba9876543210-other-key"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_ct_bundle(tmp_path / "models" / "pancreas_ct.cadx")


def _edit_threshold(path: Path, threshold: float) -> None:
    """What the issue did: change the patient threshold and recompute the checksum."""
    with zipfile.ZipFile(path) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        weights = archive.read("weights.pt")
        signature = archive.read(SIGNATURE_NAME) if SIGNATURE_NAME in archive.namelist() else None
    manifest["patient_operating_point"]["threshold"] = threshold
    write_archive(path, {"manifest.json": json.dumps(manifest).encode(), "weights.pt": weights})
    if signature is not None:  # keep the old signature beside the edited parts
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(SIGNATURE_NAME, signature)


def test_a_signed_bundle_verifies_and_still_loads(bundle):
    before = load_bundle(bundle)
    sign_bundle(bundle, KEY)
    verify_bundle_signature(bundle, KEY)
    after = load_bundle(bundle)
    assert after.patient_threshold == before.patient_threshold
    sign_bundle(bundle, KEY)  # signing again replaces the signature
    with zipfile.ZipFile(bundle) as archive:
        assert archive.namelist().count(SIGNATURE_NAME) == 1
    verify_bundle_signature(bundle, KEY)


def test_an_edited_signed_bundle_with_a_recomputed_checksum_is_refused(bundle):
    sign_bundle(bundle, KEY)
    _edit_threshold(bundle, 0.01)
    assert load_bundle(bundle).patient_threshold == 0.01  # the checksum alone is fooled
    with pytest.raises(BundleError, match="changed after it was signed"):
        verify_bundle_signature(bundle, KEY)
    with pytest.raises(BundleError, match="pancreas_ct.cadx"):
        load_model_folder(bundle.parent, signing_key=KEY)


def test_unsigned_and_other_key_bundles_are_refused(bundle):
    with pytest.raises(BundleError, match="not signed"):
        verify_bundle_signature(bundle, KEY)
    sign_bundle(bundle, OTHER_KEY)
    with pytest.raises(BundleError, match="another key"):
        verify_bundle_signature(bundle, KEY)
    assert load_model_folder(bundle.parent)  # without a key nothing is checked


def test_a_part_added_after_signing_is_refused(bundle):
    sign_bundle(bundle, KEY)
    with zipfile.ZipFile(bundle, "a") as archive:
        archive.writestr("classifier.pkl", b"not what was signed")
    with pytest.raises(BundleError, match="changed after it was signed"):
        verify_bundle_signature(bundle, KEY)


def test_image_bundles_are_signed_alike(tmp_path):
    path = write_image_bundle(tmp_path / "thyroid_us.cadx")
    sign_bundle(path, KEY)
    verify_bundle_signature(path, KEY)
    assert load_model_folder(tmp_path, signing_key=KEY)["thyroid_us"].kind == "image"


def test_cli_sign_check_and_serve_require_signed(bundle, tmp_path, monkeypatch, capsys):
    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_: started.append(app))
    monkeypatch.delenv("CADX_SERVE_TOKEN", raising=False)
    key_file = tmp_path / "site.key"
    key_file.write_bytes(KEY + b"\n")
    models = str(bundle.parent)
    serve = ["serve", "--models", models, "--require-signed", "--signing-key-file",
             str(key_file)]
    assert main(serve) == 2
    assert "not signed" in capsys.readouterr().err and not started
    assert main(["sign", str(bundle), "--signing-key-file", str(key_file)]) == 0
    assert "signed" in capsys.readouterr().out
    assert main(["sign", "--check", str(bundle), "--signing-key-file", str(key_file)]) == 0
    assert main(serve) == 0 and len(started) == 1
    _edit_threshold(bundle, 0.01)
    assert main(["sign", "--check", str(bundle), "--signing-key-file", str(key_file)]) == 2
    err = capsys.readouterr().err
    assert "changed after it was signed" in err and "Traceback" not in err
    assert main(serve) == 2 and len(started) == 1


def test_a_short_or_missing_key_is_one_line(bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CADX_SIGNING_KEY", raising=False)
    assert main(["sign", str(bundle)]) == 2
    assert "no signing key" in capsys.readouterr().err
    monkeypatch.setenv("CADX_SIGNING_KEY", "short")
    assert main(["sign", str(bundle)]) == 2
    assert "at least 32 bytes" in capsys.readouterr().err
