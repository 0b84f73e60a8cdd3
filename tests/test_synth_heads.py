"""lab.synth: distinct heads, segmentation-benchmark options and growth pairs.

Small cases (2 mm world grid) only. The default cohort must stay exactly what
it was before these options existed: its pixel and truth hashes are pinned.
"""

from __future__ import annotations

import csv
import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest

from daemon.cli import main
from lab.synth.anatomy import Label, SynthError, paint_pituitary
from lab.synth.cohort import generate_cohort
from lab.synth.contrast import HeadLayers, build_labels, label_table
from lab.synth.head_build import head_model
from lab.synth.heads import HeadVariant, head_variant
from lab.synth.plan import CohortOptions, plan_case
from lab.synth.profiles import PROFILES
from lab.synth.render import render_case

# generate_cohort(cases=1, seed=5, size="small") before distinct heads existed
# (pixel arrays of every series, and ground_truth.csv without the new columns)
DEFAULT_PIXELS_SHA256 = "7df587c88ac3a85df6744f53d0d41a9c7d16f2dcb855f8c828f69da66f1a6315"
DEFAULT_TRUTH_SHA256 = "008006a70728d0a0471db5afc94ace679637bf0cbb6f4531588d03d6db5b97b4"


def _pixel_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.dcm")):
        h.update(str(path.relative_to(root)).encode())
        h.update(np.ascontiguousarray(pydicom.dcmread(path).pixel_array).tobytes())
    return h.hexdigest()


def _truth_digest(root: Path) -> str:
    with (root / "ground_truth.csv").open(newline="") as fh:
        rows = [
            {k: v for k, v in r.items() if k not in ("head", "has_tumour")}
            for r in csv.DictReader(fh)
        ]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def _truth(root: Path) -> list[dict[str, Any]]:
    return json.loads((root / "ground_truth.json").read_text())


def _mask(root: Path, record: dict[str, Any]) -> np.ndarray:
    return np.asarray(nib.load(root / record["mask_file"]).dataobj)


@pytest.mark.slow
def test_default_cohort_unchanged(tmp_path: Path) -> None:
    out = tmp_path / "default"
    generate_cohort(out, cases=1, seed=5, size="small", progress=False)
    assert _pixel_digest(out) == DEFAULT_PIXELS_SHA256
    assert _truth_digest(out) == DEFAULT_TRUTH_SHA256
    [record] = _truth(out)
    assert record["head"] == 0 and record["has_tumour"] is True


def test_head_zero_is_the_identity() -> None:
    v = head_variant(0)
    assert v == HeadVariant(index=0) and v.is_identity
    pts = np.array([[0.0, 0.0, 0.0], [40.0, -60.0, 30.0]])
    assert np.array_equal(v.displacement(pts), np.zeros((2, 3)))
    assert v.table_overrides() == {}
    plan = plan_case(5, 0, PROFILES["internal"], "small")
    same = plan_case(5, 0, PROFILES["internal"], "small", CohortOptions(heads=(0,)))
    assert pickle.dumps(same) == pickle.dumps(plan)
    assert v.fold_pose(plan.pose) is plan.pose


def test_head_variants_are_deterministic_and_distinct() -> None:
    a, b = head_variant(1), head_variant(2)
    assert a != b and head_variant(np.int64(1)) == a
    for v in (a, b):
        assert all(0.88 <= s <= 1.12 for s in v.scale)
        assert 2.0 <= v.warp_amplitude_mm <= 5.0 and 35.0 <= v.warp_length_mm <= 50.0
        assert 3.0 <= float(np.linalg.norm(v.face_shift_mm)) <= 8.0
        assert 0.72 <= v.marrow_t1c <= 1.25 and 0.95 <= v.mucosa_t1c <= 1.35
    pts = np.random.default_rng(0).uniform(-70, 70, (500, 3))
    d = a.displacement(pts)
    assert 0.5 < np.abs(d).max() < 5.0 + 8.0 + 0.5
    back = a.variant_points(a.template_points(pts))
    assert np.allclose(back, pts, atol=1e-3)
    assert np.all(a.inverse_jacobian_det(pts) > 0.5)


@pytest.mark.parametrize(
    "bad", [-1, 10_000, 1.5, True], ids=["negative", "too-big", "float", "bool"]
)
def test_head_variant_rejects_bad_index(bad: Any) -> None:
    with pytest.raises(SynthError, match="head index must be"):
        head_variant(bad)


def test_warp_label_map_and_atrophy() -> None:
    model = head_model(2.0)
    lab = build_labels(model, HeadLayers())
    v = head_variant(3)
    warped = v.warp_label_map(lab, model)
    assert warped.shape == lab.shape and warped.dtype == lab.dtype
    assert 0.01 < np.mean(warped != lab) < 0.3  # moved, but the same head
    assert np.array_equal(head_variant(0).warp_label_map(lab, model), lab)
    with pytest.raises(SynthError, match="same model"):
        v.warp_label_map(lab[:-1], model)
    t1 = v.apply_atrophy(model.t1, model.brain)
    brain = model.brain
    assert t1[brain].mean() < model.t1[brain].mean() - 2.0  # wider sulci and ventricles
    assert (brain & (t1 < 90)).sum() > (brain & (model.t1 < 90)).sum()
    assert np.array_equal(t1[~model.brain], model.t1[~model.brain])


@pytest.mark.parametrize(
    "spacing", [pytest.param(1.0, marks=pytest.mark.slow), 2.0], ids=["1mm", "2mm"]
)
def test_pituitary_at_the_midline_skull_base(spacing: float) -> None:
    model = head_model(spacing)
    lab = build_labels(model, HeadLayers())
    assert not (lab == Label.PITUITARY).any()
    paint_pituitary(lab, model)
    idx = np.argwhere(lab == Label.PITUITARY)
    volume = len(idx) * spacing**3 / 1000
    assert 0.4 < volume < 0.9
    centre = model.origin + spacing * idx.mean(axis=0)
    assert abs(centre[0]) < 1.5 and -10 < centre[1] < 5 and -32 < centre[2] < -18
    assert not (lab[model.brain] == Label.PITUITARY).any()
    assert label_table("t1c")[Label.PITUITARY] > 1.2  # strongly enhancing
    assert all(label_table(c)[Label.PITUITARY] > 0 for c in ("t1", "t2", "flair", "dwi"))


@pytest.fixture(scope="module")
def head_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("heads") / "cohort"
    generate_cohort(
        out,
        cases=2,
        seed=5,
        size="small",
        progress=False,
        heads=(1, 2),
        volume_range=(4.0, 8.0),
        t1c_only=True,
    )
    return out


@pytest.mark.slow
def test_distinct_head_differs_and_truth_is_exact(head_cohort: Path, tmp_path: Path) -> None:
    records = _truth(head_cohort)
    assert {r["head"] for r in records} <= {1, 2}
    for r in records:
        assert r["has_tumour"] is True
        assert 4.0 * 0.8 < r["volume_cm3"] < 8.0 * 1.25  # drawn range, times the warp's change
        assert 4.0 <= r["drawn"]["volume_cm3"] <= 8.0
        assert [s["kind"] for s in r["series"]] == ["t1c_mprage"]
        assert r["mask_volume_cm3"] == pytest.approx(r["volume_cm3"], rel=0.05)
        assert _mask(head_cohort, r).sum() > 0
    # the same case on the template head: other pixels
    plan = plan_case(5, 0, PROFILES["internal"], "small", CohortOptions(heads=(1, 2)))
    plan0 = plan_case(5, 0, PROFILES["internal"], "small")
    assert plan.head in (1, 2) and plan.pose.volume_scale != plan0.pose.volume_scale
    same = render_case(
        plan_case(5, 0, PROFILES["internal"], "small", CohortOptions(t1c_only=True)), tmp_path
    )
    assert same.record["head"] == 0
    ds_head = pydicom.dcmread(next((head_cohort / "CASE0001").rglob("*.dcm")))
    ds_zero = pydicom.dcmread(next((tmp_path / "CASE0001").rglob("*.dcm")))
    assert not np.array_equal(ds_head.pixel_array, ds_zero.pixel_array)


@pytest.mark.slow
def test_tumour_free_case(tmp_path: Path) -> None:
    out = tmp_path / "free"
    generate_cohort(
        out, cases=1, seed=5, size="small", progress=False, tumour_free_fraction=1.0, t1c_only=True
    )
    [r] = _truth(out)
    assert r["has_tumour"] is False and r["volume_cm3"] == 0 and r["location"] == "none"
    assert r["mask_volume_cm3"] == 0 and r["max_diameter_mm"] == 0
    assert _mask(out, r).sum() == 0
    with (out / "ground_truth.csv").open(newline="") as fh:
        [row] = list(csv.DictReader(fh))
    assert row["has_tumour"] == "0" and row["head"] == "0" and row["volume_cm3"] == "0.0"
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["segmentation_benchmark"]["tumour_free_cases"] == 1


def test_volume_range_and_tumour_free_draws() -> None:
    opts = CohortOptions(volume_range=(0.5, 150.0), tumour_free_fraction=0.3)
    plans = [plan_case(9, i, PROFILES["internal"], "small", opts) for i in range(60)]
    volumes = [p.features.volume_cm3 for p in plans]
    assert all(0.5 <= v <= 150.0 for v in volumes)
    assert min(volumes) < 2.0 and max(volumes) > 40.0  # log-uniform: both ends
    assert {p.features.location for p in plans} == {"convexity", "falx", "skull_base"}
    assert 5 <= sum(not p.has_tumour for p in plans) <= 35
    base = [plan_case(9, i, PROFILES["internal"], "small") for i in range(60)]
    # Ki-67 label and every acquisition parameter as without the option
    assert [p.features.ki67_high for p in plans] == [p.features.ki67_high for p in base]
    assert [p.vendor for p in plans] == [p.vendor for p in base]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"heads": ()}, "at least one head"),
        ({"heads": (1, -2)}, "not a head index"),
        ({"volume_range": (5.0, 1.0)}, "0 < low <= high"),
        ({"tumour_free_fraction": 1.5}, "between 0 and 1"),
    ],
    ids=["no-heads", "negative-head", "backwards-range", "fraction"],
)
def test_cohort_options_are_checked(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SynthError, match=message):
        CohortOptions(**kwargs)


def test_longitudinal_rejects_benchmark_options(tmp_path: Path) -> None:
    with pytest.raises(SynthError, match="longitudinal cohorts take none"):
        generate_cohort(tmp_path / "x", cases=1, seed=1, longitudinal=True, heads=(1,))


@pytest.mark.slow
def test_pairs_change_is_the_truth_ratio(tmp_path: Path) -> None:
    from lab.synth.pairs import PAIRS_COLUMNS, generate_pairs

    out = tmp_path / "pairs"
    summary = generate_pairs(
        out, pairs=1, seed=3, heads=(2,), size="small", p_other_vendor=1.0, progress=False
    )
    with summary.pairs_csv.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == PAIRS_COLUMNS
        [pair] = list(reader)
    by_case = {r["case_id"]: r for r in _truth(out)}
    base, fu = by_case[pair["baseline_case"]], by_case[pair["followup_case"]]
    ratio = fu["volume_cm3"] / base["volume_cm3"]
    assert float(pair["true_change_percent"]) == pytest.approx(100 * (ratio - 1), abs=0.05)
    assert -5.0 - 1.0 < float(pair["true_change_percent"]) < 60.0 + 1.0
    assert pair["same_vendor"] == "0" and fu["vendor"] != base["vendor"]
    assert base["head"] == fu["head"] == int(pair["head"]) == 2
    assert base["patient_id"] == fu["patient_id"] and base["study_uid"] != fu["study_uid"]
    assert fu["study_date"] > base["study_date"]
    assert base["location"] == fu["location"]
    ds = pydicom.dcmread(next((out / pair["followup_case"]).rglob("*.dcm")))
    assert str(ds.PatientName) == f"SYNTH^{pair['baseline_case']}"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--heads", "1-x"], "not a head index or range"),
        (["--heads", "4-1"], "ranges run upwards"),
        (["--volume-range", "5"], "not LOW,HIGH"),
        (["--volume-range", "5,1"], "0 < LOW <= HIGH"),
        (["--tumour-free", "2"], "between 0 and 1"),
        (["--tumour-free", "abc"], "not a number"),
        (["--pairs", "0"], "at least 1"),
    ],
    ids=[
        "heads-word",
        "heads-backwards",
        "range-one",
        "range-backwards",
        "free-big",
        "free-word",
        "pairs-0",
    ],
)
def test_cli_rejects_bad_flags(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth", str(tmp_path / "x"), *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--longitudinal", "--heads", "1"], "does not combine with --heads"),
        (["--longitudinal", "--pairs", "2"], "does not combine with --pairs"),
        (["--pairs", "2", "--tumour-free", "0.2"], "drop --tumour-free"),
    ],
    ids=["longitudinal-heads", "longitudinal-pairs", "pairs-tumour-free"],
)
def test_cli_rejects_bad_combinations(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["synth", str(tmp_path / "x"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_cli_parses_heads_and_ranges() -> None:
    from daemon.cli import build_parser

    args = build_parser().parse_args(
        ["synth", "out", "--heads", "0,2-4", "--volume-range", "0.5,150", "--tumour-free", "0.2"]
    )
    assert args.heads == (0, 2, 3, 4)
    assert args.volume_range == (0.5, 150.0) and args.tumour_free == 0.2
