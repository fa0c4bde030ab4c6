"""Mixed precision for training on the CPU: bf16 autocast where the processor has bf16
instructions (AVX512-BF16 or AMX), fp32 otherwise, with one warning instead of a crash or a
silent many-fold slowdown (bf16 emulated in software is slower than fp32).

The master weights, the optimiser, BatchNorm and the loss stay fp32: autocast only runs the
convolutions and matrix products of the forward pass (and so their gradients) in bf16, and the
training loops cast the logits back to fp32 before the loss.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

from cadx.config import PRECISIONS

__all__ = ["PRECISIONS", "autocast", "bf16_emulated_warning", "cpu_has_bf16",
           "is_bf16_emulated_note", "resolve_precision", "warn_if_bf16_emulated"]


def cpu_has_bf16() -> bool:
    """True if this CPU runs bf16 matrix work natively."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def _device_has_bf16(device_type: str) -> bool:
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_bf16()


def resolve_precision(precision: str, device_type: str = "cpu") -> str:
    """`precision` if this machine (its CPU, or its GPU for `device_type` "cuda") can run it
    fast, else "fp32" with a one-line warning; "auto" is "bf16" where it runs fast, else "fp32"
    without a warning."""
    if precision == "auto":
        return "bf16" if _device_has_bf16(device_type) else "fp32"
    if precision == "bf16" and not _device_has_bf16(device_type):
        where = "GPU" if device_type == "cuda" else "CPU"
        warnings.warn(f"--precision bf16: this {where} has no bf16 instructions; training in "
                      "fp32", RuntimeWarning, stacklevel=2)
        return "fp32"
    return precision


def bf16_emulated_warning(precision: str, device_type: str = "cpu") -> str | None:
    """One line when a bundle trained in bf16 (`precision`, the bundle's) is scored on a
    device without bf16 instructions, else None. Its scores stay bf16, emulated in software:
    its thresholds were chosen on bf16 scores."""
    if precision == "bf16" and not _device_has_bf16(device_type):
        return _emulated_note("GPU" if device_type == "cuda" else "CPU")
    return None


def _emulated_note(where: str) -> str:
    return (f"this model was trained in bf16, and this {where} has no bf16 instructions: "
            "scoring runs in emulated bf16 (slower; kept so that the scores match the "
            "thresholds stored in the model)")


def is_bf16_emulated_note(line: str) -> bool:
    """True if `line` is a `bf16_emulated_warning`, whichever machine made it (e.g. a Dask
    worker's, among a result's warnings)."""
    return line in (_emulated_note("CPU"), _emulated_note("GPU"))


def warn_if_bf16_emulated(precision: str, device_type: str = "cpu") -> None:
    """`bf16_emulated_warning` as a RuntimeWarning, which Python shows once per process."""
    line = bf16_emulated_warning(precision, device_type)
    if line is not None:
        warnings.warn(line, RuntimeWarning, stacklevel=2)


@contextlib.contextmanager
def autocast(precision: str, device_type: str = "cpu") -> Iterator[None]:
    """bf16 autocast on `device_type` ("cpu" or "cuda") for "bf16"; nothing for "fp32"."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
