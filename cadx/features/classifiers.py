"""Classical classifiers of deep or texture features (seed 004: SVM and random forest on CNN
features, and an ensemble averaging their probabilities; plus a logistic regression, the linear
head of frozen-feature transfer learning), with scikit-learn's estimator API.

The SVM's C and gamma, and the logistic regression's C, are tuned by cross-validated ROC AUC.
With one patient's images on both sides of a fold the tuning would reward memorised patients, so
given patient ids (`groups`) the folds keep each patient whole (StratifiedGroupKFold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.validation import check_is_fitted

from cadx.errors import ConfigError, InputError

CLASSIFIERS = ("svm", "rf", "logreg")
SVM_PARAM_GRID = {"svc__estimator__C": [0.1, 1, 10, 100],
                  "svc__estimator__gamma": ["scale", 1e-3, 1e-2, 1e-1]}
LOGREG_PARAM_GRID = {"logreg__C": [1e-4, 1e-3, 1e-2, 1e-1, 1]}
MAX_CV_SPLITS = 5
PLATT_FOLDS = 3

ColumnSubset = slice | Sequence[int] | np.ndarray | None


def cv_splitter(y: np.ndarray, groups: np.ndarray | None = None, seed: int = 0,
                max_splits: int = MAX_CV_SPLITS) -> StratifiedKFold | StratifiedGroupKFold:
    """Shuffled stratified folds for `y`, grouped by patient when `groups` is given; as many as
    `max_splits` or as the rarer class has samples (patients, when grouped), whichever is less."""
    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) != 2:
        raise InputError(f"labels must hold exactly two classes; got {classes.tolist()}")
    if groups is None:
        per_class = min(int(np.sum(y == label)) for label in classes)
    else:
        groups = np.asarray(groups)
        per_class = min(len(np.unique(groups[y == label])) for label in classes)
    n_splits = min(max_splits, per_class)
    if n_splits < 2:
        unit = "samples" if groups is None else "patients"
        raise ConfigError(f"cross-validation needs at least 2 {unit} of each class; "
                          f"the rarer class has {per_class}")
    if groups is None:
        return StratifiedKFold(n_splits, shuffle=True, random_state=seed)
    return StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed)


def _grid_search(estimator: Pipeline, grid: dict[str, list],
                 cv: StratifiedKFold | StratifiedGroupKFold | None, seed: int) -> GridSearchCV:
    """`estimator` tuned over `grid` by ROC AUC over `cv` (default: 5 shuffled stratified
    folds)."""
    if cv is None:
        cv = StratifiedKFold(MAX_CV_SPLITS, shuffle=True, random_state=seed)
    return GridSearchCV(estimator, grid, scoring="roc_auc", cv=cv, error_score="raise")


def make_svm(seed: int = 0, cv: StratifiedKFold | StratifiedGroupKFold | None = None,
             ) -> GridSearchCV:
    """Standardised RBF SVM with balanced class weights and Platt-scaled probabilities, its C
    and gamma chosen by ROC AUC over `cv` (default: 5 shuffled stratified folds). The SVM is
    deterministic, so `seed` only shuffles the default folds."""
    # Platt scaling as SVC(probability=True) did (deprecated in scikit-learn 1.9): a sigmoid
    # fitted to out-of-fold decision values, then one SVM on all the data. Its folds are not
    # grouped by patient; that can only steepen the sigmoid, never reorder the scores.
    platt_svm = CalibratedClassifierCV(SVC(kernel="rbf", class_weight="balanced"),
                                       method="sigmoid", cv=PLATT_FOLDS, ensemble=False)
    svm = Pipeline([("scale", StandardScaler()), ("svc", platt_svm)])
    return _grid_search(svm, SVM_PARAM_GRID, cv, seed)


def make_logistic_regression(seed: int = 0,
                             cv: StratifiedKFold | StratifiedGroupKFold | None = None,
                             ) -> GridSearchCV:
    """Standardised L2 logistic regression with balanced class weights (a linear head on the
    features), its C chosen by ROC AUC over `cv` (default: 5 shuffled stratified folds)."""
    logreg = Pipeline([("scale", StandardScaler()),
                       ("logreg", LogisticRegression(class_weight="balanced", max_iter=2000))])
    return _grid_search(logreg, LOGREG_PARAM_GRID, cv, seed)


def make_random_forest(seed: int = 0) -> RandomForestClassifier:
    """300 trees, balanced class weights, at least 2 samples per leaf, 2 worker threads."""
    return RandomForestClassifier(n_estimators=300, class_weight="balanced", min_samples_leaf=2,
                                  random_state=seed, n_jobs=2)


def _check_training_data(X: np.ndarray, y: np.ndarray,
                         groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise InputError(f"features must be (N, D) and labels (N,); got {X.shape} and {y.shape}")
    if not np.isfinite(X).all():
        raise InputError("features hold NaN or infinite values")
    if len(np.unique(y)) != 2:
        raise InputError(f"labels must hold exactly two classes; got {np.unique(y).tolist()}")
    if groups is not None and np.shape(groups) != y.shape:
        raise InputError(f"groups (patient ids) have shape {np.shape(groups)}, labels {y.shape}")
    return X, y


def fit_classifier(kind: str, X: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None,
                   seed: int = 0) -> BaseEstimator:
    """Fit an "svm" or a "logreg" (each tuned by cross-validation grouped by patient when
    `groups` is given) or an "rf" (no tuning, so `groups` is only checked) on (N, D) features
    and binary labels."""
    if kind not in CLASSIFIERS:
        raise ConfigError(f"unknown classifier {kind!r}; choose one of {', '.join(CLASSIFIERS)}")
    X, y = _check_training_data(X, y, groups)
    if kind == "rf":
        return make_random_forest(seed).fit(X, y)
    make = make_svm if kind == "svm" else make_logistic_regression
    search = make(seed, cv_splitter(y, groups, seed))
    try:
        return search.fit(X, y, groups=None if groups is None else np.asarray(groups))
    except ValueError as error:  # e.g. a fold too small for the Platt-scaling folds
        labels, counts = np.unique(y, return_counts=True)
        per_class = ", ".join(f"{label}: {count}" for label, count in zip(labels, counts,
                                                                            strict=True))
        raise ConfigError(f"{kind.upper()} grid search failed on {len(y)} samples ({per_class} "
                          f"per class): {error}") from error


class AveragingEnsemble:
    """Already fitted binary classifiers whose positive-class probabilities are averaged
    (seed 004's classifier ensemble). `columns[k]` (an index array, a boolean mask, a slice or
    None for all) picks the feature columns estimator k sees, so SVM and RF trained on different
    CNNs' features can vote on one concatenated feature matrix. Nothing is fitted here."""

    def __init__(self, estimators: Sequence[BaseEstimator],
                 columns: Sequence[ColumnSubset] | None = None) -> None:
        if len(estimators) == 0:
            raise ConfigError("an ensemble needs at least one fitted estimator")
        if columns is None:
            columns = [None] * len(estimators)
        if len(columns) != len(estimators):
            raise ConfigError(f"{len(columns)} column subsets for {len(estimators)} estimators")
        for index, estimator in enumerate(estimators):
            try:
                check_is_fitted(estimator)
            except (NotFittedError, TypeError) as error:
                raise ConfigError(f"ensemble estimator {index} ({type(estimator).__name__}) "
                                  f"is not a fitted estimator: {error}") from error
            if not hasattr(estimator, "predict_proba"):
                raise ConfigError(f"ensemble estimator {index} ({type(estimator).__name__}) "
                                  "has no predict_proba")
            if not np.array_equal(estimator.classes_, estimators[0].classes_) or \
                    len(estimator.classes_) != 2:
                raise ConfigError(f"ensemble estimator {index} has classes "
                                  f"{list(estimator.classes_)}; all need the same two classes")
        self.estimators = list(estimators)
        self.columns = [slice(None) if subset is None else subset for subset in columns]
        self.classes_ = np.asarray(estimators[0].classes_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(N, 2): the mean over estimators of P(classes_[1]) in column 1, its complement in 0."""
        X = np.asarray(X)
        if X.ndim != 2:
            raise InputError(f"features must be (N, D); got shape {X.shape}")
        positive = np.zeros(len(X))
        for index, (estimator, subset) in enumerate(zip(self.estimators, self.columns,
                                                        strict=True)):
            try:
                part = X[:, subset]
            except IndexError as error:
                raise ConfigError(f"column subset {index} does not fit features of "
                                  f"{X.shape[1]} columns: {error}") from error
            expected = getattr(estimator, "n_features_in_", part.shape[1])
            if part.shape[1] != expected:
                raise ConfigError(f"ensemble estimator {index} was fitted on {expected} "
                                  f"features; its column subset gives {part.shape[1]}")
            positive += estimator.predict_proba(part)[:, 1]
        positive /= len(self.estimators)
        return np.column_stack([1.0 - positive, positive])

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The class whose averaged probability is at least 0.5."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]
