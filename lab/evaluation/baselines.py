"""The paper's comparison models: the clinical model and radiomics machine learning.

- :class:`ClinicalBaseline`: logistic regression on the four radiological
  characteristics a radiologist reports without image analysis
  (:data:`CLINICAL_FEATURES`), plus any extra clinical columns (age, sex...).
- :class:`RadiomicsBaseline`: univariate filtering of z-scored radiomics
  features, then an L1 logistic regression (C by cross-validation) or a
  random forest.

Both take a float matrix with NaN for unknown values and the column names,
learn every preprocessing statistic on the training cases only, and are
deterministic for a given ``seed``. Scores are probabilities of class 1
(Ki-67 >= 5 %).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from ai_core.errors import EvaluationError

log = logging.getLogger(__name__)

CLINICAL_FEATURES = ("edema_index", "necrosis", "csf_cleft", "capsular_enhancement")
RadiomicsMethod = Literal["lasso_lr", "random_forest"]
RADIOMICS_METHODS: tuple[RadiomicsMethod, ...] = ("lasso_lr", "random_forest")
MAX_MISSING_FRACTION = 0.2  # radiomics columns unknown in more training cases are dropped
NEAR_CONSTANT_STD = (
    1e-6  # radiomics columns with a smaller training SD (after imputation) are dropped
)
CV_FOLDS = 5
# C grid of the L1 logistic regression on standardised features: 1e-3 keeps no feature,
# 1e2 is practically unpenalised (larger C only fails to converge on separable data)
LASSO_CS = tuple(float(c) for c in np.logspace(-3, 2, 21))
MAX_ITER = 5000

FloatArray = npt.NDArray[np.float64]


def _matrix(X: npt.ArrayLike, what: str) -> FloatArray:
    try:
        x = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"{what}: X must be numbers (NaN for unknown): {exc}") from exc
    if x.ndim != 2 or x.shape[0] == 0:
        raise EvaluationError(
            f"{what}: X must be a non-empty 2-D array [cases, columns], got {x.shape}"
        )
    if np.isinf(x).any():
        raise EvaluationError(f"{what}: X holds infinite values; use NaN for unknown")
    return x


def _training_set(
    X: npt.ArrayLike, y: npt.ArrayLike, names: Sequence[str], what: str
) -> tuple[FloatArray, npt.NDArray[np.int64], list[str]]:
    x = _matrix(X, what)
    labels = np.asarray(y)
    if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
        raise EvaluationError(
            f"{what}: y must be 1-D with one label per row of X ({x.shape[0]}), got {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
        raise EvaluationError(f"{what}: y must hold 0/1 labels")
    if not np.all(np.isin(labels, (0, 1))):
        raise EvaluationError(f"{what}: y must hold 0/1 labels only")
    labels = labels.astype(np.int64)
    counts = np.bincount(labels, minlength=2)
    if counts.min() < 2:
        raise EvaluationError(
            f"{what}: y needs at least 2 cases of each class to fit, got {counts[0]} negatives "
            f"and {counts[1]} positives; use a larger or stratified training split"
        )
    cols = [str(n) for n in names]
    if len(cols) != x.shape[1]:
        raise EvaluationError(f"{what}: {len(cols)} names for {x.shape[1]} columns of X")
    if len(set(cols)) != len(cols):
        raise EvaluationError(f"{what}: column names must be unique")
    return x, labels, cols


def _check_width(x: FloatArray, width: int | None, what: str) -> None:
    if width is None:
        raise EvaluationError(f"{what} is not fitted: call fit(X, y, names) before predict_proba")
    if x.shape[1] != width:
        raise EvaluationError(
            f"{what}: X has {x.shape[1]} columns but the model was fitted on {width}; "
            "pass the same columns in the same order"
        )


def _impute(x: FloatArray, medians: FloatArray) -> FloatArray:
    return np.where(np.isnan(x), medians, x)


class ClinicalBaseline:
    """The clinical model: logistic regression on radiological characteristics.

    ``names`` must contain every :data:`CLINICAL_FEATURES` column; any other
    column (age, sex coded 0/1...) is used as an extra predictor. Preprocessing,
    learnt on the training cases: ``edema_index`` (≥ 1) enters as its log;
    unknown values (NaN) take the training median, and every column unknown in
    some training case gets a 0/1 missing-indicator column ``<name>_missing``;
    all columns are standardised; then ``LogisticRegression(C=1.0,
    class_weight="balanced")``.
    """

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._names: list[str] = []
        self._medians: FloatArray = np.empty(0)
        self._indicators: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)
        self._scaler: StandardScaler | None = None
        self._model: LogisticRegression | None = None
        self._width: int | None = None

    def _log_edema(self, x: FloatArray) -> FloatArray:
        out = x.copy()
        edema = self._names.index("edema_index")
        col = out[:, edema]
        if np.any(col[~np.isnan(col)] <= 0):
            raise EvaluationError(
                "ClinicalBaseline: edema_index must be > 0 ((edema + tumour volume) / tumour volume)"
            )
        out[:, edema] = np.log(col)
        return out

    def _features(self, logged: FloatArray) -> FloatArray:
        missing = np.isnan(logged[:, self._indicators]).astype(np.float64)
        return np.concatenate([_impute(logged, self._medians), missing], axis=1)

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike, names: Sequence[str]) -> ClinicalBaseline:
        x, labels, cols = _training_set(X, y, names, "ClinicalBaseline")
        absent = [f for f in CLINICAL_FEATURES if f not in cols]
        if absent:
            raise EvaluationError(
                f"ClinicalBaseline: X lacks the columns {absent}; names are {cols}"
            )
        unknown = [cols[i] for i in np.flatnonzero(np.isnan(x).all(axis=0))]
        if unknown:
            raise EvaluationError(f"ClinicalBaseline: {unknown} unknown for every training case")
        self._names = cols
        logged = self._log_edema(x)
        self._medians = np.nanmedian(logged, axis=0)
        self._indicators = np.flatnonzero(np.isnan(x).any(axis=0))
        z = self._features(logged)
        self._scaler = StandardScaler().fit(z)
        self._model = LogisticRegression(
            C=1.0, class_weight="balanced", max_iter=MAX_ITER, random_state=self.seed
        ).fit(self._scaler.transform(z), labels)
        self._width = x.shape[1]
        return self

    def predict_proba(self, X: npt.ArrayLike) -> FloatArray:
        """Probability of Ki-67 >= 5 % for each row of X (same columns as at fit)."""
        x = _matrix(X, "ClinicalBaseline")
        _check_width(x, self._width, "ClinicalBaseline")
        assert self._scaler is not None and self._model is not None
        z = self._scaler.transform(self._features(self._log_edema(x)))
        return self._model.predict_proba(z)[:, 1].astype(np.float64)

    def coefficients(self) -> dict[str, float]:
        """Log-odds per training SD of each column (``edema_index``: of its log), and the intercept."""
        if self._model is None:
            raise EvaluationError("ClinicalBaseline is not fitted: call fit(X, y, names) first")
        keys = self._names + [f"{self._names[i]}_missing" for i in self._indicators]
        out = {k: float(c) for k, c in zip(keys, self._model.coef_[0], strict=True)}
        out["intercept"] = float(self._model.intercept_[0])
        return out


def _univariate_auc(x: FloatArray, y: npt.NDArray[np.int64]) -> FloatArray:
    """Mann–Whitney AUC of every column of ``x`` (no NaN) against ``y``."""
    ranks = stats.rankdata(x, axis=0)
    pos = y == 1
    n_pos, n_neg = float(pos.sum()), float((~pos).sum())
    return (ranks[pos].sum(axis=0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


class RadiomicsBaseline:
    """Radiomics machine learning on z-scored features (NaN for failed ones).

    Fitted on training cases only: columns unknown in more than
    :data:`MAX_MISSING_FRACTION` of them are dropped; the rest take the
    training median; columns with SD below :data:`NEAR_CONSTANT_STD` are
    dropped; the ``k`` columns whose univariate Mann–Whitney AUC lies farthest
    from 0.5 are kept (ties: the earlier column). Then

    - ``"lasso_lr"``: standardisation and L1 logistic regression whose C is
      chosen by stratified 5-fold CV on ROC AUC (``LogisticRegressionCV``,
      liblinear, ``class_weight="balanced"``);
    - ``"random_forest"``: ``RandomForestClassifier(n_estimators=300,
      class_weight="balanced_subsample", n_jobs=1)``.
    """

    def __init__(self, method: RadiomicsMethod = "lasso_lr", *, k: int = 50, seed: int = 0) -> None:
        if method not in RADIOMICS_METHODS:
            raise EvaluationError(
                f"RadiomicsBaseline: method must be one of {RADIOMICS_METHODS}, got {method!r}"
            )
        if k < 1:
            raise EvaluationError(f"RadiomicsBaseline: k must be at least 1, got {k}")
        self.method: RadiomicsMethod = method
        self.k = k
        self.seed = seed
        self._width: int | None = None
        self._columns: npt.NDArray[np.intp] = np.empty(0, dtype=np.intp)  # selected, into X
        self._medians: FloatArray = np.empty(0)
        self._selected: list[str] = []
        self._model: LogisticRegressionCV | RandomForestClassifier | None = None
        self._scaler: StandardScaler | None = None

    def fit(self, X: npt.ArrayLike, y: npt.ArrayLike, names: Sequence[str]) -> RadiomicsBaseline:
        x, labels, cols = _training_set(X, y, names, "RadiomicsBaseline")
        keep = np.flatnonzero(np.isnan(x).mean(axis=0) <= MAX_MISSING_FRACTION)
        medians = np.nanmedian(x[:, keep], axis=0) if keep.size else np.empty(0)
        filled = _impute(x[:, keep], medians)
        varying = filled.std(axis=0) >= NEAR_CONSTANT_STD
        keep, medians, filled = keep[varying], medians[varying], filled[:, varying]
        if keep.size == 0:
            raise EvaluationError(
                f"RadiomicsBaseline: no usable column among {x.shape[1]} (each is unknown in more than "
                f"{MAX_MISSING_FRACTION:.0%} of training cases or constant)"
            )
        strength = np.abs(_univariate_auc(filled, labels) - 0.5)
        top = np.argsort(-strength, kind="stable")[: self.k]
        self._columns, self._medians = keep[top], medians[top]
        z = filled[:, top]
        log.debug(
            "RadiomicsBaseline: %d of %d columns usable, %d kept", keep.size, x.shape[1], top.size
        )
        if self.method == "lasso_lr":
            folds = min(CV_FOLDS, int(np.bincount(labels).min()))
            self._scaler = StandardScaler().fit(z)
            self._model = LogisticRegressionCV(
                Cs=list(LASSO_CS),
                l1_ratios=(1.0,),
                cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=self.seed),
                solver="liblinear",
                scoring="roc_auc",
                class_weight="balanced",
                max_iter=MAX_ITER,
                random_state=self.seed,
                use_legacy_attributes=False,
            ).fit(self._scaler.transform(z), labels)
            coef = self._model.coef_[0]
            order = [i for i in np.argsort(-np.abs(coef), kind="stable") if coef[i] != 0]
            self._selected = [cols[self._columns[i]] for i in order]
        else:
            self._scaler = None
            self._model = RandomForestClassifier(
                n_estimators=300,
                class_weight="balanced_subsample",
                random_state=self.seed,
                n_jobs=1,
            ).fit(z, labels)
            order = list(np.argsort(-self._model.feature_importances_, kind="stable"))
            self._selected = [cols[self._columns[i]] for i in order]
        self._width = x.shape[1]
        return self

    def predict_proba(self, X: npt.ArrayLike) -> FloatArray:
        """Probability of Ki-67 >= 5 % for each row of X (same columns as at fit)."""
        x = _matrix(X, "RadiomicsBaseline")
        _check_width(x, self._width, "RadiomicsBaseline")
        assert self._model is not None
        z = _impute(x[:, self._columns], self._medians)
        if self._scaler is not None:
            z = self._scaler.transform(z)
        return self._model.predict_proba(z)[:, 1].astype(np.float64)

    def selected_features(self) -> list[str]:
        """Names of the features the fitted model uses, most important first.

        ``lasso_lr``: the columns with a non-zero L1 coefficient, by |coefficient|;
        ``random_forest``: the ``k`` filtered columns, by impurity importance.
        """
        if self._model is None:
            raise EvaluationError("RadiomicsBaseline is not fitted: call fit(X, y, names) first")
        return list(self._selected)
