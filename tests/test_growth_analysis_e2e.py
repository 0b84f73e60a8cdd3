"""End to end: ``ki67node synth --longitudinal --baseline-only`` writes a small surveillance
cohort, ``ki67node growth-analysis --segment`` (a copy of the bundled demo model, the
bundled segmentation instead of the true masks, real image pipeline) writes every output
of the study's growth analysis and adopts the cohort's growth-risk threshold."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ai_core.model.bundle import BUNDLED_DIR, load_bundle
from daemon.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_synth_longitudinal_then_growth_analysis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cohort = tmp_path / "cohort"
    args = ["synth", str(cohort), "--longitudinal", "--baseline-only", "--cases", "20"]
    assert main([*args, "--seed", "6101", "--size", "small", "--no-progress"]) == 0
    assert "20 surveillance patient(s)" in capsys.readouterr().out
    manifest = cohort / "growth_manifest.csv"
    out = tmp_path / "report"
    model = tmp_path / "model"
    shutil.copytree(BUNDLED_DIR, model)
    code = main(
        [
            "growth-analysis",
            str(manifest),
            "--model",
            str(model),
            "--segment",
            "--adopt-risk-threshold",
            "--out",
            str(out),
            "--workers",
            "2",
            "--device",
            "cpu",
            "--bootstrap",
            "50",
            "--no-progress",
        ]
    )
    text = capsys.readouterr().out
    assert code == 0, text
    assert "paper: 0.756 / 0.727" in text and "growth-risk threshold" in text
    results = json.loads((out / "results.json").read_text())
    truth = json.loads((cohort / "growth_truth.json").read_text())
    # the node's own masks: a baseline it abstains on is listed, never silently dropped
    assert results["masks"].startswith("segmented by")
    assert results["n"] + len(results["not_assessable"]) == 20 and results["n"] >= 16
    assert f"{results['n']} patients" in text and results["synthetic"] is True
    record = json.loads((out / "growth_risk.json").read_text())
    assert record["n"] == results["n"] and "Youden" in record["rule"]
    assert load_bundle(model).risk_threshold == pytest.approx(record["threshold"])
    left_out = set(results["not_assessable"])  # manifest case_id = the truth's patient_id
    assert results["events"] == sum(p["event"] for p in truth if p["patient_id"] not in left_out)
    assert results["footer"].startswith("research use only - synthetic data")
    assert {a["years"] for a in results["time_auc"]["model probability (Output 1)"]} == {3.0, 5.0}
    assert "cox_univariate" in results and results["decision_curve"]["years"] == 3.0
    for name in ("km_risk_groups.png", "km_skull_base.png", "decision_curve_3y.png"):
        assert (out / name).stat().st_size > 10_000, name
    report = (out / "report.md").read_text()
    assert "paper: 0.756" in report and "paper: HR 1.996" in report
    assert "Synthetic cohort" in report
