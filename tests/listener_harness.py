"""Test harness for the DICOM listener: a node in-process, clients, invariants.

- :func:`start_node` / the ``make_node`` and ``node`` fixtures (import
  ``fixture_make_node``, ``fixture_node`` into a test module to use them): a real :class:`Listener` on a
  free loopback port with its own engine, spool and database under tmp_path.
- :class:`RawClient`: a socket-level DICOM client (its own encoders, so the
  code under test is not used to test itself) for malformed traffic.
- :func:`scu_store` / :func:`scu_echo`: the well-behaved peer (pynetdicom).
- :meth:`NodeUnderTest.assert_healthy`: the FAULTS.md invariants after every
  case (alive, C-ECHO works, nothing outside data_dir, no temp file, threads,
  sockets and memory back to baseline, database rows ⇔ published files).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from sqlalchemy import Engine, func, select

from daemon.db.engine import make_engine, migrate
from daemon.db.models import Instance, QuarantinedInstance, Series
from daemon.dicom.listener import Listener
from daemon.intake.ingest import IngestStore
from daemon.intake.spool import Spool
from daemon.settings import Settings
from tests.factories import make_mr_series

HOST = "127.0.0.1"
VERIFICATION = "1.2.840.10008.1.1"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
SUCCESS = 0x0000
PUBLISHED_NAME = re.compile(r"^\d{8}/[0-9a-f]{32}\.dcm$")
QUARANTINE_NAME = re.compile(r"^quarantine/[0-9a-f]{32}\.dcm$")
DB_FILES = re.compile(r"^ki67node\.db(-wal|-shm|-journal)?$")
THREAD_SLACK = 1
SOCKET_SLACK = 2
FD_SLACK = 2
RSS_SLACK_KIB = 64 * 1024

# PDU types (PS3.8 §9.3)
ASSOCIATE_RQ, ASSOCIATE_AC, ASSOCIATE_RJ, P_DATA, RELEASE_RQ, RELEASE_RP, ABORT = range(1, 8)


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``predicate`` until true or ``timeout``; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# -- datasets ---------------------------------------------------------------------
def mr_instance(**overrides: Any) -> Dataset:
    """One small MR Image Storage instance (a fresh SOP Instance UID each call)."""
    return make_mr_series(n_slices=1, rows=16, cols=16, overrides=overrides or None)[0]


def encode_dataset(ds: Dataset, implicit: bool = False) -> bytes:
    """The dataset part of a C-STORE as a sender encodes it (no file meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def dataset_part(file_bytes: bytes) -> bytes:
    """A Part 10 file without preamble and File Meta group (explicit VR LE meta)."""
    assert file_bytes[128:132] == b"DICM", "not a Part 10 file"
    (group_length,) = struct.unpack_from("<L", file_bytes, 132 + 8)
    return file_bytes[132 + 12 + group_length :]


# -- byte-level encoders (independent of daemon.dicom.ul_pdu / daemon.dicom.dimse) ---------
def _ae(value: str | bytes) -> bytes:
    raw = value.encode("latin-1") if isinstance(value, str) else value
    return raw[:16].ljust(16, b" ")


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBL", pdu_type, 0, len(body)) + body


Context = tuple[int, str, Sequence[str]]
DEFAULT_CONTEXTS: tuple[Context, ...] = (
    (1, VERIFICATION, (ImplicitVRLittleEndian,)),
    (3, MR_STORAGE, (ExplicitVRLittleEndian,)),
)


def associate_rq(
    contexts: Sequence[Context] = DEFAULT_CONTEXTS,
    *,
    calling_ae: str | bytes = "RAWSCU",
    called_ae: str | bytes = "KI67NODE",
    max_pdu: int = 65_536,
) -> bytes:
    items = [_item(0x10, APP_CONTEXT.encode())]
    for context_id, abstract, transfers in contexts:
        sub = _item(0x30, abstract.encode()) + b"".join(_item(0x40, t.encode()) for t in transfers)
        items.append(_item(0x20, bytes([context_id, 0, 0, 0]) + sub))
    items.append(_item(0x50, _item(0x51, struct.pack(">L", max_pdu)) + _item(0x52, b"1.2.3.4")))
    fixed = struct.pack(">HH", 1, 0) + _ae(called_ae) + _ae(calling_ae) + b"\x00" * 32
    return pdu(ASSOCIATE_RQ, fixed + b"".join(items))


def pdata(context_id: int, control: int, fragment: bytes) -> bytes:
    return pdu(P_DATA, struct.pack(">LBB", len(fragment) + 2, context_id, control) + fragment)


def _uid_value(uid: str | bytes) -> bytes:
    raw = uid.encode("latin-1") if isinstance(uid, str) else uid
    return raw + b"\x00" if len(raw) % 2 else raw


def command_set(elements: Sequence[tuple[int, bytes]]) -> bytes:
    """Implicit VR LE group 0000 with its group length (PS3.7 §6.3.1)."""
    body = b"".join(struct.pack("<HHL", 0, tag, len(v)) + v for tag, v in elements)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def store_rq(message_id: int, sop_class: str | bytes, sop_instance: str | bytes) -> bytes:
    return command_set(
        [
            (0x0002, _uid_value(sop_class)),
            (0x0100, struct.pack("<H", 0x0001)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0700, struct.pack("<H", 0)),
            (0x0800, struct.pack("<H", 0x0000)),
            (0x1000, _uid_value(sop_instance)),
        ]
    )


def echo_rq(message_id: int) -> bytes:
    return command_set(
        [
            (0x0002, _uid_value(VERIFICATION)),
            (0x0100, struct.pack("<H", 0x0030)),
            (0x0110, struct.pack("<H", message_id)),
            (0x0800, struct.pack("<H", 0x0101)),
        ]
    )


def un_undefined_sequence() -> bytes:
    """Explicit VR LE bytes of (0009,0010) LO creator + (0009,1001) UN, undefined length,
    one item whose elements are implicit VR LE (PS3.5 §6.2.2)."""
    creator = b"ACME 1.0"
    inner = struct.pack("<HHL", 0x0009, 0x0010, len(creator)) + creator
    inner += struct.pack("<HHL", 0x0009, 0x1002, 4) + b"ABCD"
    item = struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner
    item += struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
    element = struct.pack("<HH2sHL", 0x0009, 0x1001, b"UN", 0, 0xFFFFFFFF) + item
    element += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", len(creator)) + creator + element


def parse_command(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    pos = 0
    while pos + 8 <= len(data):
        _group, elem, length = struct.unpack_from("<HHL", data, pos)
        out[elem] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


class PeerClosed(Exception):
    """The node closed the connection (or aborted) before answering."""


@dataclass
class Negotiation:
    pdu_type: int
    accepted: dict[int, str] = field(default_factory=dict)  # context id -> transfer syntax
    results: dict[int, int] = field(default_factory=dict)  # context id -> result code
    reject: tuple[int, int, int] | None = None  # (result, source, reason)

    @property
    def established(self) -> bool:
        return self.pdu_type == ASSOCIATE_AC


class RawClient:
    """A DICOM peer at the socket level; every read has a timeout."""

    def __init__(self, port: int, *, timeout: float = 5.0, sock: socket.socket | None = None):
        self.sock = sock or socket.create_connection((HOST, port), timeout=timeout)
        self.timeout = timeout
        self.received = bytearray()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _recv_exact(self, size: int, timeout: float) -> bytes:
        buf = bytearray()
        deadline = time.monotonic() + timeout
        while len(buf) < size:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(size - len(buf))
            except TimeoutError:
                raise TimeoutError(f"no answer within {timeout} s") from None
            except OSError as exc:
                raise PeerClosed(str(exc)) from None
            if not chunk:
                raise PeerClosed("connection closed by the node")
            buf += chunk
        self.received += buf
        return bytes(buf)

    def read_pdu(self, timeout: float | None = None) -> tuple[int, bytes]:
        wait = self.timeout if timeout is None else timeout
        pdu_type, _, length = struct.unpack(">BBL", self._recv_exact(6, wait))
        return pdu_type, self._recv_exact(length, wait)

    def associate(self, contexts: Sequence[Context] = DEFAULT_CONTEXTS, **kw: Any) -> Negotiation:
        self.send(associate_rq(contexts, **kw))
        pdu_type, body = self.read_pdu()
        out = Negotiation(pdu_type)
        if pdu_type == ASSOCIATE_RJ:
            out.reject = (body[1], body[2], body[3])
        elif pdu_type == ASSOCIATE_AC:
            pos = 68
            while pos + 4 <= len(body):
                item_type, _, length = struct.unpack_from(">BBH", body, pos)
                value = body[pos + 4 : pos + 4 + length]
                if item_type == 0x21:
                    out.results[value[0]] = value[2]
                    if value[2] == 0 and len(value) > 8:
                        out.accepted[value[0]] = value[8:].rstrip(b"\x00 ").decode()
                pos += 4 + length
        return out

    def read_response(self, timeout: float | None = None) -> dict[int, bytes]:
        command = b""
        while True:
            pdu_type, body = self.read_pdu(timeout)
            if pdu_type != P_DATA:
                raise PeerClosed(f"PDU type {pdu_type} instead of a response")
            pos = 0
            while pos < len(body):
                (length,) = struct.unpack_from(">L", body, pos)
                control = body[pos + 5]
                command += body[pos + 6 : pos + 4 + length]
                pos += 4 + length
                if control & 0x03 == 0x03:
                    return parse_command(command)

    def c_echo(self, context_id: int = 1, message_id: int = 1) -> int:
        self.send(pdata(context_id, 0x03, echo_rq(message_id)))
        return status_of(self.read_response())

    def send_store_command(
        self,
        context_id: int,
        sop_class: str | bytes,
        sop_instance: str | bytes,
        message_id: int = 1,
    ) -> None:
        self.send(pdata(context_id, 0x03, store_rq(message_id, sop_class, sop_instance)))

    def send_dataset(self, context_id: int, data: bytes, fragment: int = 16_000) -> None:
        """The dataset in P-DATA PDUs of ``fragment`` bytes (0 bytes: one empty PDV)."""
        chunks = [data[i : i + fragment] for i in range(0, len(data), fragment)] or [b""]
        for n, chunk in enumerate(chunks):
            self.send(pdata(context_id, 0x02 if n == len(chunks) - 1 else 0x00, chunk))

    def c_store(
        self,
        data: bytes,
        sop_class: str | bytes,
        sop_instance: str | bytes,
        *,
        context_id: int = 3,
        message_id: int = 1,
        fragment: int = 16_000,
    ) -> int:
        self.send_store_command(context_id, sop_class, sop_instance, message_id)
        self.send_dataset(context_id, data, fragment)
        return status_of(self.read_response())

    def release(self) -> bool:
        self.send(pdu(RELEASE_RQ, b"\x00" * 4))
        return self.read_pdu()[0] == RELEASE_RP

    def wait_closed(self, timeout: float) -> bool:
        """Read (and keep) whatever comes until EOF; False if still open at ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65_536)
            except TimeoutError:
                return False
            except OSError:
                return True  # reset by the node
            if not chunk:
                return True
            self.received += chunk

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def status_of(command: dict[int, bytes]) -> int:
    return int(struct.unpack("<H", command[0x0900])[0])


def store_one(port: int, ds: Dataset, **kw: Any) -> int:
    """Associate, C-STORE ``ds`` (explicit VR LE), release; the status."""
    with RawClient(port) as client:
        assert client.associate(**kw).established
        status = client.c_store(encode_dataset(ds), ds.SOPClassUID, ds.SOPInstanceUID)
        client.release()
    return status


def raw_echo(port: int, calling_ae: str = "RAWSCU") -> int:
    with RawClient(port) as client:
        assert client.associate(calling_ae=calling_ae).established, "C-ECHO association refused"
        status = client.c_echo()
        client.release()
    return status


# -- pynetdicom peer --------------------------------------------------------------
def scu_ae(calling_ae: str = "PYSCU") -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    return ae


def scu_echo(port: int, *, calling_ae: str = "PYSCU", tls_args: Any = None) -> int | None:
    ae = scu_ae(calling_ae)
    ae.add_requested_context(VERIFICATION)
    assoc = ae.associate(HOST, port, ae_title="KI67NODE", tls_args=tls_args)
    if not assoc.is_established:
        return None
    response = assoc.send_c_echo()
    assoc.release()
    return int(response.Status) if "Status" in response else None


def scu_store(
    port: int, files: Sequence[Path], *, calling_ae: str = "PYSCU", tls_args: Any = None
) -> list[int | None]:
    """Send Part 10 files as they are (pynetdicom streams the dataset part)."""
    ae = scu_ae(calling_ae)
    pairs = set()
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        pairs.add((str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)))
    for abstract, transfer in sorted(pairs):
        ae.add_requested_context(abstract, [transfer])
    assoc = ae.associate(HOST, port, ae_title="KI67NODE", tls_args=tls_args)
    assert assoc.is_established, "the node refused the association"
    statuses: list[int | None] = []
    for path in files:
        response = assoc.send_c_store(str(path))
        statuses.append(int(response.Status) if "Status" in response else None)
    assoc.release()
    return statuses


# -- resources -------------------------------------------------------------------
def _proc_status(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rss_kib() -> int:
    return _proc_status("VmRSS")


def open_fd_targets() -> list[str]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out.append(os.readlink(f"/proc/self/fd/{name}"))
    return out


def socket_count() -> int:
    return sum(1 for t in open_fd_targets() if t.startswith("socket:"))


def file_fd_count() -> int:
    """Open fds that are neither sockets nor the database's (pooled connections)."""
    return sum(
        1 for t in open_fd_targets() if not t.startswith("socket:") and "ki67node.db" not in t
    )


@dataclass(frozen=True)
class Snapshot:
    threads: int
    sockets: int
    file_fds: int
    rss_kib: int

    @classmethod
    def take(cls) -> Snapshot:
        return cls(threading.active_count(), socket_count(), file_fd_count(), rss_kib())


@contextlib.contextmanager
def peak_rss() -> Iterator[dict[str, int]]:
    """Peak RSS growth (KiB) of this process inside the block, in ``["growth_kib"]``."""
    result = {"growth_kib": 0}
    start = rss_kib()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        sampler = None
    except OSError:
        peak = [start]
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], rss_kib())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    try:
        yield result
    finally:
        if sampler is None:
            result["growth_kib"] = _proc_status("VmHWM") - start
        else:
            stop.set()
            sampler.join()
            result["growth_kib"] = peak[0] - start


# -- the node under test ---------------------------------------------------------------
@dataclass
class NodeUnderTest:
    settings: Settings
    engine: Engine
    spool: Spool
    ingest: IngestStore
    listener: Listener
    tmp_root: Path
    stored_series: list[int] = field(default_factory=list)
    baseline: Snapshot | None = None
    echo: Callable[[int], int | None] = raw_echo  # replaced by a TLS echo for TLS nodes

    @property
    def port(self) -> int:
        return self.listener.port

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    @property
    def inputs(self) -> Path:
        """Where tests write the files they send (allowed outside data_dir)."""
        folder = self.tmp_root / "inputs"
        folder.mkdir(exist_ok=True)
        return folder

    def published(self) -> set[str]:
        return set(self.spool.published_files())

    def quarantined(self) -> set[str]:
        return {f"quarantine/{p.name}" for p in self.spool.quarantine_dir.iterdir()}

    def temp_files(self) -> list[Path]:
        return list(self.spool.tmp_dir.iterdir())

    def rows(self, model: Any = Instance) -> list[Any]:
        with self.engine.connect() as conn:
            return list(conn.execute(select(model)).all())

    def read_published(self, sop_instance_uid: str) -> bytes:
        with self.engine.connect() as conn:
            path = conn.execute(
                select(Instance.path).where(Instance.sop_instance_uid == sop_instance_uid)
            ).scalar_one()
        return self.spool.path_of(path).read_bytes()

    def assert_nothing_kept(self) -> None:
        assert wait_for(lambda: not self.temp_files(), 3.0), f"temp left: {self.temp_files()}"
        assert self.published() == set(), "a file was published for a failed instance"
        assert self.rows() == [], "an instance row was written for a failed instance"

    def assert_healthy(self, *, rss_slack_kib: int = RSS_SLACK_KIB) -> None:
        """The FAULTS.md invariants; call at the end of every case."""
        assert self.listener.alive(), "the listener's accept thread died"
        assert self.echo(self.port) == SUCCESS, "C-ECHO after the case failed"
        assert wait_for(lambda: self.listener.active_associations == 0, 5.0), (
            f"{self.listener.active_associations} association(s) still open"
        )
        assert wait_for(lambda: not self.temp_files(), 3.0), f"temp left: {self.temp_files()}"
        self.assert_layout()
        self.assert_db_matches_spool()
        base = self.baseline
        assert base is not None
        assert wait_for(lambda: threading.active_count() <= base.threads + THREAD_SLACK, 5.0), (
            f"threads {threading.active_count()} > baseline {base.threads}: "
            f"{[t.name for t in threading.enumerate()]}"
        )
        spool_root = str(self.spool.root)
        assert wait_for(
            lambda: not any(t.startswith(spool_root) for t in open_fd_targets()), 3.0
        ), "a spool file is still open"
        assert wait_for(lambda: socket_count() <= base.sockets + SOCKET_SLACK, 5.0), (
            f"sockets {socket_count()} > baseline {base.sockets}"
        )
        assert wait_for(lambda: file_fd_count() <= base.file_fds + FD_SLACK, 3.0), (
            f"open files {file_fd_count()} > baseline {base.file_fds}"
        )
        growth = rss_kib() - base.rss_kib
        assert growth < rss_slack_kib, f"RSS grew by {growth} KiB"

    def assert_layout(self) -> None:
        """Every file is where the server puts it, under a name it made."""
        data = self.data_dir.resolve()
        allowed_outside = (self.tmp_root / "inputs").resolve()
        for path in self.tmp_root.resolve().rglob("*"):
            if path.is_dir():
                continue
            if allowed_outside in path.parents:
                continue
            assert data in path.parents, f"file written outside data_dir: {path}"
            rel = path.relative_to(data).as_posix()
            if rel.startswith("spool/"):
                name = rel.removeprefix("spool/")
                assert PUBLISHED_NAME.match(name) or QUARANTINE_NAME.match(name), (
                    f"spool file with a name the server did not make: {rel!r}"
                )
            else:
                assert DB_FILES.match(rel), f"unexpected file in data_dir: {rel!r}"

    def assert_db_matches_spool(self) -> None:
        """Rows ⇔ published files (size and hash), quarantine rows ⇔ files, counts."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(Instance.path, Instance.size_bytes, Instance.sha256)).all()
            quarantine = conn.execute(select(QuarantinedInstance.path)).scalars().all()
            counts = conn.execute(
                select(Series.instance_count, func.count(Instance.id))
                .join(Instance, Instance.series_id == Series.id, isouter=True)
                .group_by(Series.id)
            ).all()
        assert {r.path for r in rows} == self.published(), "instance rows ≠ published files"
        for row in rows:
            data = self.spool.path_of(row.path).read_bytes()
            assert len(data) == row.size_bytes and hashlib.sha256(data).hexdigest() == row.sha256
        assert set(quarantine) == self.quarantined(), "quarantine rows ≠ quarantined files"
        for recorded, actual in counts:
            assert recorded == actual, f"series instance_count {recorded} ≠ {actual} rows"

    def stop(self) -> None:
        self.listener.stop(timeout=2.0)
        self.ingest.close()
        self.engine.dispose()


def start_node(settings: Settings, tmp_root: Path) -> NodeUnderTest:
    """Engine, migrations, spool, ingest and a started listener; baseline taken."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url, settings.database.busy_timeout_ms)
    migrate(engine)
    spool = Spool(settings.spool_dir)
    stored: list[int] = []
    ingest = IngestStore(engine, spool, on_stored=stored.append)
    listener = Listener(settings.node, settings.tls, ingest)
    listener.start()
    node = NodeUnderTest(settings, engine, spool, ingest, listener, tmp_root, stored)
    if settings.node.allowed_calling_aets:
        node.echo = functools.partial(raw_echo, calling_ae=settings.node.allowed_calling_aets[0])
    if not settings.tls.enabled:
        node.echo(node.port)  # warm up: first association, pool connection
        wait_for(lambda: listener.active_associations == 0, 2.0)
    node.baseline = Snapshot.take()
    return node


@pytest.fixture(name="make_node")
def fixture_make_node(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[Callable[..., NodeUnderTest]]:
    """``make_node(**overrides)``: a started node; stopped at teardown."""
    nodes: list[NodeUnderTest] = []

    def factory(**overrides: Any) -> NodeUnderTest:
        node = start_node(make_settings(**overrides), tmp_path)
        nodes.append(node)
        return node

    yield factory
    for node in nodes:
        node.stop()


@pytest.fixture(name="node")
def fixture_node(make_node: Callable[..., NodeUnderTest]) -> NodeUnderTest:
    return make_node(node__acse_timeout_seconds=2.0, node__network_timeout_seconds=2.0)


# -- TLS material (openssl CLI) -----------------------------------------------------
@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate signed by a CA the node does not trust
    rogue_key: Path


def make_tls_files(folder: Path, openssl: str) -> TlsFiles:
    """A CA, a server cert for 127.0.0.1, a client cert, and a rogue client cert."""
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=folder, check=True, capture_output=True, timeout=60)

    def leaf(name: str, ca: str, ext: str) -> None:
        (folder / f"{name}.ext").write_text(ext)
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run(
            "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip

    for ca in ("ca", "rogue-ca"):
        run("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.pem", "-days", "2",
            "-subj", f"/CN=ki67node test {ca}")  # fmt: skip
    leaf("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    leaf("client", "ca", "extendedKeyUsage=clientAuth\n")
    leaf("rogue", "rogue-ca", "extendedKeyUsage=clientAuth\n")
    return TlsFiles(
        ca=folder / "ca.pem",
        server_cert=folder / "server.pem",
        server_key=folder / "server.key",
        client_cert=folder / "client.pem",
        client_key=folder / "client.key",
        rogue_cert=folder / "rogue.pem",
        rogue_key=folder / "rogue.key",
    )
