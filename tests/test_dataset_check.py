from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from daemon.intake.dataset_check import MAX_DEPTH, check_complete
from tests.factories import make_mr_series


def _write(ds: Dataset, path: Path, syntax: str) -> Path:
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True, implicit_vr=syntax == ImplicitVRLittleEndian)
    return path


def _nested(depth: int, undefined: bool) -> Dataset:
    ds = make_mr_series(n_slices=1)[0]
    inner = Dataset()
    inner.CodeValue = "X"
    for _ in range(depth):
        inner.is_undefined_length_sequence_item = undefined
        outer = Dataset()
        outer.ReferencedSeriesSequence = Sequence([inner])
        outer["ReferencedSeriesSequence"].is_undefined_length = undefined
        inner = outer
    ds.update(inner)
    return ds


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True], ids=["defined", "undefined"])
def test_complete_files_pass(tmp_path: Path, syntax: str, undefined: bool) -> None:
    path = _write(_nested(3, undefined), tmp_path / "a.dcm", syntax)
    assert check_complete(path, syntax) is None


def test_encapsulated_pixel_data_passes(tmp_path: Path) -> None:
    ds = make_mr_series(n_slices=1)[0]
    ds.compress(RLELossless)
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert check_complete(path, RLELossless) is None
    data = path.read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-8])  # sequence delimiter lost
    assert check_complete(tmp_path / "cut.dcm", RLELossless) is not None


@pytest.mark.parametrize("cut", [1, 100, 5000], ids=lambda n: f"cut{n}")
def test_truncated_files_fail(tmp_path: Path, cut: int) -> None:
    path = _write(make_mr_series(n_slices=1)[0], tmp_path / "a.dcm", ExplicitVRLittleEndian)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    problem = check_complete(path, ExplicitVRLittleEndian) or ""
    if len(data) - cut < 132:  # not even the preamble and DICM left
        assert problem == "no DICM prefix"
    else:
        assert "past the end" in problem or "header" in problem, problem


def test_too_deep_nesting_fails(tmp_path: Path) -> None:
    path = _write(_nested(MAX_DEPTH + 5, True), tmp_path / "deep.dcm", ExplicitVRLittleEndian)
    assert "nested deeper" in (check_complete(path, ExplicitVRLittleEndian) or "")


def test_not_part10(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"\x00" * 200)
    assert check_complete(path, ExplicitVRLittleEndian) == "no DICM prefix"


@pytest.mark.parametrize("size", [0, 10, 131])
def test_file_shorter_than_the_preamble_is_not_part10(tmp_path: Path, size: int) -> None:
    path = tmp_path / "short.dcm"
    path.write_bytes(b"\x00" * size)
    assert check_complete(path, ExplicitVRLittleEndian) == "no DICM prefix"
