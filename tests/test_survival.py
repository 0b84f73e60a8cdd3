"""Growth-analysis statistics on hand-made data: checked against lifelines directly,
perfect separation, censoring, the growth manifest's error messages and the report
written from arrays (no images)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from lifelines import KaplanMeierFitter
from lifelines.statistics import logrank_test

from ai_core.errors import EvaluationError
from lab.evaluation import survival as sv
from lab.evaluation.decision_curve import decision_curve
from lab.evaluation.growth_report import write_growth_report
from lab.evaluation.survival_plots import footer_text
from lab.evaluation.survival_report import (
    RISK,
    GrowthCohort,
    analyse,
    read_growth_manifest,
)

TIME = np.array([0.5, 1.0, 1.0, 2.0, 2.5, 3.0, 4.0, 4.5, 5.5, 6.0, 6.5, 7.0])
EVENT = np.array([1, 1, 0, 1, 0, 1, 0, 1, 0, 0, 1, 0])
GROUP = np.array(["a", "b"] * 6)


def test_kaplan_meier_matches_lifelines_and_counts_at_risk() -> None:
    curve = sv.kaplan_meier(TIME, EVENT)
    ref = KaplanMeierFitter().fit(TIME, EVENT)
    for t in (0.0, 0.5, 1.0, 2.2, 3.0, 5.0, 7.0):
        assert curve.at(t) == pytest.approx(float(ref.predict(t)))
    assert curve.incidence(3.0) == pytest.approx(1 - float(ref.predict(3.0)))
    assert (curve.n, curve.events) == (12, 6)
    assert sv.at_risk(TIME, [0, 1, 3, 7]) == [12, 11, 7, 1]


def test_censoring_is_not_an_event() -> None:
    """Two patients censored early: KM incidence is 1/2, not the naive 1/4 or 3/4."""
    curve = sv.kaplan_meier([0.5, 0.5, 2.0, 3.0], [0, 0, 1, 0])
    assert curve.incidence(2.5) == pytest.approx(0.5)


def test_logrank_matches_lifelines_and_reports_one_group() -> None:
    res = sv.logrank(TIME, EVENT, GROUP)
    a = GROUP == "a"
    ref = logrank_test(TIME[a], TIME[~a], EVENT[a], EVENT[~a])
    assert res.p_value == pytest.approx(ref.p_value)
    assert res.statistic == pytest.approx(ref.test_statistic)
    one = sv.logrank(TIME, EVENT, ["x"] * TIME.size)
    assert one.p_value is None and "one group" in one.reason


def test_inputs_are_checked() -> None:
    with pytest.raises(EvaluationError, match="years > 0"):
        sv.kaplan_meier([1.0, 0.0], [1, 0])
    with pytest.raises(EvaluationError, match="0/1"):
        sv.kaplan_meier([1.0, 2.0], [1, 2])
    with pytest.raises(EvaluationError, match="without variation"):
        sv.cox(TIME, EVENT, {"x": np.ones(TIME.size)})


def _cohort(n: int = 300, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """High group hazard 3x the low group's, independent administrative censoring."""
    rng = np.random.default_rng(seed)
    high = rng.random(n) < 0.3
    t_event = rng.exponential(1 / np.where(high, 0.24, 0.08))
    t_cens = rng.uniform(1.0, 8.0, n)
    return np.minimum(t_event, t_cens), t_event <= t_cens, high


def test_cox_recovers_the_hazard_ratio_and_checks_proportional_hazards() -> None:
    time, event, high = _cohort()
    fit = sv.cox(time, event, {"high": high.astype(float)})
    row = fit.row("high")
    assert row.low < 3.0 < row.high and 2.0 < row.hr < 4.5
    assert row.p_value < 0.001
    assert row.ph_p_value is not None and row.ph_p_value > 0.01  # true model has PH
    assert fit.ph_global_ok is not None


def test_time_dependent_auc_perfect_separation_and_censoring() -> None:
    # growers at 1-2.5 y, others followed to 6 y without growth; scores separate them exactly
    time = np.array([1.0, 1.5, 2.0, 2.5, 6.0, 6.0, 6.0, 6.0, 0.8, 0.9])
    event = np.array(
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    )  # two censored before 3 y: neither case nor control
    score = np.array([0.9, 0.8, 0.95, 0.7, 0.1, 0.2, 0.3, 0.15, 0.99, 0.01])
    (a3,) = sv.time_dependent_auc(time, event, score, [3.0], n_boot=50)
    assert a3.auc == pytest.approx(1.0)
    assert (a3.cases, a3.controls) == (4, 4)
    reversed_ = sv.time_dependent_auc(time, event, 1 - score, [3.0], n_boot=0)[0]
    assert reversed_.auc == pytest.approx(0.0)
    late = sv.time_dependent_auc(time, event, score, [6.5], n_boot=0)[0]
    assert late.auc is None and "outside the follow-up" in late.reason


def test_youden_cut_separates_growth_and_ignores_early_censoring() -> None:
    time = np.array([1.0, 1.5, 2.0, 2.5, 6.0, 6.0, 6.0, 6.0, 0.8, 0.9])
    event = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.95, 0.7, 0.1, 0.2, 0.3, 0.15, 0.99, 0.01])
    cut = sv.youden_cut(time, event, score, 3.0)
    assert cut is not None and (cut.cases, cut.controls) == (4, 4)
    assert cut.threshold == pytest.approx(0.7) and cut.j == pytest.approx(1.0)
    assert cut.share_high == pytest.approx(0.5)  # 0.99 (censored early) counts as high too
    one_wrong = score.copy()
    one_wrong[4] = 0.85  # a control above two cases
    worse = sv.youden_cut(time, event, one_wrong, 3.0)
    assert worse is not None and worse.j == pytest.approx(0.75)
    assert sv.youden_cut(time, event, score, 0.5) is None  # no case by then
    with pytest.raises(EvaluationError):
        sv.youden_cut(time, event, score[:-1], 3.0)


def test_time_dependent_auc_is_half_for_noise() -> None:
    time, event, _ = _cohort(n=2000, seed=5)
    noise = np.random.default_rng(1).random(time.size)
    (a,) = sv.time_dependent_auc(time, event, noise, [3.0], n_boot=0)
    assert a.auc is not None and abs(a.auc - 0.5) < 0.05


def test_decision_curve_treat_all_and_none() -> None:
    time, event, high = _cohort()
    dc = decision_curve(time, event, {"group": high.astype(float)}, 3.0, [0.0, 0.1, 0.2])
    assert dc.net_benefit["treat none"] == [0.0, 0.0, 0.0]
    inc = sv.kaplan_meier(time, event).incidence(3.0)
    assert dc.net_benefit["treat all"][0] == pytest.approx(inc, abs=1e-6)
    with pytest.raises(EvaluationError, match="probabilities"):
        decision_curve(time, event, {"bad": high * 2.0}, 3.0)


def _write_manifest(tmp_path: Path, rows: list[str]) -> Path:
    (tmp_path / "s1").mkdir(exist_ok=True)
    path = tmp_path / "growth.csv"
    path.write_text(
        "case_id,series,ki67_high,age,sex,time_years,event,skull_base\n" + "\n".join(rows) + "\n"
    )
    return path


def test_growth_manifest_reads_rows_without_a_label(tmp_path: Path) -> None:
    path = _write_manifest(tmp_path, ["p1,s1,,60,F,3.2,1,yes", "p2,s1,1,50,M,5,no,"])
    cases = read_growth_manifest(path)
    assert [c.time_years for c in cases] == [3.2, 5.0]
    assert [c.event for c in cases] == [True, False]
    assert [c.skull_base for c in cases] == [True, None]
    assert [c.label_known for c in cases] == [False, True]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("p1,s1,0,60,F,abc,1,no", r"growth\.csv line 3: column 'time_years': must be a number"),
        ("p1,s1,0,60,F,-1,1,no", r"line 3: column 'time_years': must be years > 0"),
        ("p1,s1,0,60,F,2,maybe,no", r"line 3: column 'event': must be 0/1 or yes/no"),
        ("p1,s1,0,60,F,2,1,2", r"line 3: column 'skull_base'"),
        ("p1,nowhere,0,60,F,2,1,no", r"line 3: series folder .* does not exist"),
        ("p0,s1,0,60,F,2,1,no", r"line 3: case_id 'p0' appears twice"),
    ],
    ids=["time-text", "time-negative", "event", "skull-base", "series", "duplicate"],
)
def test_growth_manifest_errors_name_line_and_column(
    tmp_path: Path, row: str, message: str
) -> None:
    path = _write_manifest(tmp_path, ["p0,s1,0,60,F,2,1,no", row])
    with pytest.raises(EvaluationError, match=message):
        read_growth_manifest(path)


def test_growth_manifest_missing_column(tmp_path: Path) -> None:
    path = tmp_path / "g.csv"
    path.write_text("case_id,series,event\np1,s1,1\n")
    with pytest.raises(EvaluationError, match="no 'time_years' column"):
        read_growth_manifest(path)


def test_analyse_and_report_from_arrays(tmp_path: Path) -> None:
    time, event, high = _cohort(n=240, seed=11)
    rng = np.random.default_rng(2)
    prob = np.clip(np.where(high, 0.6, 0.3) + rng.normal(0, 0.1, time.size), 0.01, 0.99)
    nan = np.full(time.size, np.nan)
    cohort = GrowthCohort(
        case_ids=[f"p{i}" for i in range(time.size)],
        time=time,
        event=event,
        probability=prob,
        threshold=0.45,
        volume_cm3=rng.lognormal(1.0, 0.6, time.size),
        age=rng.normal(60, 10, time.size),
        sex_female=(rng.random(time.size) < 0.7).astype(float),
        skull_base=(rng.random(time.size) < 0.35).astype(float),
        label=high.astype(float),
        bayes=nan,
    )
    res = analyse(cohort, bootstrap=30)
    assert res["km_risk"]["logrank"].p_value < 0.01
    hr = res["cox_multivariate"].row(RISK)
    assert hr.hr > 1.5 and hr.ph_p_value is not None
    auc3, auc5 = res["time_auc"]["model probability (Output 1)"]
    assert auc3.auc is not None and auc3.auc > 0.6 and auc5.auc is not None
    assert set(res["km_subgroups"]) == {"skull base", "not skull base"}
    res.update(not_assessable={}, seconds=1.0, model="demo", threshold=0.45, manifests=["m.csv"])
    res.update(threshold_source="a test threshold", masks="the manifest's masks")
    report = write_growth_report(res, cohort, tmp_path / "out", synthetic=True)
    text = report.read_text()
    assert "Output 1 ≥ 0.450 (a test threshold)" in text and "Youden's J" in text
    assert res["ki67_auc"]["n"] == 240 and res["ki67_auc"]["auc"] > 0.9
    assert "Ki-67 ≥ 5 % where known (240 patients" in text
    cut = res["youden_cut"]
    record = json.loads((tmp_path / "out" / "growth_risk.json").read_text())
    assert record["threshold"] == pytest.approx(cut.threshold, abs=1e-6)
    assert record["cohort"] == "m.csv" and record["n"] == 240
    assert 0.1 < record["share_high"] < 0.9  # the simulated groups are 0.6 vs 0.3 apart
    for needed in ("paper: 0.756", "paper: 0.727", "paper: p < 0.001", "paper: HR 1.996"):
        assert needed in text
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["footer"].startswith("research use only - synthetic data")
    assert data["time_auc"]["model probability (Output 1)"][0]["auc"] == pytest.approx(auc3.auc)
    for name in ("km_risk_groups.png", "km_skull_base.png", "decision_curve_3y.png"):
        assert (tmp_path / "out" / name).stat().st_size > 10_000
    assert "synthetic" not in footer_text(False)


def test_time_dependent_auc_with_an_event_at_the_last_censoring_time() -> None:
    # the last follow-up (6 y) has a growth and a censoring: the censoring survival is zero
    # there, which scikit-survival refuses as a weight even though the AUC at 3 y never uses it
    time = np.array([1.0, 1.5, 2.0, 2.5, 4.0, 5.0, 6.0, 6.0, 0.8, 0.9])
    event = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0, 0])
    score = np.array([0.9, 0.8, 0.95, 0.7, 0.1, 0.2, 0.3, 0.15, 0.99, 0.01])
    (a3,) = sv.time_dependent_auc(time, event, score, [3.0], n_boot=50)
    assert a3.reason == "", a3.reason
    assert a3.auc == pytest.approx(1.0) and (a3.cases, a3.controls) == (4, 4)
