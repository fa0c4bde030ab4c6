"""A disk cache of feature matrices, so that `train-features` re-runs (another classifier,
another seed of the SVM search) in seconds instead of re-running every backbone on every image.

The key hashes everything the features depend on: the images' file contents (SHA-256, in order),
the input size and channels, each backbone's name, width, layers and weights, and the texture
flag. Entries are written atomically; a damaged entry is recomputed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cadx.io.atomic import atomic_path

CACHE_FORMAT = "cadx-features/1"


def feature_key(image_hashes: Sequence[str], size_px: int, channels: int,
                networks: Sequence[tuple[str, float, tuple[str, ...]]],
                states: Sequence[dict[str, torch.Tensor]], texture: bool) -> str:
    """Hex digest naming one feature matrix."""
    digest = hashlib.sha256(f"{CACHE_FORMAT}|{size_px}|{channels}|{texture}".encode())
    for (arch, width, layers), state in zip(networks, states, strict=True):
        digest.update(f"|{arch}|{width}|{','.join(layers)}".encode())
        for name in sorted(state):
            digest.update(name.encode())
            digest.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    for image_hash in image_hashes:
        digest.update(image_hash.encode())
    return digest.hexdigest()


def cached(cache_dir: str | Path | None, key: str,
           compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """`compute()`'s matrix, read from `cache_dir/key.npy` when there (True) or computed and
    stored (False). No cache_dir: always computed."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{key}.npy"
    if path.exists():
        try:
            return np.load(path, allow_pickle=False), True
        except (OSError, ValueError):
            path.unlink(missing_ok=True)
    features = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, features)
    return features, False
