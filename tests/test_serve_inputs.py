"""Upload handling: safe zip extraction, size limits, tokens and bind checks."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest

from cadx.errors import ConfigError, InputError
from cadx.serve.auth import check_bind, load_token, token_matches
from cadx.serve.inputs import (
    Upload,
    UploadLimits,
    UploadTooLargeError,
    clean_name,
    extract_zip,
    save_uploads,
)


def _zip(path: Path, members: dict[str, bytes], link: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        if link is not None:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def test_zip_is_extracted_inside_its_folder(tmp_path):
    files = extract_zip(_zip(tmp_path / "a.zip", {"dir/x.nii": b"1", "y.png": b"2"}),
                        UploadLimits())
    assert sorted(p.relative_to(tmp_path).as_posix() for p in files) == [
        "a.zip.d/dir/x.nii", "a.zip.d/y.png"]


@pytest.mark.parametrize("name", ["../evil.nii", "/abs/evil.nii", "a/../../evil.nii",
                                  "C:/evil.nii", "..\\evil.nii"])
def test_zip_path_traversal_is_refused(tmp_path, name):
    archive = _zip(tmp_path / "a.zip", {name: b"x"})
    with pytest.raises(InputError, match="unsafe path"):
        extract_zip(archive, UploadLimits())
    assert not (tmp_path.parent / "evil.nii").exists() and not (tmp_path / "evil.nii").exists()


def test_zip_symlink_is_refused(tmp_path):
    with pytest.raises(InputError, match="symbolic link"):
        extract_zip(_zip(tmp_path / "a.zip", {}, link="passwd"), UploadLimits())


def test_zip_bombs_are_refused(tmp_path):
    bomb = _zip(tmp_path / "bomb.zip", {"zeros.nii": b"\0" * 5_000_000})
    with pytest.raises(UploadTooLargeError, match="zip bomb"):
        extract_zip(bomb, UploadLimits())
    with pytest.raises(UploadTooLargeError, match="expands to"):
        extract_zip(bomb, UploadLimits(max_unzipped_bytes=1_000_000))
    many = _zip(tmp_path / "many.zip", {f"{i}.png": b"x" for i in range(20)})
    with pytest.raises(UploadTooLargeError, match="20 entries"):
        extract_zip(many, UploadLimits(max_zip_members=10))
    assert not list((tmp_path / "bomb.zip.d").glob("*"))  # refused before writing


def test_save_uploads_limits_and_clean_names(tmp_path):
    limits = UploadLimits(max_file_bytes=10, max_files=2)
    paths = save_uploads([Upload("../../etc/ct scan.nii", io.BytesIO(b"12345"))],
                         tmp_path, limits)
    assert paths == [tmp_path / "0" / "ct_scan.nii"]
    with pytest.raises(UploadTooLargeError, match="big.nii"):
        save_uploads([Upload("big.nii", io.BytesIO(b"x" * 11))], tmp_path / "b", limits)
    with pytest.raises(InputError, match="empty"):
        save_uploads([Upload("e.nii", io.BytesIO(b""))], tmp_path / "c", limits)
    assert clean_name("..\\..\\x.png") == "x.png" and clean_name("...") == "upload"


def test_token_sources_and_bind_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("CADX_SERVE_TOKEN", raising=False)
    assert load_token() is None
    monkeypatch.setenv("CADX_SERVE_TOKEN", "from-the-environment-1")
    assert load_token() == "from-the-environment-1"
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file-0123456789\n")
    assert load_token(token_file) == "from-a-file-0123456789"
    token_file.write_text("short")
    with pytest.raises(ConfigError, match="at least 16"):
        load_token(token_file)
    with pytest.raises(ConfigError, match="cannot read"):
        load_token(tmp_path / "missing")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match="0.0.0.0 without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "from-a-file-0123456789")
    assert token_matches("Bearer abc", "abc") and token_matches("bearer  abc", "abc")
    assert not token_matches(None, "abc") and not token_matches("Basic abc", "abc")
