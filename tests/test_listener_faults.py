"""FAULTS.md, network-facing sections: every case against a real listener.

Each case checks the DICOM status (or what the socket saw) *and* the state on
disk and in the database, then the invariants: the listener is alive, a later
C-ECHO succeeds, nothing outside data_dir, no temp file, threads, sockets and
memory back to baseline, rows ⇔ published files (``assert_healthy``).
"""

from __future__ import annotations

import copy
import errno
import os
import random
import select
import socket
import sqlite3
import ssl
import struct
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from sqlalchemy import select as sql_select

import daemon.intake.spool
from daemon.db.models import AuditEvent, Instance, QuarantinedInstance, Series, Study
from daemon.dicom.listener import EXTRA_REJECTORS
from tests.conftest import require_tool
from tests.factories import make_mr_series, write_series
from tests.listener_harness import (  # noqa: F401 - fixtures
    ABORT,
    ASSOCIATE_AC,
    ASSOCIATE_RJ,
    HOST,
    MR_STORAGE,
    P_DATA,
    SUCCESS,
    VERIFICATION,
    Context,
    NodeUnderTest,
    PeerClosed,
    RawClient,
    TlsFiles,
    associate_rq,
    dataset_part,
    encode_dataset,
    fixture_make_node,
    fixture_node,
    make_tls_files,
    mr_instance,
    pdata,
    pdu,
    peak_rss,
    scu_echo,
    scu_store,
    store_one,
    wait_for,
)

OUT_OF_RESOURCES = 0xA700
DATASET_MISMATCH = 0xA900
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
RJ_SOURCE_USER, RJ_SOURCE_PRESENTATION = 1, 3
RJ_CALLING_AE_NOT_RECOGNIZED, RJ_LOCAL_LIMIT = 3, 2
MEMORY_BOUND_KIB = 32 * 1024
PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"

# The node's own pydicom warns about the invalid values these cases send on purpose.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
    pytest.mark.filterwarnings("ignore:The value length .* exceeds the maximum length"),
]


def is_cannot_understand(status: int) -> bool:
    """The 0xC000 failure class of the Storage service (PS3.4 B.2.3)."""
    return 0xC000 <= status <= 0xCFFF


def is_failure(status: int) -> bool:
    return status != SUCCESS and not 0xB000 <= status <= 0xBFFF


# =============================================================================
# Paths and identifiers
# =============================================================================
BAD_UIDS = [
    b"..",
    b"1.2/3.4",
    b"/etc/passwd",
    b"../../../../tmp/ki67node-escape",
    b"1.2\\3.4",
    b"1.2\x003.4",
    b"1.2.abc.4",
    b"1..2",
    b"1.2.3\xe9",
    b"1." + b"2" * 63,
]
BAD_UID_IDS = [
    "dotdot",
    "slash",
    "absolute",
    "traversal",
    "backslash",
    "nul",
    "letters",
    "empty-component",
    "non-ascii",
    "65-chars",
]
UID_TAGS = {
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
}


def with_raw_uid(ds: Dataset, keyword: str, value: bytes) -> bytes:
    """``ds`` encoded (explicit VR LE) with the raw bytes ``value`` as a UI element."""
    tag = UID_TAGS[keyword]
    marker = "9" * 8
    with pydicom_config.disable_value_validation():
        setattr(ds, keyword, marker)
        raw = encode_dataset(ds)
    header = struct.pack("<HH", tag >> 16, tag & 0xFFFF) + b"UI" + struct.pack("<H", 8)
    at = raw.index(header + marker.encode())
    padded = value + b"\x00" if len(value) % 2 else value
    new_header = header[:6] + struct.pack("<H", len(padded))
    return raw[:at] + new_header + padded + raw[at + 8 + 8 :]


@pytest.mark.parametrize("bad_uid", BAD_UIDS, ids=BAD_UID_IDS)
def test_bad_affected_sop_instance_uid_is_refused(node: NodeUnderTest, bad_uid: bytes) -> None:
    data = with_raw_uid(mr_instance(), "SOPInstanceUID", bad_uid)
    with RawClient(node.port) as client:
        assert client.associate().established
        status = client.c_store(data, MR_STORAGE, bad_uid)
        client.release()
    assert is_cannot_understand(status), hex(status)
    node.assert_nothing_kept()
    assert_no_escape(node)
    node.assert_healthy()


def assert_no_escape(node: NodeUnderTest) -> None:
    """Nothing landed where a path built from a received UID would have put it."""
    assert not (node.spool.root / "passwd").exists()
    for folder in (node.spool.root, *node.spool.root.parents):
        for name in ("ki67node-escape", "tmp/ki67node-escape"):
            assert not (folder / name).exists(), f"written outside the spool: {folder / name}"


@pytest.mark.parametrize(
    "keyword", ["StudyInstanceUID", "SeriesInstanceUID"], ids=["study", "series"]
)
@pytest.mark.parametrize("bad_uid", BAD_UIDS, ids=BAD_UID_IDS)
def test_bad_study_or_series_uid_in_dataset_is_refused(
    node: NodeUnderTest, keyword: str, bad_uid: bytes
) -> None:
    ds = mr_instance()
    status = _store_bytes(node, with_raw_uid(ds, keyword, bad_uid), ds.SOPInstanceUID)
    assert is_cannot_understand(status), hex(status)
    node.assert_nothing_kept()
    assert_no_escape(node)
    with node.engine.connect() as conn:
        assert conn.execute(sql_select(Study)).all() == []
        assert conn.execute(sql_select(Series)).all() == []
    node.assert_healthy()


def _store_bytes(node: NodeUnderTest, data: bytes, sop_instance: str | bytes, **kw: Any) -> int:
    with RawClient(node.port) as client:
        assert client.associate().established
        status = client.c_store(data, MR_STORAGE, sop_instance, **kw)
        client.release()
    return status


@pytest.mark.parametrize(
    ("calling", "called"),
    [
        (b"../../../../etc", b"KI67NODE"),
        (b"a/b\\c/d", b"KI67NODE"),
        (b" " * 16, b"KI67NODE"),
        ("ÄRZTEHAUS".encode("latin-1"), b"KI67NODE"),
        ("病院".encode(), b"KI67NODE"),
        (b"\x00\x01\x1b[2J", b"KI67NODE"),
        (b"$(touch x);`id`", b"KI67NODE"),
        (b"STORESCU", b"../../x"),
    ],
    ids=[
        "dotdot",
        "slashes",
        "spaces-only",
        "latin1",
        "utf8",
        "control-chars",
        "shell",
        "called-ae-path",
    ],
)
def test_odd_ae_titles_never_become_paths(
    node: NodeUnderTest, calling: bytes, called: bytes
) -> None:
    ds = mr_instance()
    with RawClient(node.port) as client:
        negotiation = client.associate(calling_ae=calling, called_ae=called)
        if negotiation.established:
            data = encode_dataset(ds)
            assert client.c_store(data, MR_STORAGE, ds.SOPInstanceUID) == SUCCESS
            client.release()
        else:
            assert negotiation.pdu_type == ASSOCIATE_RJ  # rejecting is allowed too
    if negotiation.established:
        (row,) = node.rows()
        stored = pydicom.dcmread(node.spool.path_of(row.path), stop_before_pixels=True)
        source_ae = str(stored.file_meta.get("SourceApplicationEntityTitle", ""))
        for text in (row.calling_aet or "", source_ae):
            assert len(text) <= 16 and all(0x20 <= ord(c) < 0x7F for c in text), repr(text)
            assert "\\" not in text
    node.assert_healthy()  # includes: every file name is server-made, nothing outside data_dir


@pytest.mark.parametrize(
    "mismatch", ["sop-instance", "sop-class"], ids=["instance-uid-differs", "class-uid-differs"]
)
def test_command_and_dataset_disagree(node: NodeUnderTest, mismatch: str) -> None:
    ds = mr_instance()
    data = encode_dataset(ds)
    if mismatch == "sop-instance":
        status = _store_bytes(node, data, generate_uid())  # valid, but not the dataset's
    else:
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT in the dataset, MR in the command
        status = _store_bytes(node, encode_dataset(ds), ds.SOPInstanceUID)
    assert status == DATASET_MISMATCH, hex(status)
    node.assert_nothing_kept()
    node.assert_healthy()


# =============================================================================
# Malformed data
# =============================================================================
@dataclass(frozen=True)
class Malformed:
    data: bytes
    sop_instance: str
    transfer_syntax: str = ExplicitVRLittleEndian
    must_fail: bool = True  # False: Success (kept whole) or failure (nothing kept) both fine


def _pixel_offset(raw: bytes) -> int:
    return raw.index(PIXEL_DATA_TAG + b"OW")


def _nested_sequences(depth: int) -> bytes:
    opening = struct.pack("<HH2sHL", 0x0040, 0x0275, b"SQ", 0, 0xFFFFFFFF)
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF)
    closing = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return (opening + item) * depth + closing * depth


def _case(name: str) -> Malformed:
    ds = mr_instance()
    uid = str(ds.SOPInstanceUID)
    raw = encode_dataset(ds)
    pixels = _pixel_offset(raw)
    if name == "truncated-before-study-uid":
        return Malformed(raw[: raw.index(b"\x20\x00\x0d\x00UI")], uid)
    if name == "truncated-in-last-header-element":
        return Malformed(raw[: pixels - 3], uid)
    if name == "truncated-in-pixel-data":
        return Malformed(raw[: pixels + 12 + 100], uid)
    if name == "zero-bytes":
        return Malformed(b"", uid)
    if name == "length-near-2**32":
        bogus = struct.pack("<HH2sHL", 0x0042, 0x0011, b"OB", 0, 0xFFFFFFF0) + b"\x00" * 16
        return Malformed(raw[:pixels] + bogus + raw[pixels:], uid)
    if name == "missing-sop-instance-uid":
        del ds.SOPInstanceUID
        return Malformed(encode_dataset(ds), uid)
    if name == "missing-sop-class-uid":
        del ds.SOPClassUID
        return Malformed(encode_dataset(ds), uid)
    if name == "2000-nested-sequences":
        return Malformed(raw[:pixels] + _nested_sequences(2000) + raw[pixels:], uid)
    if name == "rows-columns-65535-tiny-pixels":
        ds.Rows = ds.Columns = 65535
        return Malformed(encode_dataset(ds), uid, must_fail=False)
    if name == "frames-2**31-tiny-pixels":
        ds.NumberOfFrames = 2**31 - 1
        return Malformed(encode_dataset(ds), uid, must_fail=False)
    if name == "pixel-data-shorter-than-rows-x-columns":
        ds.PixelData = ds.PixelData[:10]
        return Malformed(encode_dataset(ds), uid, must_fail=False)
    if name in ("corrupt-rle", "corrupt-jpeg2000"):
        garbage = (
            b"\xff\x4f\xff\x51" + bytes(range(256)) * 4
            if name == "corrupt-jpeg2000"
            else (struct.pack("<16L", 15, *([64] * 15)) + b"\xff" * 512)
        )
        ds.PixelData = encapsulate([garbage])
        ds["PixelData"].VR = "OB"
        syntax = JPEG2000Lossless if name == "corrupt-jpeg2000" else RLELossless
        return Malformed(encode_dataset(ds), uid, syntax, must_fail=False)
    raise AssertionError(name)


MALFORMED = [
    "truncated-before-study-uid",
    "truncated-in-last-header-element",
    "truncated-in-pixel-data",
    "zero-bytes",
    "length-near-2**32",
    "missing-sop-instance-uid",
    "missing-sop-class-uid",
    "2000-nested-sequences",
    "rows-columns-65535-tiny-pixels",
    "frames-2**31-tiny-pixels",
    "pixel-data-shorter-than-rows-x-columns",
    "corrupt-rle",
    "corrupt-jpeg2000",
]


@pytest.mark.parametrize("name", MALFORMED, ids=[getattr(p, "values", [p])[0] for p in MALFORMED])
def test_malformed_dataset(node: NodeUnderTest, name: str) -> None:
    case = _case(name)
    contexts: list[Context] = [
        (1, VERIFICATION, [ImplicitVRLittleEndian]),
        (3, MR_STORAGE, [case.transfer_syntax]),
    ]
    with peak_rss() as peak, RawClient(node.port) as client:
        assert client.associate(contexts).established
        status = client.c_store(case.data, MR_STORAGE, case.sop_instance)
        client.release()
    assert peak["growth_kib"] < MEMORY_BOUND_KIB, f"peak RSS grew {peak['growth_kib']} KiB"
    if case.must_fail:
        assert is_failure(status), f"{name}: answered {status:#06x}"
    if is_failure(status):
        node.assert_nothing_kept()
    else:
        assert dataset_part(node.read_published(case.sop_instance)) == case.data
    node.assert_healthy()


def test_instance_over_max_instance_bytes_in_three_fragments(
    make_node: Callable[..., NodeUnderTest],
) -> None:
    node = make_node(node__max_instance_bytes=4096)
    big = mr_instance()
    big_ds = make_mr_series(n_slices=1, rows=64, cols=64)[0]
    data = encode_dataset(big_ds)
    assert len(data) > 4096
    small = encode_dataset(big)
    assert len(small) < 4096
    with RawClient(node.port) as client:
        assert client.associate().established
        client.send_store_command(3, MR_STORAGE, big_ds.SOPInstanceUID)
        third = -(-len(data) // 3)
        client.send_dataset(3, data, fragment=third)  # exactly 3 P-DATA PDUs
        status = _status(client)
        assert is_cannot_understand(status), hex(status)
        node.assert_nothing_kept()
        # The association goes on: the next (small) instance is stored.
        assert client.c_store(small, MR_STORAGE, big.SOPInstanceUID, message_id=2) == SUCCESS
        client.release()
    assert [r.sop_instance_uid for r in node.rows()] == [big.SOPInstanceUID]
    node.assert_healthy()


def _status(client: RawClient) -> int:
    return int(struct.unpack("<H", client.read_response()[0x0900])[0])


# =============================================================================
# Content and semantics: duplicates, split series
# =============================================================================
def test_same_instance_twice_is_kept_once(node: NodeUnderTest) -> None:
    ds = mr_instance()
    data = encode_dataset(ds)
    with RawClient(node.port) as client:
        assert client.associate().established
        assert client.c_store(data, MR_STORAGE, ds.SOPInstanceUID, message_id=1) == SUCCESS
        assert client.c_store(data, MR_STORAGE, ds.SOPInstanceUID, message_id=2) == SUCCESS
        client.release()
    assert store_one(node.port, ds) == SUCCESS  # and once more in a new association
    assert [r.sop_instance_uid for r in node.rows()] == [ds.SOPInstanceUID]
    assert len(node.published()) == 1 and node.quarantined() == set()
    assert dataset_part(node.read_published(ds.SOPInstanceUID)) == data
    with node.engine.connect() as conn:
        assert conn.execute(sql_select(Series.instance_count)).scalar_one() == 1
    node.assert_healthy()


def test_same_uid_different_bytes_is_quarantined(node: NodeUnderTest) -> None:
    first = mr_instance()
    second = copy.deepcopy(first)
    second.SeriesDescription = "same UID, other bytes"
    first_bytes, second_bytes = encode_dataset(first), encode_dataset(second)
    assert store_one(node.port, first) == SUCCESS
    assert store_one(node.port, second) == SUCCESS
    assert dataset_part(node.read_published(first.SOPInstanceUID)) == first_bytes
    (quarantined,) = node.quarantined()
    assert dataset_part(node.spool.path_of(quarantined).read_bytes()) == second_bytes
    (row,) = node.rows(QuarantinedInstance)
    assert (row.sop_instance_uid, row.path) == (first.SOPInstanceUID, quarantined)
    events = [e.kind for e in node.rows(AuditEvent)]
    assert "instance_quarantined" in events
    assert len(node.rows()) == 1
    node.assert_healthy()


def test_series_split_across_associations_out_of_order(node: NodeUnderTest) -> None:
    series = make_mr_series(n_slices=6)
    halves = ([series[5], series[1], series[3]], [series[0], series[4], series[2]])
    results: list[list[int]] = [[], []]

    def send(i: int) -> None:
        with RawClient(node.port) as client:
            assert client.associate(calling_ae=f"PART{i}").established
            for n, ds in enumerate(halves[i], start=1):
                data = encode_dataset(ds)
                results[i].append(client.c_store(data, MR_STORAGE, ds.SOPInstanceUID, message_id=n))
            client.release()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [[SUCCESS] * 3, [SUCCESS] * 3]
    with node.engine.connect() as conn:
        (row,) = conn.execute(sql_select(Series)).all()
        assert conn.execute(sql_select(Study)).all() != []
        series_ids = set(conn.execute(sql_select(Instance.series_id)).scalars())
    assert row.series_uid == series[0].SeriesInstanceUID
    assert row.instance_count == 6 and series_ids == {row.id}
    assert {r.sop_instance_uid for r in node.rows()} == {str(ds.SOPInstanceUID) for ds in series}
    node.assert_healthy()


# =============================================================================
# Protocol and network
# =============================================================================
def _valid_rq() -> bytes:
    return associate_rq()


def _overrunning_context_item() -> bytes:
    rq = bytearray(_valid_rq())
    at = rq.index(b"\x20\x00", 6 + 68 + 4)  # the first presentation context item
    struct.pack_into(">H", rq, at + 2, 0xFFF0)  # its length now overruns the PDU
    return bytes(rq)


def _pdu_shorter_than_items() -> bytes:
    rq = bytearray(_valid_rq())
    struct.pack_into(">L", rq, 2, len(rq) - 6 - 20)  # the PDU ends inside the last item
    return bytes(rq[: len(rq) - 20])


GARBAGE_BEFORE_ASSOCIATION = {
    "http-request": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: curl\r\n\r\n",
    "random-bytes": random.Random(20260101).randbytes(8192),
    "associate-rq-claiming-4GiB": b"\x01\x00\xff\xff\xff\xff" + _valid_rq()[6:],
    "unknown-pdu-type": b"\x09\x00\x00\x00\x00\x04abcd",
    "context-item-overruns-pdu": _overrunning_context_item(),
    "pdu-ends-inside-an-item": _pdu_shorter_than_items(),
    "p-data-before-association": pdata(1, 0x03, b"\x00" * 32),
}
GARBAGE_IN_ASSOCIATION = {
    "p-data-claiming-4GiB": b"\x04\x00\xff\xff\xff\xff" + b"\x00" * 64,
    "pdv-longer-than-pdu": pdu(P_DATA, struct.pack(">LBB", 5000, 3, 3) + b"\x00" * 32),
    "pdv-on-unknown-context": pdata(99, 0x03, b"\x00" * 32),
    "dataset-without-command": pdata(3, 0x02, b"\x00" * 32),
    "second-associate-rq": _valid_rq(),
    "command-not-group-0000": pdata(3, 0x03, struct.pack("<HHL", 0x0008, 0x0016, 2) + b"1\x00"),
}


@pytest.mark.parametrize(
    ("established", "garbage"),
    [(False, v) for v in GARBAGE_BEFORE_ASSOCIATION.values()]
    + [(True, v) for v in GARBAGE_IN_ASSOCIATION.values()],
    ids=[*GARBAGE_BEFORE_ASSOCIATION, *GARBAGE_IN_ASSOCIATION],
)
def test_garbage_on_the_dicom_port_closes_the_connection(
    make_node: Callable[..., NodeUnderTest], established: bool, garbage: bytes
) -> None:
    # Long timeouts: the connection must be closed because of what was sent, not a deadline.
    node = make_node(node__acse_timeout_seconds=10.0, node__network_timeout_seconds=10.0)
    with peak_rss() as peak, RawClient(node.port) as client:
        if established:
            assert client.associate().established
            client.received.clear()
        started = time.monotonic()
        try:
            client.send(garbage)
        except OSError:
            pass  # closed while we were still sending: fine
        assert client.wait_closed(3.0), "the node kept the connection open"
        took = time.monotonic() - started
    assert took < 3.0
    assert peak["growth_kib"] < MEMORY_BOUND_KIB, f"peak RSS grew {peak['growth_kib']} KiB"
    if client.received:  # at most an A-ABORT or an A-ASSOCIATE-RJ, never an accept
        assert client.received[0] in (ABORT, ASSOCIATE_RJ), bytes(client.received[:8])
    node.assert_nothing_kept()
    node.assert_healthy()


def _server_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("dicom-"))


class ThreadPeak:
    """Samples the node's thread count in the background (max in ``peak``)."""

    def __init__(self) -> None:
        self.peak = _server_threads()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _server_threads())

    def __enter__(self) -> ThreadPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _closed_sockets(socks: list[socket.socket], within: float, done: set[int]) -> set[int]:
    """Indexes of ``socks`` that saw EOF/reset within ``within`` seconds (adds to ``done``)."""
    deadline = time.monotonic() + within
    while len(done) < len(socks):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        waiting = {s.fileno(): i for i, s in enumerate(socks) if i not in done}
        readable, _, _ = select.select(list(waiting), [], [], remaining)
        for fd in readable:
            i = waiting[fd]
            try:
                if not socks[i].recv(4096, socket.MSG_DONTWAIT):
                    done.add(i)
            except BlockingIOError:
                continue
            except OSError:
                done.add(i)
    return done


def test_idle_connections_beyond_the_limit(make_node: Callable[..., NodeUnderTest]) -> None:
    limit, idle, acse = 4, 60, 2.0
    node = make_node(node__max_associations=limit, node__acse_timeout_seconds=acse)
    cap = limit + EXTRA_REJECTORS + 1  # + the accept thread
    with ThreadPeak() as threads:
        socks = [socket.create_connection((HOST, node.port), timeout=5) for _ in range(idle)]
        try:
            closed: set[int] = set()
            _closed_sockets(socks, acse * 0.6, closed)
            assert len(closed) >= idle - limit - EXTRA_REJECTORS, "extras were not closed at once"
            # Every other one is closed by a deadline (ARTIM, or the busy rejector's read).
            _closed_sockets(socks, acse + 4.0, closed)
            assert len(closed) == idle, f"{idle - len(closed)} idle connection(s) still open"
        finally:
            for s in socks:
                s.close()
    assert threads.peak <= cap, f"{threads.peak} listener threads for {idle} idle connections"
    node.assert_healthy()


def _dribble(client: RawClient, data: bytes, every: float, limit: float) -> float:
    """Send ``data`` one byte every ``every`` s; seconds until the node hung up."""
    started = time.monotonic()
    for byte in data:
        try:
            client.send(bytes([byte]))
        except OSError:
            return time.monotonic() - started
        if client.wait_closed(every):
            return time.monotonic() - started
        if time.monotonic() - started > limit:
            break
    raise AssertionError(f"slow sender still connected after {limit} s")


@pytest.mark.parametrize(
    "phase",
    ["associate-rq", "pdu-header", "dataset-body"],
    ids=["associate-rq", "pdu-header", "dataset-body"],
)
def test_slow_sender_is_dropped(make_node: Callable[..., NodeUnderTest], phase: str) -> None:
    timeout = 1.0
    node = make_node(node__acse_timeout_seconds=timeout, node__network_timeout_seconds=timeout)
    ds = mr_instance()
    with RawClient(node.port) as client:
        if phase == "associate-rq":
            took = _dribble(client, _valid_rq(), 0.5, 6.0)
        else:
            assert client.associate().established
            payload = pdata(3, 0x02, encode_dataset(ds))
            if phase == "dataset-body":
                client.send_store_command(3, MR_STORAGE, ds.SOPInstanceUID)
                client.send(payload[:6])
                assert wait_for(lambda: bool(node.temp_files()), 2.0), "no temp file opened"
                payload = payload[6:]
            took = _dribble(client, payload, 0.5, 6.0)
    assert took < timeout + 1.5, f"dropped only after {took:.1f} s"
    node.assert_nothing_kept()
    node.assert_healthy()


def test_many_concurrent_associations_over_the_limit(
    make_node: Callable[..., NodeUnderTest],
) -> None:
    limit, clients = 4, 30
    node = make_node(node__max_associations=limit, node__network_timeout_seconds=5.0)
    start = threading.Barrier(clients)

    def one(_: int) -> tuple[str, Any]:
        start.wait()
        try:
            with RawClient(node.port, timeout=5.0) as client:
                negotiation = client.associate()
                if not negotiation.established:
                    return "rejected", negotiation.reject
                status = client.c_echo()
                time.sleep(0.5)  # hold the slot while the others arrive
                client.release()
                return "accepted", status
        except (PeerClosed, ConnectionError, BrokenPipeError) as exc:
            return "closed", exc.__class__.__name__

    with ThreadPeak() as threads, ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, i) for i in range(clients)]
        outcomes = [f.result(timeout=20) for f in futures]  # none hangs
    accepted = [detail for kind, detail in outcomes if kind == "accepted"]
    rejected = [detail for kind, detail in outcomes if kind == "rejected"]
    closed = [detail for kind, detail in outcomes if kind == "closed"]
    assert accepted == [SUCCESS] * len(accepted) and len(accepted) >= limit
    assert len(rejected) + len(closed) >= clients - 2 * limit, outcomes
    assert set(rejected) <= {(RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_LOCAL_LIMIT)}, rejected
    assert threads.peak <= limit + EXTRA_REJECTORS + 1
    node.assert_healthy()


@pytest.mark.parametrize(
    "how",
    ["a-abort", "close-mid-pdu", "reset-mid-pdu"],
    ids=["a-abort", "close-mid-pdu", "reset-mid-pdu"],
)
def test_sender_gone_mid_dataset_publishes_nothing(node: NodeUnderTest, how: str) -> None:
    ds = make_mr_series(n_slices=1, rows=64, cols=64)[0]
    data = encode_dataset(ds)
    client = RawClient(node.port)
    assert client.associate().established
    client.send_store_command(3, MR_STORAGE, ds.SOPInstanceUID)
    client.send(pdata(3, 0x00, data[:4000]))  # first fragment, more to come
    assert wait_for(lambda: bool(node.temp_files()), 2.0), "no partial temp file to clean up"
    if how == "a-abort":
        client.send(pdu(ABORT, b"\x00\x00\x00\x00"))
    else:
        rest = pdata(3, 0x02, data[4000:])
        client.send(rest[: len(rest) // 2])  # the PDU is cut in the middle
        if how == "reset-mid-pdu":
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    assert wait_for(lambda: node.listener.active_associations == 0, 3.0)
    node.assert_nothing_kept()
    node.assert_healthy()


# =============================================================================
# Access control and TLS
# =============================================================================
@pytest.mark.parametrize(
    ("calling", "allowed"),
    [("EVILSCU", False), ("goodscu", False), ("GOODSCU", True)],
    ids=["unknown-ae", "wrong-case", "allowed-ae"],
)
def test_calling_ae_allow_list(
    make_node: Callable[..., NodeUnderTest], calling: str, allowed: bool
) -> None:
    node = make_node(node__allowed_calling_aets=["GOODSCU", "OTHER"])
    ds = mr_instance()
    with RawClient(node.port) as client:
        negotiation = client.associate(calling_ae=calling)
        if allowed:
            assert negotiation.established
            assert client.c_store(encode_dataset(ds), MR_STORAGE, ds.SOPInstanceUID) == SUCCESS
            client.release()
        else:
            assert negotiation.reject == (
                RJ_PERMANENT,
                RJ_SOURCE_USER,
                RJ_CALLING_AE_NOT_RECOGNIZED,
            )
            assert client.wait_closed(2.0)
    assert len(node.rows()) == (1 if allowed else 0)
    node.assert_healthy()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"), require_tool("openssl"))


def client_context(
    files: TlsFiles, *, cert: str = "valid", max_version: Any = None
) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=files.ca)
    if cert == "valid":
        ctx.load_cert_chain(files.client_cert, files.client_key)
    elif cert == "rogue":
        ctx.load_cert_chain(files.rogue_cert, files.rogue_key)
    if max_version is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = max_version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client really offer it
    return ctx


@pytest.fixture
def tls_node(make_node: Callable[..., NodeUnderTest], tls_files: TlsFiles) -> NodeUnderTest:
    node = make_node(
        tls__enabled=True,
        tls__cert_file=str(tls_files.server_cert),
        tls__key_file=str(tls_files.server_key),
        tls__ca_file=str(tls_files.ca),
        tls__handshake_timeout_seconds=1.5,
        node__acse_timeout_seconds=2.0,
    )
    good = client_context(tls_files)
    node.echo = lambda port: scu_echo(port, tls_args=(good, HOST))
    return node


def tls_attempt(port: int, ctx: ssl.SSLContext) -> str:
    """'associated', or why not: 'handshake failed: ...' / 'closed: ...'."""
    sock = socket.create_connection((HOST, port), timeout=5)
    try:
        tls = ctx.wrap_socket(sock, server_hostname=HOST)
    except OSError as exc:
        sock.close()
        return f"handshake failed: {exc}"
    with RawClient(port, sock=tls) as client:
        try:
            negotiation = client.associate()
        except OSError as exc:  # PeerClosed is not an OSError; SSL alerts are
            return f"closed: {exc}"
        except PeerClosed as exc:
            return f"closed: {exc}"
        return "associated" if negotiation.established else "rejected"


def test_tls_valid_client_certificate_works(tls_node: NodeUnderTest, tls_files: TlsFiles) -> None:
    ctx = client_context(tls_files)
    assert tls_attempt(tls_node.port, ctx) == "associated"
    files = write_series(make_mr_series(n_slices=2), tls_node.inputs / "tls")
    assert scu_store(tls_node.port, files, tls_args=(ctx, HOST)) == [SUCCESS, SUCCESS]
    assert len(tls_node.rows()) == 2
    tls_node.assert_healthy()


@pytest.mark.parametrize(
    ("cert", "version"),
    [("none", None), ("rogue", None), ("valid", ssl.TLSVersion.TLSv1_1)],
    ids=["no-client-cert", "untrusted-client-cert", "tls-1.1"],
)
def test_tls_bad_clients_are_refused(
    tls_node: NodeUnderTest, tls_files: TlsFiles, cert: str, version: Any
) -> None:
    outcome = tls_attempt(tls_node.port, client_context(tls_files, cert=cert, max_version=version))
    if "NO_PROTOCOLS_AVAILABLE" in outcome:
        pytest.skip("this OpenSSL cannot offer TLS 1.1 at all")
    assert outcome.startswith(("handshake failed", "closed")), outcome
    if version is not None:
        assert "PROTOCOL_VERSION" in outcome or "UNSUPPORTED_PROTOCOL" in outcome, outcome
    tls_node.assert_nothing_kept()
    tls_node.assert_healthy()


def test_tls_port_drops_plaintext(tls_node: NodeUnderTest) -> None:
    with RawClient(tls_node.port) as client:
        client.send(_valid_rq())
        assert client.wait_closed(3.0)
    assert not client.received.startswith(bytes([ASSOCIATE_AC])), bytes(client.received[:8])
    tls_node.assert_healthy()


def test_tls_silent_client_times_out_while_others_are_served(
    tls_node: NodeUnderTest, tls_files: TlsFiles
) -> None:
    handshake_timeout = tls_node.settings.tls.handshake_timeout_seconds
    with RawClient(tls_node.port) as silent:
        started = time.monotonic()
        assert tls_attempt(tls_node.port, client_context(tls_files)) == "associated"
        served_after = time.monotonic() - started
        assert not silent.wait_closed(0.0)
        assert silent.wait_closed(handshake_timeout + 2.0), "silent client never dropped"
        dropped_after = time.monotonic() - started
    assert served_after < handshake_timeout, "another client waited for the silent one"
    assert handshake_timeout - 0.3 <= dropped_after < handshake_timeout + 1.5, dropped_after
    tls_node.assert_healthy()


# =============================================================================
# Process and infrastructure: spool full, database locked
# =============================================================================
class FullDisk:
    """Stands in for ``os`` inside daemon.intake.spool: ENOSPC after ``allow`` bytes, or on fsync."""

    def __init__(self, spool_tmp: Path, *, allow: int = 0, fsync_fails: bool = False) -> None:
        self.spool_tmp = str(spool_tmp)
        self.allow = allow
        self.fsync_fails = fsync_fails
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def _enospc(self) -> OSError:
        self.failures += 1
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def write(self, fd: int, data: Any) -> int:
        if not self.fsync_fails:
            if len(data) > self.allow:
                raise self._enospc()
            self.allow -= len(data)
        return os.write(fd, data)

    def _sync(self, fd: int, real: Callable[[int], None]) -> None:
        if self.fsync_fails and os.readlink(f"/proc/self/fd/{fd}").startswith(self.spool_tmp):
            raise self._enospc()
        real(fd)

    def fsync(self, fd: int) -> None:
        self._sync(fd, os.fsync)

    def fdatasync(self, fd: int) -> None:
        self._sync(fd, os.fdatasync)


@pytest.mark.parametrize(
    ("allow", "fsync_fails"),
    [(0, False), (3000, False), (0, True)],
    ids=["full-from-first-byte", "full-mid-dataset", "fsync-fails"],
)
def test_spool_full_answers_out_of_resources(
    node: NodeUnderTest, monkeypatch: pytest.MonkeyPatch, allow: int, fsync_fails: bool
) -> None:
    disk = FullDisk(node.spool.tmp_dir, allow=allow, fsync_fails=fsync_fails)
    monkeypatch.setattr(daemon.intake.spool, "os", disk)
    ds = make_mr_series(n_slices=1, rows=64, cols=64)[0]
    status = _store_bytes(node, encode_dataset(ds), ds.SOPInstanceUID, fragment=1000)
    assert disk.failures >= 1, "the simulated full disk was never hit"
    assert status == OUT_OF_RESOURCES, hex(status)
    node.assert_nothing_kept()
    monkeypatch.undo()  # space freed: the resend is stored
    assert store_one(node.port, ds) == SUCCESS
    assert [r.sop_instance_uid for r in node.rows()] == [ds.SOPInstanceUID]
    node.assert_healthy()


def test_database_locked_answers_out_of_resources(make_node: Callable[..., NodeUnderTest]) -> None:
    node = make_node(database__busy_timeout_ms=200)
    locker = sqlite3.connect(node.data_dir / "ki67node.db", isolation_level=None, timeout=0)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        ds = mr_instance()
        started = time.monotonic()
        status = store_one(node.port, ds)
        assert status == OUT_OF_RESOURCES, hex(status)
        assert time.monotonic() - started < 5.0
        assert wait_for(lambda: not node.temp_files(), 2.0)
        assert node.published() == set(), "a published file was left without a row"
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert node.rows() == []
    assert store_one(node.port, ds) == SUCCESS  # the lock is gone: the resend is stored
    assert [r.sop_instance_uid for r in node.rows()] == [ds.SOPInstanceUID]
    node.assert_healthy()
