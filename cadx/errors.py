"""cadx's own exceptions: a user error names the file and the problem; the CLI prints one line."""

from __future__ import annotations


class CadxError(Exception):
    """Base class of every error caused by the user's input or environment (not by a bug)."""


class InputError(CadxError):
    """A file is missing, unreadable, or its content does not fit what is expected."""


class GeometryError(InputError):
    """Image and label disagree in shape, spacing, origin or direction."""


class EmptyMaskError(InputError):
    """A label map holds no voxel of the organ."""


class ConfigError(CadxError):
    """A parameter is out of range or inconsistent with the data."""


class SplitError(CadxError):
    """A train/validation/test split is empty, has one class only, or leaks patients."""


class BundleError(CadxError):
    """A model bundle is unreadable, from an unknown format, or fails its checksum."""


class OutputError(CadxError):
    """An output path cannot be written (read-only, not permitted, a file where a folder is
    needed)."""
