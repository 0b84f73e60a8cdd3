"""Clinical and radiomics baselines on synthetic data with a known signal."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from ai_core.errors import EvaluationError
from lab.evaluation.baselines import CLINICAL_FEATURES, ClinicalBaseline, RadiomicsBaseline
from lab.evaluation.metrics import roc_auc

INFORMATIVE = (3, 50, 120, 200, 333)  # radiomics columns that carry the label


@dataclass(frozen=True)
class Split:
    x_train: npt.NDArray[np.float64]
    y_train: npt.NDArray[np.int64]
    x_test: npt.NDArray[np.float64]
    y_test: npt.NDArray[np.int64]
    names: list[str]


def _logistic_labels(
    rng: np.random.Generator, logit: npt.NDArray[np.float64]
) -> npt.NDArray[np.int64]:
    return (rng.random(logit.size) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)


@pytest.fixture(scope="module")
def clinical() -> Split:
    """Ki-67 depends on edema (more → positive) and the CSF cleft (present → negative)."""
    rng = np.random.default_rng(0)
    n = 400
    edema = np.exp(rng.gamma(2.0, 0.3, n))  # edema index >= 1
    necrosis, cleft, capsule = (rng.integers(0, 2, n).astype(np.float64) for _ in range(3))
    age = rng.normal(58, 12, n)
    y = _logistic_labels(rng, 3.0 * np.log(edema) - 2.2 * cleft - 0.6)
    x = np.column_stack([edema, necrosis, cleft, capsule, age])
    x[rng.random(x.shape) < 0.1] = np.nan  # unknowns everywhere
    return Split(x[:250], y[:250], x[250:], y[250:], [*CLINICAL_FEATURES, "age"])


@pytest.fixture(scope="module")
def radiomics() -> Split:
    """300 cases × 400 z-scored features, 5 informative, 3 % failed values, one failed column."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 400))
    weights = np.zeros(400)
    weights[list(INFORMATIVE)] = [1.2, -1.0, 0.9, -0.8, 1.0]
    y = _logistic_labels(rng, 2.0 * (x @ weights))
    x[rng.random(x.shape) < 0.03] = np.nan
    x[:, 7] = np.nan  # a feature that failed for every case
    x[:, 9] = 0.25  # a constant one
    return Split(x[:200], y[:200], x[200:], y[200:], [f"feature_{i}" for i in range(400)])


# ---------------------------------------------------------------- clinical


def test_clinical_baseline_learns_the_signal(clinical: Split) -> None:
    model = ClinicalBaseline().fit(clinical.x_train, clinical.y_train, clinical.names)
    proba = model.predict_proba(clinical.x_test)
    assert proba.shape == (len(clinical.y_test),)
    assert np.all((proba >= 0) & (proba <= 1))
    assert roc_auc(clinical.y_test, proba) > 0.7
    coef = model.coefficients()
    assert coef["edema_index"] > 0
    assert coef["csf_cleft"] < 0
    assert {"age", "age_missing", "intercept"} <= set(coef)


def test_clinical_baseline_imputes_unknowns_unseen_in_training(clinical: Split) -> None:
    complete = ~np.isnan(clinical.x_train).any(axis=1)
    model = ClinicalBaseline().fit(
        clinical.x_train[complete], clinical.y_train[complete], clinical.names
    )
    assert not any(k.endswith("_missing") for k in model.coefficients())
    proba = model.predict_proba(clinical.x_test)  # has NaN in every column
    assert np.all(np.isfinite(proba))


def test_clinical_baseline_is_deterministic(clinical: Split) -> None:
    first = ClinicalBaseline(seed=3).fit(clinical.x_train, clinical.y_train, clinical.names)
    second = ClinicalBaseline(seed=3).fit(clinical.x_train, clinical.y_train, clinical.names)
    np.testing.assert_array_equal(
        first.predict_proba(clinical.x_test), second.predict_proba(clinical.x_test)
    )


def test_clinical_baseline_errors(clinical: Split) -> None:
    x, y, names = clinical.x_train, clinical.y_train, clinical.names
    with pytest.raises(EvaluationError, match="2 cases of each class"):
        ClinicalBaseline().fit(x, np.ones_like(y), names)
    with pytest.raises(EvaluationError, match="not fitted"):
        ClinicalBaseline().predict_proba(x)
    with pytest.raises(EvaluationError, match="lacks the columns"):
        ClinicalBaseline().fit(x[:, 1:], y, names[1:])
    with pytest.raises(EvaluationError, match="names for"):
        ClinicalBaseline().fit(x, y, names[:-1])
    bad_edema = x.copy()
    bad_edema[0, 0] = 0.0
    with pytest.raises(EvaluationError, match="edema_index must be > 0"):
        ClinicalBaseline().fit(bad_edema, y, names)
    model = ClinicalBaseline().fit(x, y, names)
    with pytest.raises(EvaluationError, match="X has 4 columns but the model was fitted on 5"):
        model.predict_proba(x[:, :4])
    with pytest.raises(EvaluationError, match="not fitted"):
        ClinicalBaseline().coefficients()


# ---------------------------------------------------------------- radiomics


@pytest.mark.parametrize("method", ["lasso_lr", "random_forest"], ids=["lasso", "forest"])
def test_radiomics_baseline_learns_the_signal(radiomics: Split, method: str) -> None:
    model = RadiomicsBaseline(method, seed=0).fit(  # type: ignore[arg-type]
        radiomics.x_train, radiomics.y_train, radiomics.names
    )
    proba = model.predict_proba(radiomics.x_test)
    assert np.all(np.isfinite(proba))
    assert roc_auc(radiomics.y_test, proba) > 0.7
    selected = model.selected_features()
    informative = {f"feature_{i}" for i in INFORMATIVE}
    assert len(informative & set(selected[:10])) >= 4
    assert "feature_7" not in selected and "feature_9" not in selected  # failed, constant
    assert len(selected) <= 50


@pytest.mark.parametrize("method", ["lasso_lr", "random_forest"], ids=["lasso", "forest"])
def test_radiomics_baseline_is_deterministic(radiomics: Split, method: str) -> None:
    half = slice(0, 120)  # a smaller problem keeps the test quick
    runs = [
        RadiomicsBaseline(method, k=20, seed=5).fit(  # type: ignore[arg-type]
            radiomics.x_train[half], radiomics.y_train[half], radiomics.names
        )
        for _ in range(2)
    ]
    np.testing.assert_array_equal(
        runs[0].predict_proba(radiomics.x_test), runs[1].predict_proba(radiomics.x_test)
    )
    assert runs[0].selected_features() == runs[1].selected_features()


def test_radiomics_baseline_errors(radiomics: Split) -> None:
    x, y, names = radiomics.x_train, radiomics.y_train, radiomics.names
    with pytest.raises(EvaluationError, match="method must be one of"):
        RadiomicsBaseline("svm")  # type: ignore[arg-type]
    with pytest.raises(EvaluationError, match="k must be at least 1"):
        RadiomicsBaseline(k=0)
    with pytest.raises(EvaluationError, match="2 cases of each class"):
        RadiomicsBaseline().fit(x, np.zeros_like(y), names)
    with pytest.raises(EvaluationError, match="0/1 labels"):
        RadiomicsBaseline().fit(x, y * 2, names)
    with pytest.raises(EvaluationError, match="not fitted"):
        RadiomicsBaseline().predict_proba(x)
    with pytest.raises(EvaluationError, match="not fitted"):
        RadiomicsBaseline().selected_features()
    with pytest.raises(EvaluationError, match="no usable column"):
        RadiomicsBaseline().fit(np.full((20, 3), np.nan), np.tile([0, 1], 10), ["a", "b", "c"])
    model = RadiomicsBaseline(k=5).fit(x[:, :40], y, names[:40])
    with pytest.raises(EvaluationError, match="X has 400 columns but the model was fitted on 40"):
        model.predict_proba(x)
