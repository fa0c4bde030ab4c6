"""Mixed precision for training on the CPU: bf16 autocast where the processor has bf16
instructions (AVX512-BF16 or AMX), fp32 otherwise, with one warning instead of a crash or a
silent many-fold slowdown (bf16 emulated in software is slower than fp32)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import torch

PRECISIONS = ("fp32", "bf16")


def cpu_has_bf16() -> bool:
    """True if this CPU runs bf16 matrix work natively."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def resolve_precision(precision: str) -> str:
    """`precision` if this machine can run it fast, else "fp32" with a one-line warning."""
    if precision == "bf16" and not cpu_has_bf16():
        warnings.warn("--precision bf16: this CPU has no bf16 instructions; training in fp32",
                      RuntimeWarning, stacklevel=2)
        return "fp32"
    return precision


@contextlib.contextmanager
def autocast(precision: str) -> Iterator[None]:
    """bf16 autocast on the CPU for "bf16"; nothing for "fp32"."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        yield
