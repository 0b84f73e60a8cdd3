"""Interoperability: real C-STORE senders against a real ``ki67node serve``.

One node for the module, kept light: ``pipeline.workers = 0`` (queue only, the
documented setting for a node without local workers) and series of four
slices, which the series filter rejects anyway; nothing is analysed. Each case
sends a fresh series per encoding (new UIDs, its own calling AE title), then
reads the node's database read-only and its spool:

- every sent instance is answered Success and has exactly one instance row
  (rows of the case's calling AE = instances sent), none is quarantined, no
  temp file is left, published files ⇔ rows;
- the stored data set (after preamble and group 0002) is byte for byte the
  sent one when the transfer syntax went through unchanged. Where the *sender*
  changes it (a decision of the sender, not of the node), the stored syntax is
  lossless and the decoded data set is identical: every element equal, pixel
  arrays equal.

The cases and why each expects what it does:

================  ==========================================  ===========================
case              sender                                      encodings: expectation
================  ==========================================  ===========================
storescu          DCMTK ``storescu`` defaults (one context    explicit, implicit: kept.
                  per uncompressed syntax)                    No compressed file: the
                                                              default proposes only
                                                              uncompressed syntaxes and
                                                              DCMTK's storescu has no
                                                              codec to decompress one.
storescu-xs       ``-xs``: a JPEG Lossless SV1 context and    explicit, JPEG lossless:
                  one with the three uncompressed syntaxes    kept. implicit: may be
                                                              transcoded (no context
                                                              offers implicit alone; the
                                                              node takes Explicit VR LE,
                                                              the first lossless one, and
                                                              storescu converts)
storescu-IR       ``+IR 4``: storescu invents patient, study, explicit, implicit: kept,
                  series and SOP Instance UIDs, numbers       content equal but for the
                                                              invented attributes
storescu-small-   ``-pdu 4096 --max-send-pdu 4096 -xv``:      explicit, JPEG 2000: kept
pdu               every data set (64×64×2 bytes of pixels,    (encapsulated fragments
                  or a J2K codestream) split over PDUs of     split over PDUs); implicit:
                  4 KiB                                       may be transcoded (as -xs)
pynetdicom        pynetdicom's storescu app, ``-cx`` (each    explicit, implicit, JPEG
                  file's own syntax proposed; its default     2000: kept
                  offers no compressed one)
orthanc           Orthanc's C-STORE SCU (REST                 explicit, implicit, JPEG
                  ``/modalities/<name>/store``)               2000: kept
================  ==========================================  ===========================

And one re-send: the same instances first from storescu (calling AE A,
implicit VR), then from Orthanc (calling AE B; one in explicit VR, one in JPEG
2000 lossless, the rest in implicit VR again): kept once (the first copy),
nothing quarantined, every send answered Success.
"""

from __future__ import annotations

import copy
import enum
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from tests.conftest import require_tool
from tests.daemon_process import (
    DaemonProcess,
    clean_env,
    dataset_bytes,
    published_files,
    query,
    store_successes,
    temp_files,
)
from tests.factories import make_mr_series, write_series
from tests.orthanc import Orthanc, orthanc_fixture

pytestmark = pytest.mark.slow

orthanc = orthanc_fixture()

SEND_TIMEOUT_SECONDS = 60
NETWORK_TIMEOUT_SECONDS = "10"
N_SLICES = 4
ROWS = COLS = 64
ORTHANC_PEER = "ki67node"
# What a sender may store when it changes the syntax: never anything lossy.
LOSSLESS = frozenset(
    {
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,  # retired, still lossless
        JPEGLosslessSV1,
        JPEGLossless,
        JPEGLSLossless,
        JPEG2000Lossless,
        HTJ2KLossless,
        HTJ2KLosslessRPCL,
        RLELossless,
    }
)
# The attributes storescu +II/+IR/+IS/+IP rewrites (DCMTK storescu.cc,
# replaceSOPInstanceInformation); everything else must arrive unchanged.
DCMTK_INVENTED = (
    "PatientName",
    "PatientID",
    "StudyInstanceUID",
    "StudyID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SOPInstanceUID",
    "InstanceNumber",
)


# -- the files sent ---------------------------------------------------------------------
class Encoding(enum.Enum):
    """How a Part 10 file is written, and its transfer syntax."""

    EXPLICIT = ExplicitVRLittleEndian
    IMPLICIT = ImplicitVRLittleEndian
    J2K = JPEG2000Lossless  # pydicom's encoder (pylibjpeg-openjpeg, a dependency)
    JPEG_LOSSLESS = JPEGLosslessSV1  # DCMTK's dcmcjpeg: pydicom has no JPEG lossless encoder


class Expect(enum.Enum):
    KEPT = "the sender keeps the syntax: stored data set byte-identical"
    MAY_TRANSCODE = "byte-identical if the syntax is kept, else lossless and decoded-identical"


def write_encoded(datasets: list[Dataset], encoding: Encoding, folder: Path) -> list[Path]:
    """``datasets`` (changed in place) as Part 10 files in ``encoding``."""
    if encoding is Encoding.IMPLICIT:
        for ds in datasets:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    elif encoding is Encoding.J2K:
        for ds in datasets:
            ds.compress(JPEG2000Lossless, generate_instance_uid=False)
    paths = write_series(datasets, folder)
    if encoding is Encoding.JPEG_LOSSLESS:
        dcmcjpeg = require_tool("dcmcjpeg")
        for path in paths:
            packed = path.with_suffix(".jpeg")
            subprocess.run(
                [dcmcjpeg, str(path), str(packed)],
                check=True,
                capture_output=True,
                timeout=SEND_TIMEOUT_SECONDS,
            )
            packed.replace(path)
    for path in paths:
        written = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
        assert written == encoding.value, f"{path} written as {UID(written).name}"
    return paths


@dataclass(frozen=True)
class Sent:
    """One file sent, and what the node must have made of it."""

    path: Path
    encoding: Encoding
    expect: Expect

    @property
    def sop_instance_uid(self) -> str:
        return str(pydicom.dcmread(self.path, stop_before_pixels=True).SOPInstanceUID)


def prepare(folder: Path, expectations: dict[Encoding, Expect]) -> list[Sent]:
    """A fresh study: one series of ``N_SLICES`` per encoding, told apart by its description."""
    study_uid = pydicom.uid.generate_uid()
    sent: list[Sent] = []
    for number, (encoding, expect) in enumerate(expectations.items(), start=1):
        datasets = make_mr_series(
            n_slices=N_SLICES,
            rows=ROWS,
            cols=COLS,
            study_uid=study_uid,
            series_number=number,
            overrides={"SeriesDescription": f"interop {encoding.name.lower()}"},
        )
        paths = write_encoded(datasets, encoding, folder / encoding.name.lower())
        sent += [Sent(path, encoding, expect) for path in paths]
    return sent


# -- the senders ------------------------------------------------------------------------
Sender = Callable[[pytest.FixtureRequest, DaemonProcess, list[Path], str], set[Path]]


def run_sender(cmd: list[str], what: str) -> str:
    """Run a storescu with ``-v``; its log. It must exit 0."""
    done = subprocess.run(
        cmd, capture_output=True, text=True, env=clean_env(), timeout=SEND_TIMEOUT_SECONDS
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{what} exited {done.returncode}:\n{output[-3000:]}"
    return output


def dcmtk_storescu(*options: str) -> Sender:
    def send(
        _request: pytest.FixtureRequest, node: DaemonProcess, files: list[Path], aet: str
    ) -> set[Path]:
        cmd = [require_tool("storescu"), "-v", *options, "-aet", aet, "-aec", node.ae_title]
        cmd += ["-to", NETWORK_TIMEOUT_SECONDS, "-ta", NETWORK_TIMEOUT_SECONDS]
        cmd += ["-td", NETWORK_TIMEOUT_SECONDS, "127.0.0.1", str(node.dicom_port)]
        output = run_sender([*cmd, *map(str, files)], f"storescu {' '.join(options)}")
        return {Path(f) for f in store_successes(output)}

    return send


def pynetdicom_storescu(
    _request: pytest.FixtureRequest, node: DaemonProcess, files: list[Path], aet: str
) -> set[Path]:
    # -cx: propose each file's own syntax; the default proposes only uncompressed ones
    cmd = [sys.executable, "-m", "pynetdicom", "storescu", "-v", "-cx"]
    cmd += ["-aet", aet, "-aec", node.ae_title]
    for option in ("-ta", "-td", "-tn"):
        cmd += [option, NETWORK_TIMEOUT_SECONDS]
    cmd += ["127.0.0.1", str(node.dicom_port), *map(str, files)]
    output = run_sender(cmd, "pynetdicom storescu")  # exits 0 even after a failed store
    return {Path(f) for f in store_successes(output)}


def orthanc_store(
    request: pytest.FixtureRequest, node: DaemonProcess, files: list[Path], aet: str
) -> set[Path]:
    """Upload the files to Orthanc by REST, then Orthanc C-STOREs them to the node."""
    pacs: Orthanc = request.getfixturevalue("orthanc")
    ids = [pacs.upload(path) for path in files]
    pacs.add_modality(ORTHANC_PEER, node.ae_title, "127.0.0.1", node.dicom_port)
    answer = pacs.store_to(ORTHANC_PEER, ids, local_aet=aet)
    assert answer["FailedInstancesCount"] == 0, f"{answer}\n{pacs.log_tail()}"
    assert answer["InstancesCount"] == len(files), answer
    return set(files)  # the job answers for all of them at once


# -- what the node holds ------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    sop_instance_uid: str
    path: Path
    transfer_syntax: str
    calling_aet: str


def rows_where(node: DaemonProcess, condition: str, params: tuple[Any, ...]) -> list[Row]:
    found = query(
        node.data_dir,
        "SELECT sop_instance_uid, path, transfer_syntax_uid, calling_aet FROM instances "
        f"WHERE {condition}",
        params,
    )
    return [Row(uid, node.data_dir / "spool" / rel, ts, aet) for uid, rel, ts, aet in found]


def quarantined(node: DaemonProcess, condition: str, params: tuple[Any, ...]) -> int:
    return int(
        query(node.data_dir, f"SELECT count(*) FROM quarantine WHERE {condition}", params)[0][0]
    )


def content_differences(sent: Path, stored: Path, ignore: tuple[str, ...] = ()) -> list[str]:
    """Elements (and pixels) that differ between two files' decoded data sets."""
    a, b = pydicom.dcmread(sent), pydicom.dcmread(stored)
    skip = {pydicom.datadict.tag_for_keyword(k) for k in ignore} | {0x7FE00010}
    out = []
    for tag in sorted((set(a.keys()) | set(b.keys())) - skip):
        if tag not in a or tag not in b:
            out.append(f"{tag} only in the {'sent' if tag in a else 'stored'} file")
        elif (a[tag].VR, a[tag].value) != (b[tag].VR, b[tag].value):
            out.append(f"{tag} {a[tag].keyword}: {a[tag].value!r:.60} → {b[tag].value!r:.60}")
    if not np.array_equal(a.pixel_array, b.pixel_array):
        out.append("pixel arrays differ")
    return out


def assert_stored_as_sent(item: Sent, row: Row) -> None:
    """Byte-identical after the meta group when the syntax is kept, else lossless and equal."""
    meta = pydicom.dcmread(row.path, stop_before_pixels=True).file_meta
    assert meta.TransferSyntaxUID == row.transfer_syntax, f"{row.path}: meta ≠ row"
    assert meta.MediaStorageSOPInstanceUID == row.sop_instance_uid, f"{row.path}: meta ≠ row"
    sent_syntax = item.encoding.value
    what = f"{item.path.parent.name}/{item.path.name} ({UID(sent_syntax).name})"
    if row.transfer_syntax == sent_syntax:
        assert dataset_bytes(row.path) == dataset_bytes(item.path), f"{what}: bytes differ"
        return
    assert item.expect is Expect.MAY_TRANSCODE, (
        f"{what} stored as {UID(row.transfer_syntax).name}: the sender offered its own syntax"
    )
    assert row.transfer_syntax in LOSSLESS, f"{what} stored lossy ({row.transfer_syntax})"
    assert content_differences(item.path, row.path) == [], f"{what}: content changed"


def assert_node_consistent(node: DaemonProcess) -> None:
    """FAULTS.md after every case: alive, answering, no temp file, rows ⇔ published files."""
    assert node.running(), node.log_tail()
    assert node.echo(), "C-ECHO failed after the case"
    assert temp_files(node.data_dir) == []
    n_rows = int(query(node.data_dir, "SELECT count(*) FROM instances")[0][0])
    assert len(published_files(node.data_dir)) == n_rows, "spool files ≠ instance rows"


# -- the node -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(
        tmp_path_factory.mktemp("interop-node"),
        settings={
            "pipeline": {"workers": 0},  # queue only: nothing received is analysed here
            "scheduler": {"enabled": False},
        },
    )
    try:
        daemon.start()
        yield daemon
        daemon.stop()
    finally:
        daemon.cleanup()


# -- the cases ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    send: Sender
    aet: str  # the calling AE title: its rows are the case's rows
    expectations: dict[Encoding, Expect]
    invents: tuple[str, ...] = ()  # attributes the sender replaces (then: content, not UIDs)


KEPT_ALL = {e: Expect.KEPT for e in (Encoding.EXPLICIT, Encoding.IMPLICIT, Encoding.J2K)}
CASES = [
    pytest.param(
        Case(
            dcmtk_storescu(),
            "DCMTK",
            {Encoding.EXPLICIT: Expect.KEPT, Encoding.IMPLICIT: Expect.KEPT},
        ),
        id="storescu",
        marks=pytest.mark.dcmtk,
    ),
    pytest.param(
        Case(
            dcmtk_storescu("-xs"),
            "DCMTK-XS",
            {
                Encoding.EXPLICIT: Expect.KEPT,
                Encoding.IMPLICIT: Expect.MAY_TRANSCODE,
                Encoding.JPEG_LOSSLESS: Expect.KEPT,
            },
        ),
        id="storescu-xs",
        marks=pytest.mark.dcmtk,
    ),
    pytest.param(
        Case(
            dcmtk_storescu("+IR", str(N_SLICES)),
            "DCMTK-IR",
            {Encoding.EXPLICIT: Expect.KEPT, Encoding.IMPLICIT: Expect.KEPT},
            invents=DCMTK_INVENTED,
        ),
        id="storescu-IR",
        marks=pytest.mark.dcmtk,
    ),
    pytest.param(
        Case(
            dcmtk_storescu("-pdu", "4096", "--max-send-pdu", "4096", "-xv"),
            "DCMTK-PDU",
            {
                Encoding.EXPLICIT: Expect.KEPT,
                Encoding.IMPLICIT: Expect.MAY_TRANSCODE,
                Encoding.J2K: Expect.KEPT,
            },
        ),
        id="storescu-small-pdu",
        marks=pytest.mark.dcmtk,
    ),
    pytest.param(Case(pynetdicom_storescu, "PYNETDICOM", KEPT_ALL), id="pynetdicom"),
    pytest.param(
        Case(orthanc_store, "ORTHANC-SCU", KEPT_ALL), id="orthanc", marks=pytest.mark.orthanc
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_every_instance_stored_once_and_as_sent(
    case: Case, node: DaemonProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    sent = prepare(tmp_path, case.expectations)
    answered = case.send(request, node, [s.path for s in sent], case.aet)
    missing = sorted(str(s.path) for s in sent if s.path not in answered)
    assert missing == [], f"not answered Success: {missing}"

    rows = rows_where(node, "calling_aet = ?", (case.aet,))
    assert len(rows) == len(sent), f"{len(sent)} sent, {len(rows)} instance rows"
    assert quarantined(node, "calling_aet = ?", (case.aet,)) == 0
    if case.invents:
        pairs = match_by_content(sent, rows)
        for item, row in pairs:
            assert row.transfer_syntax == item.encoding.value, f"{item.path}: syntax changed"
            assert row.sop_instance_uid != item.sop_instance_uid, "storescu did not invent UIDs"
            assert content_differences(item.path, row.path, case.invents) == [], item.path
    else:
        by_uid = {row.sop_instance_uid: row for row in rows}
        for item in sent:
            assert item.sop_instance_uid in by_uid, f"{item.path}: no instance row"
            assert_stored_as_sent(item, by_uid[item.sop_instance_uid])
    assert_node_consistent(node)


def match_by_content(sent: list[Sent], rows: list[Row]) -> list[tuple[Sent, Row]]:
    """Pair each sent file with its stored copy when the sender replaced the UIDs.

    The key is what no sender rewrites: the series description (one per encoding
    here) and the slice position. Each key must be sent once and stored once.
    """

    def key(path: Path) -> tuple[str, tuple[float, ...]]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return str(ds.SeriesDescription), tuple(float(v) for v in ds.ImagePositionPatient)

    sent_by_key = {key(item.path): item for item in sent}
    assert len(sent_by_key) == len(sent), "test data: two sent files share a key"
    stored_by_key = {key(row.path): row for row in rows}
    assert sorted(stored_by_key) == sorted(sent_by_key), "stored ≠ sent (by description, position)"
    return [(sent_by_key[k], stored_by_key[k]) for k in sent_by_key]


# -- the same instances twice: another calling AE, partly another transfer syntax ----------
@pytest.mark.dcmtk
@pytest.mark.orthanc
def test_identical_resend_from_another_ae_and_syntax_is_kept_once(
    node: DaemonProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("orthanc")  # skips (or fails) before anything is sent without it
    datasets = make_mr_series(
        n_slices=N_SLICES,
        rows=ROWS,
        cols=COLS,
        overrides={"SeriesDescription": "interop resend"},
    )
    first = write_encoded(copy.deepcopy(datasets), Encoding.IMPLICIT, tmp_path / "first")
    # the second time: one instance each in explicit VR and JPEG 2000 lossless (other
    # syntaxes, same data set), the rest in implicit VR as before (only the AE differs)
    second = write_encoded(copy.deepcopy(datasets[:1]), Encoding.EXPLICIT, tmp_path / "2-expl")
    second += write_encoded(copy.deepcopy(datasets[1:2]), Encoding.J2K, tmp_path / "2-j2k")
    second += write_encoded(copy.deepcopy(datasets[2:]), Encoding.IMPLICIT, tmp_path / "2-impl")
    uids = tuple(str(ds.SOPInstanceUID) for ds in datasets)
    in_uids = f"sop_instance_uid IN ({', '.join('?' * len(uids))})"

    answered = dcmtk_storescu()(request, node, first, "RESEND-A")
    assert answered == set(first), "storescu: not every instance answered Success"
    answered = orthanc_store(request, node, second, "RESEND-B")
    assert answered == set(second)

    rows = rows_where(node, in_uids, uids)
    assert sorted(r.sop_instance_uid for r in rows) == sorted(uids), "not stored exactly once"
    assert {r.calling_aet for r in rows} == {"RESEND-A"}, "the first copy must be the one kept"
    by_uid = {row.sop_instance_uid: row for row in rows}
    for uid, path in zip(uids, first, strict=True):  # write_series keeps the order
        assert_stored_as_sent(Sent(path, Encoding.IMPLICIT, Expect.KEPT), by_uid[uid])
    assert quarantined(node, in_uids, uids) == 0, "an identical re-send was quarantined"
    assert_node_consistent(node)
