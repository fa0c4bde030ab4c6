"""Training at scale: the torchrun process group, and patched cases sharded or streamed.

`cadx train DATASET --out M --ddp` runs under `torchrun --nproc_per_node N`: each rank crops
its share of the cases, the ranks exchange them, DistributedDataParallel trains on N shards of
every batch (cadx.train.fit) and rank 0 alone writes the checkpoint and the bundle. With
`--patch-store DIR` the cases are cropped once into a memory-mapped store (cadx.patches.store)
and every rank maps it instead of holding the patches in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist

from cadx.config import PipelineConfig
from cadx.errors import CadxError, ConfigError
from cadx.io.dataset import CaseRef
from cadx.patches.cohort import PatchedCase, patch_cohort
from cadx.patches.store import MANIFEST_FILE, open_patch_store, store_config, write_patch_store


def is_distributed() -> bool:
    """True inside an initialised torch.distributed process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


@contextmanager
def process_group() -> Iterator[int]:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on
    GPU); yields this rank and leaves the group on exit."""
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
               if v not in os.environ]
    if missing:
        raise ConfigError("--ddp runs under torchrun (e.g. torchrun --nproc_per_node 2 -m "
                          f"cadx.cli train ... --ddp); {', '.join(missing)} not set")
    use_gpu = torch.cuda.is_available()
    if use_gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if use_gpu else "gloo")
    try:
        yield dist.get_rank()
        # Ranks other than 0 finish training first, while rank 0 still writes the bundle: all
        # leave the group together (a rank tearing gloo down early was seen to abort in CI).
        dist.barrier()
    finally:
        dist.destroy_process_group()


def patched_cases(refs: Sequence[CaseRef], config: PipelineConfig, *,
                  patch_store: str | Path | None = None, progress: bool = True
                  ) -> list[PatchedCase]:
    """The cases of `refs` cropped into patches, in `refs` order, on every rank.

    With `patch_store` the patches stay on disk (memory-mapped), cropped by rank 0 unless the
    store already holds these cases with these settings. Otherwise under torch.distributed each
    rank crops every N-th case and the ranks exchange them.
    """
    if patch_store is not None:
        if rank() == 0 and not _store_matches(patch_store, refs, config):
            write_patch_store(refs, config, patch_store, progress=progress)
        if is_distributed():
            dist.barrier()
        return open_patch_store(patch_store)
    if not is_distributed():
        return patch_cohort(refs, config, progress=progress)
    world = dist.get_world_size()
    try:
        mine: list[PatchedCase] | CadxError = patch_cohort(refs[rank()::world], config,
                                                           progress=False)
    except CadxError as exc:  # every rank must reach the exchange, then all raise it
        mine = exc
    shares: list[list[PatchedCase] | CadxError] = [[] for _ in range(world)]
    dist.all_gather_object(shares, mine)
    errors = [share for share in shares if isinstance(share, CadxError)]
    if errors:
        raise errors[0]
    by_id = {case.patient_id: case for share in shares for case in share}
    return [by_id[ref.patient_id] for ref in refs]


def _store_matches(folder: str | Path, refs: Sequence[CaseRef], config: PipelineConfig) -> bool:
    """Whether the store at `folder` was cropped from these patients with these settings."""
    if not (Path(folder) / MANIFEST_FILE).exists():
        return False
    try:  # through the config class, so settings added since the store was cropped (at
        # their defaults) do not make it stale
        stored = _jsonable(PipelineConfig.from_dict(store_config(folder)).to_dict())
    except ConfigError:  # settings this version does not know
        return False
    wanted = _jsonable(config.to_dict())
    same_settings = all(stored[part] == wanted[part]
                        for part in ("labels", "preprocess", "patches"))
    stored_cases = open_patch_store(folder)
    stored_ids = [case.patient_id for case in stored_cases]
    masks_ok = not config.model.dense or all(c.patches.masks is not None for c in stored_cases)
    organ_ok = (not config.model.organ_scored
                or all(c.patches.organ_masks is not None for c in stored_cases))
    return (same_settings and masks_ok and organ_ok
            and stored_ids == [ref.patient_id for ref in refs])


def _jsonable(value: object) -> object:
    """Tuples as lists, as they come back from JSON."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    return value
