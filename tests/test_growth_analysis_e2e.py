"""End to end: ``ki67node synth --longitudinal --baseline-only`` writes a small surveillance
cohort, ``ki67node growth-analysis`` (bundled demo model, real image pipeline) writes
every output of the study's growth analysis."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    code = main(
        [
            "growth-analysis",
            str(manifest),
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
    assert "20 patients" in text and "paper: 0.756 / 0.727" in text
    results = json.loads((out / "results.json").read_text())
    truth = json.loads((cohort / "growth_truth.json").read_text())
    assert results["n"] == 20 and results["synthetic"] is True
    assert results["events"] == sum(p["event"] for p in truth)
    assert results["footer"].startswith("research use only - synthetic data")
    assert {a["years"] for a in results["time_auc"]["model probability (Output 1)"]} == {3.0, 5.0}
    assert "cox_univariate" in results and results["decision_curve"]["years"] == 3.0
    for name in ("km_risk_groups.png", "km_skull_base.png", "decision_curve_3y.png"):
        assert (out / name).stat().st_size > 10_000, name
    report = (out / "report.md").read_text()
    assert "paper: 0.756" in report and "paper: HR 1.996" in report
    assert "Synthetic cohort" in report
