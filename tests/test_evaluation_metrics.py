"""Metrics of lab.evaluation.metrics against sklearn, hand-computed tables and a slow DeLong."""

from __future__ import annotations

import math
import time

import numpy as np
import numpy.typing as npt
import pytest
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef, roc_auc_score, roc_curve

from ai_core.errors import EvaluationError
from lab.evaluation.metrics import (
    METRIC_NAMES,
    BinaryMetrics,
    Interval,
    binary_metrics,
    bootstrap_metrics,
    delong_ci,
    delong_test,
    roc_auc,
    roc_curve_points,
    summarise_runs,
    youden_threshold,
)

NAN = math.nan


def _tied_data(
    seed: int, n: int = 150
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Labels and two correlated, coarsely rounded (many ties) scores."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    base = rng.normal(size=n) + 0.8 * y
    s1 = np.round(base + 0.5 * rng.normal(size=n), 1)
    s2 = np.round(base + 1.0 * rng.normal(size=n), 1)
    return y, s1, s2


# ---------------------------------------------------------------- AUC and ROC


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_roc_auc_equals_sklearn_with_ties(seed: int) -> None:
    y, s1, _ = _tied_data(seed)
    assert len(np.unique(s1)) < len(s1)  # the data do have ties
    assert roc_auc(y, s1) == pytest.approx(roc_auc_score(y, s1), abs=1e-12)


def test_roc_auc_is_nan_for_one_class() -> None:
    assert math.isnan(roc_auc([1, 1, 1], [0.1, 0.5, 0.9]))
    assert math.isnan(roc_auc([0, 0], [0.1, 0.5]))


def test_roc_curve_points_equal_sklearn() -> None:
    y, s1, _ = _tied_data(3)
    fpr, tpr = roc_curve_points(y, s1)
    ref_fpr, ref_tpr, _ = roc_curve(y, s1, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert float(np.trapezoid(tpr, fpr)) == pytest.approx(roc_auc(y, s1))


# ---------------------------------------------------------------- thresholded metrics

# (y, scores, threshold, auc, accuracy, sensitivity, specificity, f1, mcc), worked by hand
HAND_CASES = [
    pytest.param(
        [1, 1, 0, 0], [0.9, 0.4, 0.6, 0.1], 0.5, 0.75, 0.5, 0.5, 0.5, 0.5, 0.0, id="tp1-fn1-fp1-tn1"
    ),
    pytest.param(
        [1, 1, 1, 0, 0], [0.8, 0.7, 0.6, 0.2, 0.1], 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, id="perfect"
    ),
    pytest.param(
        [1, 0, 1, 0, 0, 1, 0],
        [0.5, 0.5, 0.3, 0.2, 0.7, 0.9, 0.1],
        0.5,
        8.5 / 12,
        4 / 7,
        2 / 3,
        2 / 4,
        4 / 7,
        1 / 6,
        id="score-equal-to-threshold-is-positive",
    ),
    pytest.param(
        [1, 0, 0],
        [0.1, 0.2, 0.3],
        0.9,
        0.0,
        2 / 3,
        0.0,
        1.0,
        0.0,
        0.0,
        id="none-predicted-positive",
    ),
    pytest.param([0, 0], [0.1, 0.2], 0.5, NAN, 1.0, NAN, 1.0, 0.0, 0.0, id="negatives-only"),
]


@pytest.mark.parametrize(("y", "s", "thr", "auc", "acc", "sens", "spec", "f1", "mcc"), HAND_CASES)
def test_binary_metrics_hand_computed(
    y: list[int],
    s: list[float],
    thr: float,
    auc: float,
    acc: float,
    sens: float,
    spec: float,
    f1: float,
    mcc: float,
) -> None:
    m = binary_metrics(y, s, thr)
    got = [m.auc, m.accuracy, m.sensitivity, m.specificity, m.f1, m.mcc]
    np.testing.assert_allclose(got, [auc, acc, sens, spec, f1, mcc], atol=1e-12)
    assert (m.threshold, m.n, m.n_positive) == (thr, len(y), sum(y))
    assert set(m.as_dict()) == {*METRIC_NAMES, "threshold", "n", "n_positive"}


def test_binary_metrics_f1_and_mcc_equal_sklearn() -> None:
    y, s1, _ = _tied_data(4)
    m = binary_metrics(y, s1, 0.3)
    pred = (s1 >= 0.3).astype(int)
    assert m.f1 == pytest.approx(f1_score(y, pred))
    assert m.mcc == pytest.approx(matthews_corrcoef(y, pred))


def test_threshold_is_inclusive() -> None:
    assert binary_metrics([1, 0], [0.5, 0.4999], 0.5).accuracy == 1.0
    assert binary_metrics([1, 0], [0.5, 0.4999], 0.50001).sensitivity == 0.0


@pytest.mark.parametrize(
    ("y", "s", "thr", "match"),
    [
        pytest.param([1, 0, 1], [0.1, 0.2], 0.5, "differ in length", id="lengths"),
        pytest.param([1, 2, 0], [0.1, 0.2, 0.3], 0.5, "0/1 labels", id="labels"),
        pytest.param([1, 0], [0.1, NAN], 0.5, "NaN or infinite", id="nan-score"),
        pytest.param([], [], 0.5, "empty", id="empty"),
        pytest.param([[1, 0]], [[0.1, 0.2]], 0.5, "1-D", id="2d"),
        pytest.param([1, 0], [0.1, 0.2], NAN, "threshold", id="nan-threshold"),
    ],
)
def test_binary_metrics_rejects_bad_input(y: object, s: object, thr: float, match: str) -> None:
    with pytest.raises(EvaluationError, match=match):
        binary_metrics(y, s, thr)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("y", "s", "expected"),
    [
        pytest.param([0, 1, 0, 1, 1], [0.2, 0.3, 0.4, 0.6, 0.7], 0.6, id="single-best"),
        # J = 2/3 at both 0.8 and 0.35: the highest threshold wins
        pytest.param([0, 0, 1, 0, 1, 1], [0.1, 0.3, 0.35, 0.4, 0.8, 0.9], 0.8, id="tie"),
    ],
)
def test_youden_threshold_hand_example(y: list[int], s: list[float], expected: float) -> None:
    assert youden_threshold(y, s) == expected


def test_youden_threshold_needs_both_classes() -> None:
    with pytest.raises(EvaluationError, match="both classes"):
        youden_threshold([1, 1], [0.2, 0.3])


# ---------------------------------------------------------------- intervals


def _run(auc: float, accuracy: float = 0.5) -> BinaryMetrics:
    return BinaryMetrics(auc, accuracy, 0.5, 0.5, 0.5, 0.0, threshold=0.5, n=10, n_positive=5)


def test_interval_str() -> None:
    assert str(Interval(0.812, 0.771, 0.853, 50)) == "0.812 (0.771–0.853)"


def test_summarise_runs_percentiles_on_known_values() -> None:
    runs = [_run(a, accuracy=0.6) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    out = summarise_runs(runs)
    # linear interpolation: positions 0.025 × 4 = 0.1 and 0.975 × 4 = 3.9
    assert out["auc"].mean == pytest.approx(0.5)
    assert out["auc"].low == pytest.approx(0.025)
    assert out["auc"].high == pytest.approx(0.975)
    acc = out["accuracy"]
    assert (acc.mean, acc.low, acc.high, acc.n) == pytest.approx((0.6, 0.6, 0.6, 5))
    assert set(out) == set(METRIC_NAMES)


def test_summarise_runs_skips_nan_per_metric() -> None:
    runs = [_run(0.7), _run(NAN), _run(0.9)]
    out = summarise_runs(runs)
    assert out["auc"].n == 2
    assert out["auc"].mean == pytest.approx(0.8)
    assert out["accuracy"].n == 3
    empty = summarise_runs([_run(NAN)])["auc"]
    assert math.isnan(empty.mean) and empty.n == 0


def test_summarise_runs_needs_runs() -> None:
    with pytest.raises(EvaluationError, match="at least one run"):
        summarise_runs([])


def test_bootstrap_is_deterministic_per_seed_and_fast() -> None:
    y, s1, _ = _tied_data(5, n=200)
    start = time.perf_counter()
    first = bootstrap_metrics(y, s1, 0.3, n_boot=1000, seed=7)
    assert time.perf_counter() - start < 1.0
    assert bootstrap_metrics(y, s1, 0.3, n_boot=1000, seed=7) == first
    assert bootstrap_metrics(y, s1, 0.3, n_boot=1000, seed=8) != first


def test_bootstrap_interval_contains_point_estimate() -> None:
    y, s1, _ = _tied_data(6, n=200)
    point = binary_metrics(y, s1, 0.3)
    out = bootstrap_metrics(y, s1, 0.3, n_boot=500)
    for name in METRIC_NAMES:
        iv = out[name]
        assert iv.mean == pytest.approx(getattr(point, name))
        assert iv.low < iv.mean < iv.high, name
        assert iv.n == 500


def test_bootstrap_stratified_keeps_both_classes() -> None:
    y = np.array([1, 1] + [0] * 18)
    s = np.linspace(0, 1, 20)
    stratified = bootstrap_metrics(y, s, 0.5, n_boot=300, seed=1)
    assert stratified["auc"].n == 300  # every resample had a positive and a negative
    assert stratified["sensitivity"].n == 300
    plain = bootstrap_metrics(y, s, 0.5, n_boot=300, seed=1, stratified=False)
    assert plain["auc"].n < 300  # ~12 % of plain resamples have no positive


def test_bootstrap_rejects_bad_n_boot() -> None:
    with pytest.raises(EvaluationError, match="n_boot"):
        bootstrap_metrics([0, 1], [0.1, 0.9], 0.5, n_boot=0)


# ---------------------------------------------------------------- DeLong


def _slow_delong(
    y: npt.NDArray[np.int64], scores: list[npt.NDArray[np.float64]]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """DeLong et al. 1988 from the O(m·n) kernel: AUCs and their covariance matrix."""
    v10, v01 = [], []
    for s in scores:
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    a10, a01 = np.array(v10), np.array(v01)
    aucs = a10.mean(axis=1)
    cov = np.cov(a10, ddof=1) / a10.shape[1] + np.cov(a01, ddof=1) / a01.shape[1]
    return aucs, np.atleast_2d(cov)


@pytest.mark.parametrize("seed", [10, 11], ids=["seed10", "seed11"])
def test_delong_test_equals_slow_implementation(seed: int) -> None:
    y, s1, s2 = _tied_data(seed)
    aucs, cov = _slow_delong(y, [s1, s2])
    z = (aucs[0] - aucs[1]) / math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    result = delong_test(y, s1, s2)
    assert result.auc1 == pytest.approx(aucs[0]) and result.auc2 == pytest.approx(aucs[1])
    assert result.difference == pytest.approx(aucs[0] - aucs[1])
    assert result.z == pytest.approx(z, rel=1e-9)
    assert result.p_value == pytest.approx(2 * stats.norm.sf(abs(z)), rel=1e-9)
    assert "vs" in str(result) and "p =" in str(result)


def test_delong_test_is_symmetric() -> None:
    y, s1, s2 = _tied_data(12)
    ab, ba = delong_test(y, s1, s2), delong_test(y, s2, s1)
    assert ba.difference == pytest.approx(-ab.difference)
    assert ba.z == pytest.approx(-ab.z)
    assert ba.p_value == pytest.approx(ab.p_value)


def test_delong_test_identical_scores() -> None:
    y, s1, _ = _tied_data(13)
    result = delong_test(y, s1, s1.copy())
    assert (result.z, result.p_value, result.difference) == (0.0, 1.0, 0.0)


def test_delong_test_degenerate_variance() -> None:
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    result = delong_test(y, perfect, np.full(6, 0.5))
    assert result.difference == pytest.approx(0.5)
    assert result.z == math.inf and result.p_value == 0.0


@pytest.mark.parametrize(
    ("y", "s1", "s2", "match"),
    [
        pytest.param([0, 1, 1], [0.1, 0.2, 0.3], [0.1, 0.2], "score2", id="lengths"),
        pytest.param([1, 1, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1], "both classes", id="one-class"),
        pytest.param([0, 1, 1], [0.1, NAN, 0.3], [0.3, 0.2, 0.1], "score1", id="nan"),
    ],
)
def test_delong_test_validates(y: list[int], s1: list[float], s2: list[float], match: str) -> None:
    with pytest.raises(EvaluationError, match=match):
        delong_test(y, s1, s2)


def test_delong_ci_contains_auc_and_matches_slow_variance() -> None:
    y, s1, _ = _tied_data(14)
    aucs, cov = _slow_delong(y, [s1])
    half = stats.norm.ppf(0.975) * math.sqrt(cov[0, 0])
    iv = delong_ci(y, s1)
    assert iv.low < iv.mean < iv.high
    assert iv.mean == pytest.approx(aucs[0])
    assert (iv.low, iv.high) == (pytest.approx(aucs[0] - half), pytest.approx(aucs[0] + half))
    assert iv.n == len(y)
    wider = delong_ci(y, s1, alpha=0.01)
    assert wider.low < iv.low and wider.high > iv.high


def test_delong_ci_is_clipped_and_validates_alpha() -> None:
    iv = delong_ci([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert (iv.mean, iv.high) == (1.0, 1.0)
    with pytest.raises(EvaluationError, match="alpha"):
        delong_ci([0, 1], [0.1, 0.9], alpha=1.5)
