"""The bundled segmentation on heads it was never trained on (issue 17).

Each case is rendered by the realistic generator on a *distinct head* that
the network's label maps never used (training heads: ``TRAINING_HEADS``),
so these are small held-out checks of what bench/segmentation measures on
~100 studies: a small tumour beside the T1-bright orbital fat is found and
the fat is not; a head without a tumour gets no lesion; the SR of that
abstention says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ai_core.segmentation import STATUS_NOT_ASSESSABLE, STATUS_OK
from ai_core.segmentation.unet import UNetBackend
from lab.segmentation.holdout import Case, dice, load_case
from lab.segmentation.labelmaps import TRAINING_HEADS
from lab.synth.anatomy import Label

pytestmark = pytest.mark.slow

# seed 41, case index 2 of these options: a 1.6 cm3 skull-base meningioma on the
# planum, its dural attachment 20 mm from the centre of the left orbital fat
ORBIT_CASE = (41, 2, 12)
TUMOUR_FREE_CASE = (43, 0, 14)


def _render(tmp: Path, seed: int, index: int, head: int, **options: object) -> tuple[Case, dict]:
    from lab.synth.output import write_mask
    from lab.synth.plan import CohortOptions, plan_case
    from lab.synth.profiles import PROFILES
    from lab.synth.render import render_case

    assert head not in TRAINING_HEADS
    opts = CohortOptions(heads=(head,), t1c_only=True, **options)  # type: ignore[arg-type]
    plan = plan_case(seed, index, PROFILES["internal"], "full", opts)
    rendered = render_case(plan, tmp)
    (tmp / "masks").mkdir(exist_ok=True)
    write_mask(tmp / "masks" / f"{plan.case_id}.nii.gz", rendered)
    row = {"case_id": plan.case_id, "series_number": str(rendered.record["series_number"])}
    return load_case(tmp, row), rendered.record


@pytest.fixture(scope="module")
def backend() -> UNetBackend:
    return UNetBackend(device="cpu")


def test_small_tumour_beside_the_orbital_fat_is_found_and_the_fat_is_not(
    tmp_path: Path, backend: UNetBackend
) -> None:
    seed, index, head = ORBIT_CASE
    case, record = _render(tmp_path, seed, index, head, volume_range=(1.5, 3.0))
    assert record["location"] == "skull_base" and record["volume_cm3"] < 3.0
    result = backend.segment(case.image, case.spacing, direction=case.direction)
    assert result.status == STATUS_OK, result.reason
    assert dice(result.mask_zyx, case.mask) > 0.7
    # nothing reported in the orbits: the bright fat below the anterior skull base
    assert not np.any(result.mask_zyx & ~_near(case.mask, 3))


def _near(mask: np.ndarray, voxels: int) -> np.ndarray:
    from scipy import ndimage as ndi

    return ndi.binary_dilation(mask > 0, iterations=voxels)


@pytest.fixture(scope="module")
def tumour_free(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Case, dict]:
    seed, index, head = TUMOUR_FREE_CASE
    folder = tmp_path_factory.mktemp("tumour-free")
    case, record = _render(folder, seed, index, head, tumour_free_fraction=1.0)
    return folder, case, record


def test_a_head_without_a_tumour_gets_no_lesion(
    tumour_free: tuple[Path, Case, dict], backend: UNetBackend
) -> None:
    _, case, record = tumour_free
    assert record["has_tumour"] is False and not case.mask.any()
    result = backend.segment(case.image, case.spacing, direction=case.direction)
    assert result.status == STATUS_NOT_ASSESSABLE
    assert not result.mask_zyx.any()
    assert result.reason.startswith(("no meningioma found", "not assessable"))
    assert all(c["chosen"] is False for c in result.candidates)


def test_the_sr_of_the_abstention_says_why(
    tumour_free: tuple[Path, Case, dict], tmp_path: Path
) -> None:
    import contextlib
    import io
    import json

    import pydicom
    from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

    from daemon.cli import main

    folder, case, _ = tumour_free
    with contextlib.redirect_stdout(io.StringIO()):
        main(["process", str(folder / case.case_id), "--out", str(tmp_path), "--no-progress"])
    result = json.loads((tmp_path / "summary.json").read_text())["series"][0]["result"]
    reason = result["analysis"]["reason"]
    assert result["analysis"]["status"] == "not_assessable"
    assert reason.startswith(("no meningioma found", "not assessable"))
    objects = [pydicom.dcmread(p) for p in sorted(tmp_path.rglob("*.dcm"))]
    classes = {str(ds.SOPClassUID) for ds in objects}
    assert SegmentationStorage not in classes and Comprehensive3DSRStorage in classes
    (sr,) = [ds for ds in objects if ds.SOPClassUID == Comprehensive3DSRStorage]
    assert reason in _texts(sr)


def _texts(item: Any) -> list[str]:
    out = [str(item.TextValue)] if "TextValue" in item else []
    for child in item.get("ContentSequence", []):
        out += _texts(child)
    return out


def test_the_training_label_maps_hold_the_decoys_and_the_intracranial_space() -> None:
    from lab.segmentation.labelmaps import INTRACRANIAL, TUMOUR_CODES, build_label_map

    lm = build_label_map(np.random.default_rng(3), head=2, volume_range_cm3=(1.0, 2.0))
    present = set(np.unique(lm.labels).tolist())
    for code in (Label.ORBIT_FAT, Label.PITUITARY, Label.CHOROID, Label.SINUS, Label.MARROW):
        assert code in present, code
    tumour = lm.lookup(TUMOUR_CODES)[lm.labels]
    intracranial = lm.lookup(INTRACRANIAL)[lm.labels]
    assert tumour.any() and np.all(intracranial[tumour])
    assert not np.any(intracranial[lm.labels == Label.ORBIT_FAT])
    assert 0.8 < lm.tumour_cm3 < 2.5
