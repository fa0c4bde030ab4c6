"""Memory-mapped patch store: same patches as in memory, same training, batch-by-batch reads."""

import tracemalloc

import numpy as np
import pytest

from cadx.config import ModelConfig, PatchConfig, PipelineConfig, TrainConfig
from cadx.errors import InputError
from cadx.io.dataset import load_dataset
from cadx.patches.cohort import patch_cohort
from cadx.patches.grid import PatchSet
from cadx.patches.store import (
    MANIFEST_FILE,
    StoredRows,
    join_patches,
    open_patch_store,
    write_patch_store,
)
from cadx.scale.distributed import patched_cases
from cadx.train.fit import fit_patch_cnn

CONFIG = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=8),
                        model=ModelConfig(batch_norm=False),
                        train=TrainConfig(batch_size=32, max_epochs=2, reduce_lr_patience=1,
                                          early_stop_patience=2))


@pytest.fixture(scope="module")
def refs(tmp_path_factory):
    from tests.conftest import write_toy_dataset

    return load_dataset(write_toy_dataset(tmp_path_factory.mktemp("store") / "d", 6))


def test_store_holds_the_same_patches_and_trains_the_same(refs, tmp_path):
    in_memory = patch_cohort(refs, CONFIG, progress=False)
    stored = open_patch_store(write_patch_store(refs, CONFIG, tmp_path / "s", progress=False))
    assert [c.patient_id for c in stored] == [c.patient_id for c in in_memory]
    for a, b in zip(in_memory, stored, strict=True):
        assert isinstance(b.patches.patches, StoredRows)
        np.testing.assert_array_equal(a.patches.patches, np.asarray(b.patches.patches))
        np.testing.assert_array_equal(a.patches.labels, b.patches.labels)
        np.testing.assert_array_equal(a.patches.coords, b.patches.coords)
        assert a.has_tumour == b.has_tumour
    assert isinstance(join_patches(stored).patches, StoredRows)  # joined without copying

    one_epoch = TrainConfig(batch_size=128, max_epochs=1)
    runs = [fit_patch_cnn(join_patches(cases[:4]), join_patches(cases[4:]), one_epoch,
                          model_config=CONFIG.model, progress=False)[1]
            for cases in (in_memory, stored)]
    assert runs[0].train_loss == runs[1].train_loss
    assert runs[0].validation_auc == runs[1].validation_auc


def _peak_training_bytes(folder, n: int) -> tuple[int, int]:
    """Peak traced allocation of one epoch on an n-patch memory-mapped store; store bytes."""
    rng = np.random.default_rng(n)
    path = folder / f"store{n}.npy"
    mapped = np.lib.format.open_memmap(path, "w+", np.float32, (n, 8, 8))
    mapped[:] = rng.random((n, 8, 8), dtype=np.float32)
    mapped.flush()
    labels = (rng.random(n) < 0.2).astype(np.uint8)
    labels[:2] = [0, 1]
    store = np.load(path, mmap_mode="r")
    train = PatchSet(StoredRows(store, np.arange(n)), np.full(n, "p", dtype=object),
                     np.zeros((n, 3), np.int32), labels)
    validation = train.subset(np.arange(32))
    validation.patches = np.asarray(validation.patches)
    tracemalloc.start()
    fit_patch_cnn(train, validation, TrainConfig(batch_size=512, max_epochs=1), progress=False)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak, store.nbytes


def test_training_reads_the_store_batch_by_batch(tmp_path):
    # The small run absorbs one-time allocations (lazy imports, source lines cached for
    # warnings); reading the whole store would add its size to the large run's peak.
    small_peak, _ = _peak_training_bytes(tmp_path, 128)
    large_peak, large_bytes = _peak_training_bytes(tmp_path, 4096)
    assert large_peak < small_peak + large_bytes / 4, (small_peak, large_peak, large_bytes)


def test_store_is_reused_only_for_the_same_cases_and_settings(refs, tmp_path):
    folder = tmp_path / "s"
    patched_cases(refs, CONFIG, patch_store=folder, progress=False)
    written = (folder / "patches.f32").stat().st_mtime_ns
    patched_cases(refs, CONFIG, patch_store=folder, progress=False)
    assert (folder / "patches.f32").stat().st_mtime_ns == written
    other = PipelineConfig(patches=PatchConfig(size_px=16, stride_px=16))
    cases = patched_cases(refs, other, patch_store=folder, progress=False)
    assert (folder / "patches.f32").stat().st_mtime_ns != written
    assert cases[0].patches.patch_size_px == 16


def test_incomplete_store_is_refused(refs, tmp_path):
    folder = write_patch_store(refs[:2], CONFIG, tmp_path / "s", progress=False)
    (folder / MANIFEST_FILE).unlink()
    with pytest.raises(InputError, match="not a complete cadx patch store"):
        open_patch_store(folder)
