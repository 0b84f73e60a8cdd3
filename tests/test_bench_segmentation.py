"""bench/segmentation: its numbers on hand-made rows, and one end-to-end run (slow)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import segmentation_report as sm  # noqa: E402


def _row(
    volume: float = 5.0,
    dice: float = 0.9,
    predicted: float | None = 5.0,
    *,
    model: str = "a",
    case: str = "C1",
    has_tumour: bool = True,
    distance: float | None = 0.0,
    seg: float | None = None,
) -> sm.StudyRow:
    ok = predicted is not None
    return sm.StudyRow(
        cohort="c",
        case_id=case,
        model=model,
        has_tumour=has_tumour,
        true_volume_cm3=volume,
        location="convexity",
        vendor="ge",
        head="1",
        status="ok" if ok else "not_assessable",
        reason="",
        dice=dice if ok else 0.0,
        predicted_volume_cm3=predicted,
        seg_volume_cm3=predicted if seg is None else seg,
        distance_mm=distance if ok else None,
        segmentation_s=3.0,
        peak_rss_mb=1000.0,
    )


@pytest.mark.parametrize(
    ("volume", "label"),
    [
        (0.2, "<0.5"),
        (0.5, "0.5–1.5"),
        (1.49, "0.5–1.5"),
        (1.5, "1.5–3"),
        (14.9, "6–15"),
        (50, ">50"),
    ],
    ids=["tiny", "low-edge", "below-1.5", "edge-1.5", "below-15", "edge-50"],
)
def test_volume_bin_edges_are_low_inclusive(volume: float, label: str) -> None:
    assert sm.volume_bin(volume) == label


def test_volume_bin_refuses_negative_volume() -> None:
    with pytest.raises(ValueError, match="volume_cm3 must be a number ≥ 0"):
        sm.volume_bin(-1.0)


def test_aggregate_counts_abstentions_in_the_second_dice_column_only() -> None:
    rows = [_row(dice=0.9, predicted=5.5), _row(dice=0.8, predicted=4.0), _row(predicted=None)]
    agg = sm.aggregate(rows)
    assert agg["n"] == 3
    assert agg["abstentions"] == 1
    assert agg["median_dice"] == pytest.approx(0.85)
    assert agg["median_dice_incl_abstentions"] == pytest.approx(0.8)
    assert agg["median_abs_volume_error_percent"] == pytest.approx(15.0)  # +10 % and −20 %
    assert agg["mean_signed_volume_error_percent"] == pytest.approx(-5.0)


def test_by_bin_lists_every_bin_and_puts_models_side_by_side() -> None:
    rows = [_row(2.0, 0.9, model="old"), _row(2.0, 0.7, model="new"), _row(20.0, model="old")]
    table = sm.by_bin(rows)
    assert list(table) == list(sm.BIN_LABELS)
    assert table["1.5–3"]["old"]["median_dice"] == pytest.approx(0.9)
    assert table["1.5–3"]["new"]["median_dice"] == pytest.approx(0.7)
    assert table["15–50"]["new"]["n"] == 0
    lines = sm.group_table("volume cm³", table, ["old", "new"])
    assert lines[0].startswith("| volume cm³ | n | old Dice |")
    assert "| 1.5–3 | 1 | 0.900 |" in lines[4]


def test_wrong_structure_distance_on_a_tiny_array_pair() -> None:
    spacing = (1.0, 1.0, 2.0)  # x, y, z mm
    truth = np.zeros((5, 10, 10), np.uint8)
    truth[2, 2:4, 2:4] = 1
    predicted = np.zeros_like(truth)
    predicted[2, 2, 8] = 1  # 5 voxels (5 mm) along x from the true tumour's nearest voxel
    predicted[4, 2, 3] = 1  # 2 slices (4 mm) above it
    distances = sm.distance_map_mm(truth, spacing)
    affine = np.diag([*spacing, 1.0])
    far = sm.distance_at(distances, (8.0, 2.0, 4.0), affine)  # centroid (x, y, z) in mm
    above = sm.distance_at(distances, (3.0, 2.0, 8.0), affine)
    assert far == pytest.approx(5.0)
    assert above == pytest.approx(4.0)
    assert sm.distance_at(distances, (30.0, 0.0, 0.0), affine) == math.inf
    assert sm.dice(predicted, truth) == 0.0
    assert not _row(distance=above).wrong_structure
    assert _row(distance=sm.WRONG_STRUCTURE_MM + 0.1).wrong_structure


def test_any_lesion_on_a_tumour_free_study_is_a_wrong_structure() -> None:
    assert sm.distance_map_mm(np.zeros((3, 3, 3), np.uint8), (1, 1, 1)) is None
    lesion = _row(0.0, has_tumour=False, distance=None)
    nothing = _row(0.0, predicted=None, has_tumour=False)
    assert lesion.wrong_structure and not nothing.wrong_structure
    assert sm.tumour_free_summary([lesion, nothing, _row()]) == {
        "n": 2,
        "lesions_reported": 1,
        "none_reported": 1,
    }


def test_pair_change_verdict_and_same_lesion() -> None:
    assert sm.change_percent(2.0, 2.5) == pytest.approx(25.0)
    with pytest.raises(ValueError, match="baseline volume must be > 0"):
        sm.change_percent(0.0, 1.0)
    bl, fu = _row(2.0, predicted=2.0), _row(2.4, predicted=2.2, case="C2")
    pair = sm.pair_row("c", "P1", 20.0, bl, fu)
    assert pair.measured_change_percent == pytest.approx(10.0)
    assert pair.error_pp == pytest.approx(10.0)
    assert not pair.verdict_right  # true growth 20 %, measured 10 %
    assert pair.same_lesion
    lost = sm.pair_row("c", "P2", 5.0, bl, _row(2.1, predicted=None, case="C3"))
    assert lost.measured_change_percent is None and not lost.verdict_right
    assert not lost.same_lesion
    wrong = sm.pair_row("c", "P3", 5.0, bl, replace(fu, distance_mm=25.0))
    assert not wrong.same_lesion and wrong.verdict_right
    summary = sm.pair_summary([pair, lost, wrong])
    assert summary["measured"] == 2 and summary["same_lesion"] == 1
    assert summary["verdict_agreement"] == pytest.approx(1 / 3)


def test_targets_pass_fail_and_not_applicable() -> None:
    rows = [
        _row(1.0, 0.75, 1.05),
        _row(2.0, 0.9, 2.1, case="C2"),
        _row(8.0, 0.9, 7.6, case="C3", seg=7.7),
        _row(0.0, predicted=None, case="F1", has_tumour=False),
    ]
    targets = {t.name: t for t in sm.evaluate_targets(rows, [], peak_rss_mb=5000.0)}
    assert len(targets) == 17
    dice_small = targets["median Dice incl. abstentions, 0.5–1.5 cm³ ≥ 0.7"]
    assert dice_small.passed is True and dice_small.value == pytest.approx(0.75)
    assert targets["median Dice incl. abstentions, >50 cm³ ≥ 0.85"].passed is None
    sr_seg = targets["max abs. SR − SEG volume difference ≤ 1 %"]
    assert sr_seg.passed is False and sr_seg.value == pytest.approx(100 * 0.1 / 7.7)
    assert targets["lesions on tumour-free studies = 0"].passed is True
    assert targets["pairs: same lesion in every pair (fraction = 1)"].passed is None
    assert targets["peak RSS ≤ 4096 MB"].passed is False
    table = sm.target_table({"a": [t._asdict() for t in targets.values()]})
    assert "| peak RSS ≤ 4096 MB | FAIL (5000.0) |" in table


def test_targets_refuse_rows_of_two_models() -> None:
    with pytest.raises(ValueError, match="one model's rows"):
        sm.evaluate_targets([_row(model="a"), _row(model="b")], [], peak_rss_mb=1.0)


@pytest.mark.slow
def test_end_to_end_on_one_small_case(tmp_path: Path) -> None:
    from lab.synth import generate_cohort

    cohort = tmp_path / "cohort"
    generate_cohort(cohort, cases=1, seed=5, size="small", progress=False)
    out = tmp_path / "report"
    command = [
        sys.executable,
        str(REPO / "bench" / "segmentation"),
        "--cohort", str(cohort),
        "--model", str(REPO / "ai_core" / "weights" / "segmentation"),
        "--label", "bundled",
        "--out", str(out),
        "--cache", str(tmp_path / "cache"),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "CASE0001 bundled: Dice" in done.stderr
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(results["rows"]) == 1
    assert results["rows"][0]["case_id"] == "CASE0001"
    assert "## Targets" in (out / "report.md").read_text(encoding="utf-8")
    assert (out / "dice_vs_volume.png").stat().st_size > 0
