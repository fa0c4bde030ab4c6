"""Issue 14's training and decision levers on hand-made patch sets: patient scores, balanced
batches, flips / rotations, test-time flip averaging, 2.5D input, and their CLI flags."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cadx.bundle import PatchModelBundle, load_bundle, save_bundle
from cadx.case import Case
from cadx.cli import main
from cadx.config import DecideConfig, ModelConfig, PatchConfig, PipelineConfig, TrainConfig
from cadx.decide.aggregate import (
    largest_cluster_scores,
    patient_scores,
    score_patients,
    top_k_mean_scores,
)
from cadx.decide.roc import youden_operating_point
from cadx.errors import ConfigError
from cadx.models.patch_cnn import PatchCNN
from cadx.models.patch_network import PretrainedPatchNet, build_patch_network
from cadx.patches.grid import PatchSet, extract_patches
from cadx.train.fit import (
    _single_process_batches,
    augment_patches,
    fit_patch_cnn,
    predict_patch_probabilities,
)
from cadx.train.loss import WeightedBCELoss, per_tumour_weights
from cadx.train.sampling import BalancedBatchSampler
from tests.conftest import write_toy_dataset

# --- patient scores -------------------------------------------------------------------------


def test_top_k_mean_on_a_hand_made_patch_set():
    ids = np.array(["a", "a", "a", "a", "b", "c", "c", "c"])
    scores = np.array([0.1, 0.9, 0.1, 0.8, 0.5, 0.2, 0.4, 0.3])
    assert top_k_mean_scores(ids, scores, 2) == pytest.approx({"a": 0.85, "b": 0.5, "c": 0.35})
    # k = 1 is the max; k >= the patient's patches is the mean of all of them.
    assert top_k_mean_scores(ids, scores, 1) == pytest.approx({"a": 0.9, "b": 0.5, "c": 0.4})
    assert top_k_mean_scores(ids, scores, 10) == pytest.approx({"a": 0.475, "b": 0.5, "c": 0.3})
    with pytest.raises(ConfigError, match="top-k"):
        top_k_mean_scores(ids, scores, 0)


def test_largest_cluster_on_a_hand_made_patch_set():
    # (slice, y, x) top-left corners on a 50 px grid (stride 50); 184 is a window flush with
    # the border, 34 px from its neighbour at 150.
    coords = np.array([
        [0, 0, 0], [0, 50, 0], [1, 50, 50], [1, 100, 100],  # a: 4 in one cluster (diagonals)
        [5, 0, 0],                                           # a: alone, 4 slices away
        [0, 150, 0], [0, 184, 0],                             # a: 2, the edge window touching
        [2, 0, 0],                                           # a: negative, joins nothing
        [0, 0, 0], [0, 100, 0], [2, 0, 0],                   # b: two grid steps / slices apart
        [0, 0, 0], [1, 0, 0],                                # c: same places as a, but negative
    ])
    ids = np.array(["a"] * 8 + ["b"] * 3 + ["c"] * 2)
    scores = np.array([0.9, 0.8, 0.7, 0.95, 0.9, 0.6, 0.7, 0.1, 0.9, 0.9, 0.9, 0.2, 0.3])
    sizes = largest_cluster_scores(ids, scores, 0.5, coords, neighbour_px=50)
    assert sizes == {"a": 4.0, "b": 1.0, "c": 0.0}
    # A higher patch threshold breaks a's cluster (0.7 and 0.8 drop out).
    assert largest_cluster_scores(ids, scores, 0.85, coords, 50)["a"] == 1.0
    # Finer grid step: 50 px (and 34 px) apart is no longer adjacent.
    assert largest_cluster_scores(ids, scores, 0.5, coords, 25)["a"] == 1.0


def test_score_patients_dispatches_and_fraction_stays_the_seed():
    ids = np.array(["a", "a", "a", "a", "b", "b"])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.6, 0.1])
    coords = np.array([[0, 0, 0], [0, 0, 16], [0, 32, 0], [3, 0, 0], [0, 0, 0], [0, 0, 16]])
    assert score_patients(DecideConfig(), ids, scores, 0.5, coords, 16) == {"a": 0.5, "b": 0.5}
    assert patient_scores(ids, scores, 0.5) == {"a": 0.5, "b": 0.5}
    top = score_patients(DecideConfig("topk", 2), ids, scores, 0.5)
    assert top == pytest.approx({"a": 0.85, "b": 0.35})
    cluster = score_patients(DecideConfig("cluster"), ids, scores, 0.5, coords, 16)
    assert cluster == pytest.approx({"a": 2 / 3, "b": 1 / 2})  # n / (n + 1) of sizes 2, 1
    with pytest.raises(ConfigError, match="coordinates"):
        score_patients(DecideConfig("cluster"), ids, scores, 0.5)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_top_k_below_one_is_refused(bad):
    with pytest.raises(ConfigError, match="top-k"):
        DecideConfig("topk", bad)


# --- class-balanced batches -----------------------------------------------------------------


def test_balanced_batches_hold_the_requested_share():
    labels = np.zeros(1000, np.uint8)
    labels[::100] = 1  # 10 cancerous patches, 1 %
    sampler = BalancedBatchSampler(labels, 64, 0.25, torch.Generator().manual_seed(0))
    batches = list(sampler)
    assert len(batches) == len(sampler) == 16  # as many steps as a plain shuffle
    for batch in batches:
        assert len(batch) == 64 and int(labels[batch.numpy()].sum()) == 16
    everything = torch.cat(batches).numpy()
    assert set(everything[labels[everything] == 1]) == set(np.flatnonzero(labels))
    negatives = everything[labels[everything] == 0]
    assert len(np.unique(negatives)) == len(negatives)  # no negative twice in one pass
    again = list(BalancedBatchSampler(labels, 64, 0.25, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))


def test_training_batches_follow_the_config():
    labels = (np.arange(300) % 30 == 0).astype(np.uint8)
    config = TrainConfig(batch_size=20, balanced_sampling=True, batch_positive_fraction=0.5)
    batches = list(_single_process_batches(labels, config, torch.Generator().manual_seed(1)))
    assert len(batches) == 15
    for index, augmentation in batches:
        assert int(labels[index.numpy()].sum()) == 10
        assert augmentation.shape == (3, 20) and not augmentation[2].any()  # flips only
    plain = list(_single_process_batches(labels, TrainConfig(batch_size=20),
                                         torch.Generator().manual_seed(1)))
    assert sorted(torch.cat([i for i, _ in plain]).tolist()) == list(range(300))
    with pytest.raises(ConfigError, match="fraction"):
        TrainConfig(balanced_sampling=True, batch_positive_fraction=1.0)


def test_per_tumour_weights_give_each_tumour_the_same_total_weight():
    # patient a: 6 cancerous patches (a large tumour), b: 2 (a small one), c: none
    ids = np.array(["a"] * 8 + ["b"] * 4 + ["c"] * 5, dtype=object)
    labels = np.array([1] * 6 + [0] * 2 + [1] * 2 + [0] * 2 + [0] * 5, np.uint8)
    weights = per_tumour_weights(labels, ids)
    assert np.all(weights[labels == 0] == 1.0)
    assert weights[labels == 1].mean() == pytest.approx(1.0)
    assert weights[:6].sum() == pytest.approx(weights[8:10].sum())
    assert weights[8] == pytest.approx(3 * weights[0])
    assert np.all(per_tumour_weights(np.zeros(4, np.uint8), ids[:4]) == 1.0)


def test_patch_weights_multiply_the_class_weights():
    loss = WeightedBCELoss(n_positive=1, n_negative=3)
    logits, targets = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.0, 1.0])
    unweighted = loss(logits, targets)
    assert loss(logits, targets, torch.ones(3)) == pytest.approx(float(unweighted))
    only_first = loss(logits, targets, torch.tensor([3.0, 0.0, 0.0]))
    each = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets,
                                                                reduction="none")
    assert float(only_first) == pytest.approx(float(3 * loss.positive_weight * each[0] / 3))
    with pytest.raises(ConfigError, match="positive weighting"):
        TrainConfig(positive_weighting="lesion")


# --- flips, rotations, test-time flip averaging ---------------------------------------------


def _d4(patch: torch.Tensor) -> list[torch.Tensor]:
    return [torch.rot90(p, k, (-2, -1)) for p in (patch, patch.flip(-1)) for k in range(4)]


def test_flips_and_transposes_give_the_eight_symmetries_at_once():
    patch = torch.arange(2 * 5 * 5, dtype=torch.float32).view(1, 2, 5, 5)  # 2 channels
    combos = torch.tensor([[(i >> b) & 1 for i in range(8)] for b in range(3)], dtype=torch.bool)
    out = augment_patches(patch.expand(8, -1, -1, -1), combos)
    expected = _d4(patch[0])
    for view in out:  # every output is a symmetry, and all 8 are there
        assert sum(torch.equal(view, e) for e in expected) == 1
    assert len({tuple(v.flatten().tolist()) for v in out}) == 8
    # Each patch gets its own transform: compare with a per-patch reference.
    for i in range(8):
        ref = patch[0]
        ref = ref.flip(-1) if combos[0, i] else ref
        ref = ref.flip(-2) if combos[1, i] else ref
        ref = ref.transpose(-1, -2) if combos[2, i] else ref
        assert torch.equal(out[i], ref)
    assert augment_patches(patch, None) is patch


def test_test_time_flip_averaging():
    torch.manual_seed(0)
    model = PatchCNN(16, batch_norm=False).eval()
    patches = np.random.default_rng(0).random((5, 16, 16)).astype(np.float32)
    x = torch.from_numpy(patches).unsqueeze(1)
    with torch.no_grad():
        by_hand = torch.stack([torch.sigmoid(model(v)) for v in
                               (x, x.flip(-1), x.flip(-2), x.flip(-2, -1))]).mean(0)
    averaged = predict_patch_probabilities(model, patches, batch_size=2, flip_average=True)
    np.testing.assert_allclose(averaged, by_hand.numpy(), rtol=1e-5, atol=1e-6)
    flipped = predict_patch_probabilities(model, patches[:, :, ::-1].copy(), flip_average=True)
    np.testing.assert_allclose(flipped, averaged, rtol=1e-5, atol=1e-6)
    plain = predict_patch_probabilities(model, patches)
    assert not np.allclose(plain, averaged)


# --- 2.5D input -----------------------------------------------------------------------------


def _volume_case() -> Case:
    image = np.stack([np.full((40, 40), z, np.float32) for z in range(4)])
    image += np.random.default_rng(1).random(image.shape).astype(np.float32) * 0.1
    organ = np.zeros(image.shape, bool)
    organ[:, 10:30, 10:30] = True
    tumour = np.zeros(image.shape, bool)
    tumour[0, 12, 12] = True
    return Case("p", image, (5, 1, 1), organ, tumour)


def test_context_slices_are_channels_of_the_same_window():
    case = _volume_case()
    flat = extract_patches(case, PatchConfig(size_px=16, stride_px=8))
    deep = extract_patches(case, PatchConfig(size_px=16, stride_px=8, context_slices=1))
    assert deep.patches.shape == (len(flat), 3, 16, 16) and deep.channels == 3
    assert flat.channels == 1
    np.testing.assert_array_equal(deep.patches[:, 1], flat.patches)
    np.testing.assert_array_equal(deep.coords, flat.coords)
    np.testing.assert_array_equal(deep.labels, flat.labels)
    z = deep.coords[:, 0]
    for channel, offset in ((0, -1), (2, 1)):  # neighbours, the end slices repeated
        np.testing.assert_array_equal(np.rint(deep.patches[:, channel].mean(axis=(1, 2)) - 0.05),
                                      np.clip(z + offset, 0, 3))
    with pytest.raises(ConfigError, match="context slices"):
        PatchConfig(context_slices=-1)


def test_two_and_a_half_d_network_input_and_training():
    model = PatchCNN(16, in_channels=5)
    assert model(torch.zeros(3, 5, 16, 16)).shape == (3,)
    assert model.features[0].in_channels == 5
    rng = np.random.default_rng(0)
    labels = (np.arange(64) % 4 == 0).astype(np.uint8)
    patches = rng.random((64, 3, 16, 16)).astype(np.float32)
    patches[labels == 1, 1] *= 0.2
    train = PatchSet(patches, np.array([f"p{i % 8}" for i in range(64)]),
                     np.zeros((64, 3), np.int32), labels)
    config = TrainConfig(batch_size=16, max_epochs=1, augment_rotations=True,
                         balanced_sampling=True)
    model, history = fit_patch_cnn(train, train, config, progress=False)
    assert model.features[0].in_channels == 3 and len(history.train_loss) == 1
    assert predict_patch_probabilities(model, patches, flip_average=True).shape == (64,)


# --- the bundle and the command line --------------------------------------------------------


def _point(auc_flip: bool) -> object:
    y = np.array([0, 0, 1, 1])
    return youden_operating_point(y, np.array([0.1, 0.4, 0.35, 0.8]) if auc_flip
                                  else np.array([0.1, 0.2, 0.3, 0.4]))


def test_bundle_switches_patient_score_at_its_validation_threshold(tmp_path):
    fraction, cluster = _point(False), _point(True)
    bundle = PatchModelBundle(PipelineConfig(), PatchCNN(50).state_dict(), fraction, fraction,
                              patient_operating_points={"fraction": fraction,
                                                        "cluster": cluster})
    path = save_bundle(bundle, tmp_path / "m.cadx")
    loaded = load_bundle(path)
    assert loaded.patient_operating_points["cluster"] == cluster
    switched = loaded.with_patient_score(DecideConfig("cluster"))
    assert switched.config.decide.patient_score == "cluster"
    assert switched.patient_operating_point == cluster
    assert loaded.with_patient_score(DecideConfig()) is loaded
    with pytest.raises(ConfigError, match="no validation threshold for the patient score topk:7"):
        loaded.with_patient_score(DecideConfig("topk", 7))
    two_and_half = replace(PipelineConfig(), patches=PatchConfig(context_slices=2))
    assert replace(bundle, config=two_and_half, state_dict=PatchCNN(50, True, 5).state_dict()
                   ).build_model().in_channels == 5


def _diagnoses_a_toy_patient(model, dataset, tmp_path) -> None:
    out = tmp_path / "diag.json"
    image = dataset / "imagesTr" / "toy_000.nii.gz"
    label = dataset / "labelsTr" / "toy_000.nii.gz"
    assert main(["diagnose", str(model), str(image), "--organ-mask", str(label),
                 "--out", str(out)]) == 0
    assert 0.0 <= json.loads(out.read_text())["patient_score"] <= 1.0


@pytest.fixture(scope="module")
def lever_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("levers")
    dataset = write_toy_dataset(root / "data", n_patients=12)
    model = root / "model.cadx"
    assert main(["train", str(dataset), "--out", str(model), "--patch-size", "16",
                 "--stride", "8", "--epochs", "1", "--batch-size", "32", "--quiet",
                 "--patient-score", "topk", "--top-k", "3", "--tta", "--balanced-sampling",
                 "--augment-patches", "dihedral", "--context-slices", "1",
                 "--positive-weighting", "tumour"]) == 0
    return dataset, model


def test_cli_levers_are_stored_in_the_bundle_and_used(lever_model, tmp_path, capsys):
    dataset, model = lever_model
    bundle = load_bundle(model)
    config = bundle.config
    assert config.decide == DecideConfig("topk", 3, test_time_flips=True)
    assert config.train.balanced_sampling and config.train.augment_rotations
    assert config.train.positive_weighting == "tumour"
    assert config.patches.context_slices == 1
    stored = set(bundle.patient_operating_points)
    assert {"fraction", "cluster", "topk:1", "topk:3", "topk:5", "topk:20"} <= stored
    assert bundle.summary["validation"]["patient_score"] == "topk:3"
    _diagnoses_a_toy_patient(model, dataset, tmp_path)
    report = tmp_path / "rep"
    assert main(["evaluate", str(model), str(dataset), "--out", str(report), "--quiet",
                 "--n-boot", "50", "--patient-score", "cluster"]) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["levels"]["patient"]["threshold"] == pytest.approx(
        bundle.patient_operating_points["cluster"].threshold)


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("cadx: error: ") and len(err.splitlines()) == 1
    return err


def test_out_of_range_lever_flags_are_one_line_errors(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "data", n_patients=4)
    for flags in (["--patient-score", "topk", "--top-k", "0"], ["--context-slices", "-1"],
                  ["--balanced-sampling", "--batch-positive-fraction", "0"]):
        assert main(["train", str(dataset), "--out", str(tmp_path / "m.cadx"), *flags]) == 2
        assert "Traceback" not in _error_line(capsys)
        assert not (tmp_path / "m.cadx").exists()
    # a model file that exists (a missing one is refused first, before any option is read)
    (tmp_path / "m.cadx").write_bytes(b"")
    assert main(["evaluate", str(tmp_path / "m.cadx"), str(dataset), "--out",
                 str(tmp_path / "r"), "--top-k", "0"]) == 2
    assert "top-k must be an integer >= 1, got 0" in _error_line(capsys)


def test_defaults_are_the_measured_ones_and_the_seed_is_reachable_by_flags():
    from cadx.cli import _pipeline_config, build_parser
    from cadx.config import CADX_DECIDE

    def config(*flags):
        return _pipeline_config(build_parser().parse_args(["train", "d", "--out", "m", *flags]))

    default = config()
    # the decision chosen on validation phantoms (docs/ct-pipeline.md): the top patch, flips
    assert default.decide == CADX_DECIDE == DecideConfig(patient_score="topk", top_k=1,
                                                         test_time_flips=True)
    seed_decision = config("--patient-score", "fraction", "--no-tta").decide
    assert seed_decision == DecideConfig(patient_score="fraction", top_k=1)
    assert default.train.augment_flips and not default.train.augment_rotations
    assert not default.train.balanced_sampling and default.patches.context_slices == 0
    seed = config("--augment-patches", "none", "--no-batch-norm", "--batch-size", "2560")
    assert not seed.train.augment_flips and not seed.train.augment_rotations
    assert not seed.model.batch_norm and seed.patches.channels == 1
    assert config("--augment-patches", "dihedral").train.augment_rotations


def test_pretrained_patch_network_is_stored_in_the_bundle_and_scores(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "data", n_patients=8)
    model = tmp_path / "lite.cadx"
    assert main(["train", str(dataset), "--out", str(model), "--patch-size", "16",
                 "--stride", "8", "--epochs", "1", "--batch-size", "32", "--quiet",
                 "--context-slices", "1", "--patch-network", "efficientnet_lite0"]) == 0
    bundle = load_bundle(model)
    assert bundle.config.model.arch == "efficientnet_lite0"
    network = bundle.build_model()
    assert isinstance(network, PretrainedPatchNet) and network.in_channels == 3
    patches = torch.rand(5, 3, 16, 16)
    assert network(patches).shape == (5,)
    # the bundle's weights, not ImageNet's: scoring is the trained network's
    fresh = build_patch_network(bundle.config.model, 16, 3, pretrained=True).eval()
    assert not torch.allclose(fresh(patches), network(patches))
    _diagnoses_a_toy_patient(model, dataset, tmp_path)


def test_pretrained_patch_network_refuses_other_channel_counts(tmp_path, capsys):
    dataset = write_toy_dataset(tmp_path / "data", n_patients=4)
    assert main(["train", str(dataset), "--out", str(tmp_path / "m.cadx"),
                 "--patch-network", "efficientnet_lite0", "--context-slices", "2"]) == 2
    assert "takes 1 slice or 3 (--context-slices 0 or 1), not 5" in _error_line(capsys)
    assert not (tmp_path / "m.cadx").exists()
    with pytest.raises(ConfigError, match="unknown patch network 'vgg'"):
        ModelConfig(arch="vgg")
    assert main(["train", str(dataset), "--out", str(tmp_path / "m.cadx"),
                 "--patch-network", "efficientnet_lite0", "--no-batch-norm"]) == 2
    assert "--no-batch-norm applies to the Table-1 network only" in _error_line(capsys)
    assert not (tmp_path / "m.cadx").exists()


def test_each_patient_score_is_described_in_words():
    assert DecideConfig(patient_score="fraction").description == (
        "fraction of patches above the patch threshold")
    assert DecideConfig(patient_score="topk", top_k=1).description == "highest patch probability"
    assert DecideConfig(patient_score="topk", top_k=5).description == (
        "mean of the 5 highest patch probabilities")
    assert "largest 3D cluster" in DecideConfig(patient_score="cluster").description
