"""Binary classification metrics of the Ki-67 model and their confidence intervals.

This module owns the numbers of the paper's Table 2 (AUC, accuracy,
sensitivity, specificity, F1, MCC), how they are summarised with a 95 %
interval, and the DeLong comparison of two correlated ROC curves.

Conventions (documented once here, relied on everywhere):

- Labels are 0/1 (1 = Ki-67 >= 5 %); scores are finite floats, higher = more
  likely positive. A case is predicted positive when ``score >= threshold``.
- **AUC** is the Mann–Whitney statistic with ties counted as ½ (midranks),
  identical to :func:`sklearn.metrics.roc_auc_score`. It is ``nan`` when
  ``y_true`` holds one class only, as are sensitivity (no positives) and
  specificity (no negatives); such values are skipped by the summaries.
- **MCC** is 0 when undefined (a row or column of the confusion matrix is
  empty), **F1** is 0 when undefined (no positive present nor predicted);
  both as scikit-learn does.
- An :class:`Interval` is a central value with a ``[low, high]`` range and
  the number of values behind it. :func:`summarise_runs`: the mean over runs
  and the 2.5th/97.5th percentiles of the per-run values (the spread over
  repeated splits, the paper's "95 % CI over 50 runs").
  :func:`bootstrap_metrics`: the value on the whole test set and the
  percentile bootstrap interval. :func:`delong_ci`: the AUC and its normal
  interval from the DeLong variance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt
from scipy import stats

from ai_core.errors import EvaluationError

METRIC_NAMES = ("auc", "accuracy", "sensitivity", "specificity", "f1", "mcc")
BOOTSTRAP_CELLS = 4_000_000  # resamples × cases held in memory at once

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike


@dataclass(frozen=True)
class BinaryMetrics:
    """The Table 2 metrics of one test set at one threshold."""

    auc: float
    accuracy: float
    sensitivity: float
    specificity: float
    f1: float
    mcc: float
    threshold: float
    n: int
    n_positive: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class Interval:
    """A central value with a 95 % (or other) range and how many values it rests on.

    ``mean`` is the mean over runs for :func:`summarise_runs` and the value on
    the whole test set for :func:`bootstrap_metrics` and :func:`delong_ci`.
    """

    mean: float
    low: float
    high: float
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} ({self.low:.3f}–{self.high:.3f})"


@dataclass(frozen=True)
class DeLongResult:
    """Paired two-sided DeLong test of AUC1 = AUC2; ``difference`` is AUC1 − AUC2."""

    auc1: float
    auc2: float
    difference: float
    z: float
    p_value: float

    def __str__(self) -> str:
        return (
            f"AUC {self.auc1:.3f} vs {self.auc2:.3f}: difference {self.difference:+.3f}, "
            f"z = {self.z:.2f}, p = {self.p_value:.3g}"
        )


# ---------------------------------------------------------------- validation


def _labels(y_true: ArrayLike) -> npt.NDArray[np.int64]:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise EvaluationError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise EvaluationError("y_true is empty: there is nothing to evaluate")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isin(y, (0, 1))):
        bad = sorted({str(v) for v in np.unique(y)} - {"0", "1", "0.0", "1.0"})[:5]
        raise EvaluationError(f"y_true must hold 0/1 labels only; found {bad}")
    return y.astype(np.int64)


def _scores(y: npt.NDArray[np.int64], y_score: ArrayLike, name: str = "y_score") -> FloatArray:
    try:
        s = np.asarray(y_score, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EvaluationError(f"{name} must be numbers: {exc}") from exc
    if s.ndim != 1:
        raise EvaluationError(f"{name} must be 1-D, got shape {s.shape}")
    if s.shape != y.shape:
        raise EvaluationError(
            f"y_true and {name} differ in length ({y.size} vs {s.size}); pass one score per case"
        )
    bad = int(np.count_nonzero(~np.isfinite(s)))
    if bad:
        raise EvaluationError(
            f"{name} holds {bad} NaN or infinite values; every case needs a score"
        )
    return s


def _validate(y_true: ArrayLike, y_score: ArrayLike) -> tuple[npt.NDArray[np.int64], FloatArray]:
    y = _labels(y_true)
    return y, _scores(y, y_score)


def _need_both_classes(y: npt.NDArray[np.int64], what: str) -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise EvaluationError(f"{what} needs both classes in y_true; all {y.size} cases are {y[0]}")


# ---------------------------------------------------------------- AUC and ROC


def _auc_from_ranks(ranks: FloatArray, positive: npt.NDArray[np.bool_]) -> FloatArray:
    """Mann–Whitney AUC per row of ``ranks`` (midranks within each row)."""
    n_pos = positive.sum(axis=-1).astype(np.float64)
    n_neg = positive.shape[-1] - n_pos
    rank_sum = np.where(positive, ranks, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (Mann–Whitney, ties ½); ``nan`` when only one class is present."""
    y, s = _validate(y_true, y_score)
    ranks = stats.rankdata(s).astype(np.float64)
    return float(_auc_from_ranks(ranks, y == 1))


def roc_curve_points(y_true: ArrayLike, y_score: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """False- and true-positive rates at every distinct threshold, from (0, 0) to (1, 1).

    Needs both classes (a ROC curve of one class is undefined).
    """
    y, s = _validate(y_true, y_score)
    _need_both_classes(y, "roc_curve_points")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tp = np.cumsum(y_sorted)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    tpr = np.r_[0.0, tp / tp[-1]]
    fpr = np.r_[0.0, fp / fp[-1]]
    return fpr.astype(np.float64), tpr.astype(np.float64)


# ---------------------------------------------------------------- thresholded metrics


def _from_counts(
    tp: FloatArray, fp: FloatArray, tn: FloatArray, fn: FloatArray
) -> dict[str, FloatArray]:
    """Accuracy, sensitivity, specificity, F1 and MCC from (arrays of) confusion counts."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = tp + fp + tn + fn
        sens = np.where(tp + fn > 0, tp / (tp + fn), np.nan)
        spec = np.where(tn + fp > 0, tn / (tn + fp), np.nan)
        f1_den = 2 * tp + fp + fn
        f1 = np.where(f1_den > 0, 2 * tp / f1_den, 0.0)
        mcc_den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        mcc = np.where(mcc_den > 0, (tp * tn - fp * fn) / mcc_den, 0.0)
    return {
        "accuracy": (tp + tn) / n,
        "sensitivity": sens,
        "specificity": spec,
        "f1": f1,
        "mcc": mcc,
    }


def binary_metrics(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> BinaryMetrics:
    """All Table 2 metrics at ``threshold`` (positive when ``score >= threshold``)."""
    y, s = _validate(y_true, y_score)
    if not math.isfinite(threshold):
        raise EvaluationError(f"threshold must be a finite number, got {threshold}")
    pred = s >= threshold
    pos = y == 1
    counts = [
        np.float64(np.count_nonzero(m))
        for m in (pred & pos, pred & ~pos, ~pred & ~pos, ~pred & pos)
    ]
    values = _from_counts(*(np.asarray(c) for c in counts))
    return BinaryMetrics(
        auc=roc_auc(y, s),
        threshold=float(threshold),
        n=int(y.size),
        n_positive=int(pos.sum()),
        **{k: float(v) for k, v in values.items()},
    )


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """The score threshold that maximises sensitivity + specificity − 1 (Youden's J).

    Candidates are the distinct scores; among equally good ones the highest
    threshold wins. J is compared exactly, in integer counts.
    """
    y, s = _validate(y_true, y_score)
    _need_both_classes(y, "youden_threshold")
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last_of_tie = np.r_[np.nonzero(np.diff(s_sorted))[0], y.size - 1]
    tp = np.cumsum(y_sorted)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    j_scaled = tp * n_neg - fp * n_pos  # J × n_pos × n_neg, exact integers
    best = int(np.argmax(j_scaled))  # first = highest threshold among ties
    return float(s_sorted[last_of_tie[best]])


# ---------------------------------------------------------------- intervals


def _interval(values: FloatArray, central: float | None = None) -> Interval:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    low, high = np.percentile(finite, [2.5, 97.5])
    mean = float(finite.mean()) if central is None else central
    return Interval(mean, float(low), float(high), int(finite.size))


def summarise_runs(runs: Sequence[BinaryMetrics]) -> dict[str, Interval]:
    """Mean and 2.5th–97.5th percentile range of each metric over repeated runs.

    Percentiles use numpy's linear interpolation. A run whose value of a
    metric is ``nan`` (e.g. the AUC of a one-class test set) is left out of
    that metric only; ``Interval.n`` is the number of runs that did count, so
    ``len(runs) - n`` were skipped. A metric with no finite value gives
    ``Interval(nan, nan, nan, 0)``.
    """
    if len(runs) == 0:
        raise EvaluationError("summarise_runs needs at least one run")
    return {
        name: _interval(np.array([getattr(r, name) for r in runs], dtype=np.float64))
        for name in METRIC_NAMES
    }


def bootstrap_metrics(
    y_true: ArrayLike,
    y_score: ArrayLike,
    threshold: float,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    stratified: bool = True,
) -> dict[str, Interval]:
    """Percentile bootstrap interval of every metric on one test set.

    Each of ``n_boot`` resamples draws cases with replacement (``stratified``:
    positives and negatives separately, keeping their counts, so every
    resample has both classes). ``Interval.mean`` is the metric on the whole
    test set, ``low``/``high`` the 2.5th/97.5th percentiles of the resampled
    values, ``n`` the number of resamples where the metric was defined.
    The same ``seed`` gives the same intervals.
    """
    y, s = _validate(y_true, y_score)
    if n_boot < 1:
        raise EvaluationError(f"n_boot must be at least 1, got {n_boot}")
    point = binary_metrics(y, s, threshold)
    rng = np.random.default_rng(seed)
    pos_idx, neg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    chunk = max(1, BOOTSTRAP_CELLS // y.size)
    parts: dict[str, list[FloatArray]] = {name: [] for name in METRIC_NAMES}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        if stratified:
            idx = np.concatenate(
                [
                    rng.choice(pos_idx, size=(b, pos_idx.size)),
                    rng.choice(neg_idx, size=(b, neg_idx.size)),
                ],
                axis=1,
            )
        else:
            idx = rng.integers(0, y.size, size=(b, y.size))
        yb, sb = y[idx] == 1, s[idx]
        ranks = stats.rankdata(sb, axis=1).astype(np.float64)
        parts["auc"].append(_auc_from_ranks(ranks, yb))
        pred = sb >= threshold
        counts = [
            np.count_nonzero(m, axis=1).astype(np.float64)
            for m in (pred & yb, pred & ~yb, ~pred & ~yb, ~pred & yb)
        ]
        for name, values in _from_counts(*counts).items():
            parts[name].append(values)
    return {
        name: _interval(np.concatenate(parts[name]), central=float(getattr(point, name)))
        for name in METRIC_NAMES
    }


# ---------------------------------------------------------------- DeLong


def _midrank(x: FloatArray) -> FloatArray:
    return stats.rankdata(x).astype(np.float64)


def _delong_components(
    y: npt.NDArray[np.int64], scores: FloatArray
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """AUCs and the covariance matrices of the structural components (Sun & Xu 2014).

    ``scores`` is [k, n]. Returns ``(auc [k], s10 [k, k], s01 [k, k])``;
    the covariance of the AUCs is ``s10 / m + s01 / n`` (m positives, n negatives).
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = np.stack([_midrank(row) for row in pos])
    ty = np.stack([_midrank(row) for row in neg])
    tz = np.stack([_midrank(row) for row in np.concatenate([pos, neg], axis=1)])
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((len(scores), len(scores)))
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((len(scores), len(scores)))
    return auc, s10, s01


def delong_test(y_true: ArrayLike, score1: ArrayLike, score2: ArrayLike) -> DeLongResult:
    """Paired two-sided DeLong test of two models' AUCs on the same cases.

    Uses the fast midrank algorithm (Sun & Xu 2014, O(n log n)). Identical
    scores give z = 0 and p = 1. When the variance of the difference is zero
    but the AUCs differ (both curves degenerate, e.g. a perfect model against
    a constant one) the test is degenerate: z = ±inf and p = 0.
    """
    y = _labels(y_true)
    s1, s2 = _scores(y, score1, "score1"), _scores(y, score2, "score2")
    _need_both_classes(y, "delong_test")
    m, n = int(y.sum()), int(y.size - y.sum())
    auc, s10, s01 = _delong_components(y, np.stack([s1, s2]))
    diff = float(auc[0] - auc[1])
    contrast = np.array([1.0, -1.0])
    var = float(contrast @ (s10 / m + s01 / n) @ contrast)
    scale = float(np.trace(s10 / m + s01 / n))
    if np.array_equal(s1, s2) or abs(diff) <= 1e-12:
        z, p = 0.0, 1.0
    elif var <= 1e-12 * max(scale, 1e-300):
        z, p = math.copysign(math.inf, diff), 0.0
    else:
        z = diff / math.sqrt(var)
        p = float(2.0 * stats.norm.sf(abs(z)))
    return DeLongResult(float(auc[0]), float(auc[1]), diff, float(z), min(1.0, p))


def delong_ci(y_true: ArrayLike, y_score: ArrayLike, alpha: float = 0.05) -> Interval:
    """AUC with its (1 − alpha) normal interval from the DeLong variance, clipped to [0, 1].

    ``Interval.n`` is the number of cases.
    """
    if not 0.0 < alpha < 1.0:
        raise EvaluationError(f"alpha must lie strictly between 0 and 1, got {alpha}")
    y, s = _validate(y_true, y_score)
    _need_both_classes(y, "delong_ci")
    m, n = int(y.sum()), int(y.size - y.sum())
    auc, s10, s01 = _delong_components(y, s[np.newaxis, :])
    se = math.sqrt(max(0.0, float(s10[0, 0] / m + s01[0, 0] / n)))
    half = float(stats.norm.ppf(1.0 - alpha / 2.0)) * se
    a = float(auc[0])
    return Interval(a, max(0.0, a - half), min(1.0, a + half), int(y.size))
