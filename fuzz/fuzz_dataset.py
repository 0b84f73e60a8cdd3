"""Fuzz target: the structure check of a received Part 10 file and the intake
header read from it (:mod:`daemon.intake.dataset_check`, :mod:`daemon.intake.intake_header`).

The acceptor writes the File Meta group itself
(:func:`daemon.dicom.file_meta.file_meta`); only the data set after it comes
from the peer. So the first input byte picks a mode (modulo 4) and the rest is:

* 0 ``explicit``: the data set after a valid meta header for Explicit VR Little Endian;
* 1 ``implicit``: the same for Implicit VR Little Endian;
* 2 ``encapsulated``: the same for RLE Lossless (explicit VR, pixel data in fragments);
* 3 ``file``: a whole file, preamble and meta included (a spool file read at start-up).

The file is written to one reused temp file (under ``$TMPDIR``, else /dev/shm), then:

* :func:`scan_file` returns a :class:`ScanResult`: ``problem`` None or text,
  ``values`` only wanted tags, none longer than ``MAX_WANTED_VALUE``;
* :func:`read_intake_header` returns an :class:`IntakeHeader` within its
  field limits for a complete file, else raises :class:`InvalidInstanceError`.

Nothing else may come out. On the inputs ``engine.measured`` picks (one in
eight; every input when the tests replay the corpus), also: the problem is
the same whichever tags are wanted, :func:`check_complete` with the file's
transfer syntax finds the same problem, and memory stays within a fixed slack
(file buffer, wanted values), never a length the file claims (tracemalloc).
"""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
from pathlib import Path

from daemon.dicom.file_meta import file_meta
from daemon.errors import InvalidInstanceError
from daemon.intake.dataset_check import (
    MAX_WANTED_VALUE,
    ScanResult,
    check_complete,
    scan_file,
)
from daemon.intake.intake_header import IntakeHeader, read_intake_header
from fuzz.engine import allocation_peak, fuzz_main, measured, require

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SOP_INSTANCE = "1.2.826.0.1.3680043.10.1234.1"
SOURCE_AE = "FUZZSCU"
MODES = (
    ("explicit", "1.2.840.10008.1.2.1"),
    ("implicit", "1.2.840.10008.1.2"),
    ("encapsulated", "1.2.840.10008.1.2.5"),
    ("file", ""),
)
MODE_NUMBER = {name: number for number, (name, _) in enumerate(MODES)}
_META = {
    syntax: file_meta(MR_IMAGE_STORAGE, SOP_INSTANCE, syntax, SOURCE_AE) for _, syntax in MODES
}
TRANSFER_SYNTAX_TAG = 0x00020010
# What intake wants and more: identifiers, text in the file's character set,
# and Pixel Data (read when short).
WANTED = frozenset(
    {0x00080005, 0x00080016, 0x00080018, 0x00100010, 0x0020000D, 0x0020000E, 0x7FE00010}
)
MAX_TRANSFER_SYNTAX = 64
ALLOCATION_BOUND_BYTES = 512 * 1024  # file buffer (64 KiB), wanted values, decoded text
# Field limits of IntakeHeader.from_scan (the database columns they go to).
TEXT_LIMITS = {
    "modality": 16,
    "series_description": 64,
    "patient_id": 64,
    "patient_name": 324,
    "study_date": 8,
    "accession_number": 16,
}


def seed(mode: str, payload: bytes) -> bytes:
    """The fuzzer input for ``payload`` (a data set, or a whole file for mode ``file``)."""
    return bytes([MODE_NUMBER[mode]]) + payload


def file_bytes(data: bytes) -> tuple[bytes, str]:
    """The Part 10 file an input stands for, and the transfer syntax its meta names."""
    if not data:
        return b"", ""
    _, syntax = MODES[data[0] % len(MODES)]
    if not syntax:
        return data[1:], ""
    return _META[syntax] + data[1:], syntax


def _scratch_dir() -> str | None:
    """``$TMPDIR`` if set, else /dev/shm where there is one (a disk file costs a factor 3)."""
    if os.environ.get("TMPDIR") or not os.access("/dev/shm", os.W_OK):
        return None
    return "/dev/shm"


class _ScratchFile:
    """One temp file reused for every input of the process."""

    path: Path | None = None

    @classmethod
    def write(cls, data: bytes) -> Path:
        if cls.path is None:
            fd, name = tempfile.mkstemp(prefix="ki67node-fuzz-", suffix=".dcm", dir=_scratch_dir())
            os.close(fd)
            cls.path = Path(name)
            atexit.register(cls.path.unlink, missing_ok=True)
        cls.path.write_bytes(data)
        return cls.path


def check_file(path: Path, syntax: str, *, cross_check: bool) -> None:
    """The contract on one file (``syntax``: what its meta names, "" unknown).

    ``cross_check`` adds the two consistency checks that walk the file again.
    """
    full = scan_file(path, WANTED)
    _check_scan(full)
    if syntax:
        require(full.transfer_syntax == syntax, f"transfer syntax {full.transfer_syntax!r}")
    if cross_check:
        bare = scan_file(path)
        require(bare.problem == full.problem, f"problem {bare.problem!r} ≠ {full.problem!r}")
        again = check_complete(path, full.transfer_syntax)
        require(again == full.problem, f"check_complete {again!r} ≠ scan {full.problem!r}")
    try:
        header = read_intake_header(path)
    except InvalidInstanceError as exc:
        require(full.problem is not None or "parsed" in str(exc), f"rejected a good file: {exc}")
        return
    require(full.problem is None, f"an incomplete file ({full.problem}) was read")
    _check_header(header)


def _check_scan(result: ScanResult) -> None:
    require(isinstance(result, ScanResult), f"scan_file returned {type(result).__name__}")
    require(result.problem is None or bool(result.problem), "empty problem text")
    require(isinstance(result.transfer_syntax, str), "transfer syntax is not text")
    for tag, value in result.values.items():
        if tag == TRANSFER_SYNTAX_TAG:
            require(len(value) <= MAX_TRANSFER_SYNTAX, "transfer syntax value too long")
        else:
            require(tag in WANTED, f"unwanted tag {tag:08X} kept")
            require(len(value) <= MAX_WANTED_VALUE, f"{tag:08X}: {len(value)} bytes kept")


def _check_header(header: IntakeHeader) -> None:
    for name, limit in TEXT_LIMITS.items():
        value = getattr(header, name)
        require(value is None or (isinstance(value, str) and len(value) <= limit), name)
    for name in ("instance_number", "images_in_acquisition", "number_of_frames"):
        value = getattr(header, name)
        require(value is None or isinstance(value, int), f"{name} = {value!r}")


def check(data: bytes, *, measure: bool | None = None) -> None:
    """The whole contract for one input; raises on a finding.

    ``measure`` (default: :func:`measured`) also bounds what the check allocates
    and adds the cross-checks.
    """
    content, syntax = file_bytes(data)
    path = _ScratchFile.write(content)
    if not (measured(data) if measure is None else measure):
        check_file(path, syntax, cross_check=False)
        return
    peak = allocation_peak(lambda _: check_file(path, syntax, cross_check=True), data)
    require(peak <= ALLOCATION_BOUND_BYTES, f"checking {len(content)} bytes allocated {peak}")


if __name__ == "__main__":
    fuzz_main(
        check, ("daemon.intake.dataset_check", "daemon.intake.intake_header", "pydicom.charset")
    )
    sys.exit(0)
