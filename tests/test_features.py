"""Deep features, texture features and the SVM / RF classifiers of seed 004."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.naive_bayes import GaussianNB

from cadx.errors import ConfigError, EmptyMaskError, InputError
from cadx.features.classifiers import (
    AveragingEnsemble,
    cv_splitter,
    fit_classifier,
    make_random_forest,
)
from cadx.features.deep import concat_features, extract_deep_features
from cadx.features.texture import (
    glcm_features,
    texture_feature_names,
    texture_features,
    wavelet_features,
)
from cadx.models.backbones import build_backbone, embedding_size


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).random((5, 1, 64, 64), dtype=np.float32)


def test_deep_features_from_the_pooling_layer(images):
    resnet = build_backbone("resnet18", 1)
    darknet = build_backbone("darknet19", 1, width=0.25)
    darknet.train()
    resnet_features = extract_deep_features(resnet, "resnet18", images, batch_size=2)
    darknet_features = extract_deep_features(darknet, "darknet19", images)
    assert resnet_features.shape == (5, 512) and resnet_features.dtype == np.float32
    assert darknet_features.shape == (5, embedding_size("darknet19", width=0.25)) == (5, 256)
    assert darknet.training  # the caller's mode is restored


def test_deep_features_from_the_logits_layer_are_the_logits(images):
    model = build_backbone("darknet19", 1, num_classes=3, width=0.25).eval()
    features = extract_deep_features(model, "darknet19", images, layer="fc", batch_size=3)
    with torch.inference_mode():
        logits = model(torch.from_numpy(images)).numpy()
    assert features.shape == (5, 3)
    np.testing.assert_allclose(features, logits, rtol=1e-5, atol=1e-6)


def test_concat_features_checks_the_image_counts():
    joined = concat_features([np.zeros((4, 512)), np.ones((4, 256)), np.ones((4, 3))])
    assert joined.shape == (4, 771)
    with pytest.raises(InputError, match="feature array 1 has 3 rows but array 0 has 4"):
        concat_features([np.zeros((4, 2)), np.zeros((3, 2))])
    with pytest.raises(ConfigError):
        concat_features([])


def _checkerboard(size: int = 32) -> np.ndarray:
    rows, cols = np.indices((size, size))
    return ((rows + cols) % 2).astype(float)


def test_glcm_of_constant_and_checkerboard_images():
    names = texture_feature_names()
    constant = dict(zip(names, texture_features(np.full((32, 32), 0.4)), strict=False))
    assert constant["glcm_contrast_d1"] == 0 and constant["glcm_energy_d1"] == pytest.approx(1)
    checker = glcm_features(_checkerboard(), distances=(1,), angles=(0.0,))
    assert checker[0] == pytest.approx(31**2)  # contrast: every neighbour pair is 0 vs 31


def test_wavelet_details_of_a_constant_image_are_zero():
    features = wavelet_features(np.full((32, 32), 0.7))
    names = texture_feature_names()[-len(features):]
    details = [value for name, value in zip(names, features, strict=True) if "_A_" not in name]
    assert len(features) == 3 * 7 and np.allclose(details, 0, atol=1e-12)
    assert features[names.index("wavelet_L2_A_energy")] > 0


def test_texture_names_match_values_and_mask_restricts_to_roi():
    rng = np.random.default_rng(1)
    image = rng.random((64, 64))
    image[20:40, 10:30] = 0.5
    mask = np.zeros((64, 64), dtype=bool)
    mask[22:38, 12:28] = True
    assert len(texture_feature_names()) == len(texture_features(image)) == 39
    roi = dict(zip(texture_feature_names(), texture_features(image, mask), strict=True))
    assert roi["glcm_contrast_d1"] == 0 and roi["wavelet_L1_H_energy"] < 1e-20
    assert texture_features(image)[0] > 0
    with pytest.raises(EmptyMaskError):
        texture_features(image, np.zeros_like(mask))
    with pytest.raises(InputError, match="0..1"):
        texture_features(image * 255)


@pytest.fixture(scope="module")
def grouped_dataset():
    X, y = make_classification(n_samples=240, n_features=12, n_informative=6,
                               class_sep=2.0, random_state=0)
    groups = np.arange(240) // 3  # three images per patient
    return X, y, groups


def test_grouped_cv_keeps_each_patient_on_one_side(grouped_dataset):
    X, y, groups = grouped_dataset
    splitter = cv_splitter(y, groups)
    assert isinstance(splitter, StratifiedGroupKFold) and splitter.n_splits == 5
    for train, test in splitter.split(X, y, groups):
        assert not set(groups[train]) & set(groups[test])
    assert cv_splitter(y[:6], groups[:6]).n_splits == 2
    with pytest.raises(ConfigError, match="2 patients"):
        cv_splitter(y[:3], np.zeros(3))


@pytest.mark.parametrize("kind", ["svm", "rf", "logreg"])
def test_classifiers_separate_a_separable_dataset(grouped_dataset, kind):
    X, y, groups = grouped_dataset
    train, test = groups < 60, groups >= 60
    model = fit_classifier(kind, X[train], y[train], groups=groups[train], seed=0)
    if kind != "rf":  # tuned on folds that keep each patient whole
        assert isinstance(model.cv, StratifiedGroupKFold)
    if kind == "logreg":
        assert model.best_params_["logreg__C"] in (1e-4, 1e-3, 1e-2, 1e-1, 1)
    assert roc_auc_score(y[test], model.predict_proba(X[test])[:, 1]) > 0.9


def test_classifier_parameters_are_checked(grouped_dataset):
    X, y, _ = grouped_dataset
    with pytest.raises(ConfigError, match="svm, rf, logreg"):
        fit_classifier("knn", X, y)
    with pytest.raises(InputError, match="two classes"):
        fit_classifier("rf", X, np.zeros(len(y)))
    with pytest.raises(InputError, match="groups"):
        fit_classifier("svm", X, y, groups=np.zeros(3))
    few = np.r_[np.flatnonzero(y == 0)[:3], np.flatnonzero(y == 1)[:3]]
    with pytest.raises(ConfigError, match="SVM grid search failed on 6 samples"):
        fit_classifier("svm", X[few], y[few])


def test_averaging_ensemble_is_the_mean_of_positive_probabilities(grouped_dataset):
    X, y, _ = grouped_dataset
    first = LogisticRegression().fit(X[:, :6], y)
    second = GaussianNB().fit(X[:, 6:], y)
    third = LogisticRegression(C=0.01).fit(X, y)
    ensemble = AveragingEnsemble([first, second, third],
                                 columns=[np.arange(6), slice(6, None), None])
    expected = np.mean([first.predict_proba(X[:, :6])[:, 1],
                        second.predict_proba(X[:, 6:])[:, 1],
                        third.predict_proba(X)[:, 1]], axis=0)
    probabilities = ensemble.predict_proba(X)
    np.testing.assert_allclose(probabilities[:, 1], expected, rtol=1e-12)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert set(ensemble.predict(X)) <= {0, 1}
    with pytest.raises(ConfigError, match="not a fitted estimator"):
        AveragingEnsemble([first, make_random_forest(0)])
    with pytest.raises(ConfigError, match="2 column subsets for 1"):
        AveragingEnsemble([first], columns=[None, None])
    with pytest.raises(ConfigError, match="fitted on 6 features"):
        AveragingEnsemble([first]).predict_proba(X)
