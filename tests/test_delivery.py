"""Delivering the outbox to real peers: Orthanc (C-STORE and STOW-RS), pynetdicom SCPs, folders.

No network mocks: every DICOM destination is a real server on loopback. Time
is injected (``deliver_due(now=...)``), so retries and give-up need no sleep.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, StoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.engine import make_engine, make_sessionmaker, migrate
from daemon.db.models import AuditEvent, OutboxItem
from daemon.db.states import AuditKind, OutboxState
from daemon.delivery.outbox import stage_results
from daemon.delivery.service import DeliveryService
from daemon.destinations import Destination
from daemon.settings import Settings
from tests.conftest import free_port, outbox_of, with_destinations
from tests.factories import make_mr_series
from tests.orthanc import Orthanc, orthanc_fixture

T0 = dt.datetime(2026, 3, 1, 12, 0, 0)
CANARY = "TEST^PATIENT"

orthanc = orthanc_fixture()


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def delivery_service(settings: Settings, sm: Any, **kwargs: Any) -> DeliveryService:
    """The delivery service as ``serve`` wires it."""
    return DeliveryService(settings.node, settings.delivery, settings.destinations, sm, **kwargs)


@dataclass
class Env:
    """A node's settings and database, with helpers to stage and inspect the outbox."""

    settings: Settings
    sm: sessionmaker[Session]
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def stage(self, n: int, now: dt.datetime = T0) -> list[str]:
        datasets = make_mr_series(n_slices=n, rows=16, cols=16)
        return [
            s.sop_instance_uid
            for s in stage_results(*outbox_of(self.settings), self.sm, None, datasets, now=now)
        ]

    def service(self) -> DeliveryService:
        return delivery_service(self.settings, self.sm, rng=self.rng)

    def rows(self) -> list[OutboxItem]:
        with self.sm() as s:
            return list(s.scalars(select(OutboxItem).order_by(OutboxItem.id)))

    def states(self) -> dict[str, str]:
        return {r.sop_instance_uid: r.state for r in self.rows()}


@pytest.fixture
def make_env(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Env]]:
    engines = []

    def factory(*dests: Destination, database_url: str = "", **overrides: Any) -> Env:
        base = {
            "delivery__association_timeout_seconds": 3,
            "delivery__dimse_timeout_seconds": 10,
        }
        if database_url:
            base["database__url"] = database_url  # type: ignore[assignment]
        settings = with_destinations(make_settings(**{**base, **overrides}), *dests)
        engine = make_engine(settings.database_url)
        migrate(engine)
        engines.append(engine)
        return Env(settings, make_sessionmaker(engine))

    yield factory
    for engine in engines:
        engine.dispose()


def dicom(name: str, port: int, ae_title: str = "ORTHANC") -> Destination:
    return Destination(name=name, type="dicom", ae_title=ae_title, host="127.0.0.1", port=port)


@pytest.fixture
def pacs(orthanc: Orthanc) -> Orthanc:
    """The module's Orthanc, running and empty."""
    orthanc.start()
    orthanc.clear()
    return orthanc


# -- C-STORE to Orthanc ----------------------------------------------------------------
def test_cstore_survives_a_pacs_outage_and_stores_each_uid_once(
    make_env: Callable[..., Env], pacs: Orthanc, database_url: str
) -> None:
    env = make_env(dicom("pacs", pacs.dicom_port), database_url=database_url)
    service = env.service()
    first = env.stage(4)
    assert service.deliver_due(now=at(0))["pacs"].delivered == 4
    assert pacs.sop_instance_uids() == sorted(first)

    second = env.stage(3)
    pacs.stop()
    try:
        report = service.deliver_due(now=at(1))["pacs"]
        assert (report.delivered, report.retried) == (0, 3)
        waiting = [r for r in env.rows() if r.state == OutboxState.PENDING]
        assert sorted(r.sop_instance_uid for r in waiting) == sorted(second)
        assert {r.attempts for r in waiting} == {1}
        assert all("could not be reached" in (r.last_error or "") for r in waiting)
        delays_1 = [(r.next_attempt_at - at(1)).total_seconds() for r in waiting]
        assert all(7.5 <= d <= 10 for d in delays_1)  # retry_initial_seconds, with jitter

        assert service.deliver_due(now=at(5))["pacs"].claimed == 0  # not due yet
        service.deliver_due(now=at(3600))
        waiting = [r for r in env.rows() if r.state == OutboxState.PENDING]
        assert {r.attempts for r in waiting} == {2}
        delays_2 = [(r.next_attempt_at - at(3600)).total_seconds() for r in waiting]
        assert all(15 <= d <= 20 for d in delays_2)  # doubled
    finally:
        pacs.start()

    assert service.deliver_due(now=at(7200))["pacs"].delivered == 3
    assert set(env.states().values()) == {OutboxState.DELIVERED}
    assert pacs.sop_instance_uids() == sorted(first + second)

    # A lost acknowledgement: the PACS has them, we send them all again.
    with env.sm.begin() as s:
        s.execute(update(OutboxItem).values(state=OutboxState.PENDING, next_attempt_at=at(0)))
    assert service.deliver_due(now=at(7300))["pacs"].delivered == 7
    assert pacs.sop_instance_uids() == sorted(first + second)
    assert pacs.count() == 7


@pytest.mark.parametrize("transport", ["cstore", "stow"])
def test_thirty_small_instances_are_delivered_and_timed(
    make_env: Callable[..., Env],
    pacs: Orthanc,
    transport: str,
    record_property: Callable[[str, object], None],
) -> None:
    if transport == "cstore":
        dest = dicom("pacs", pacs.dicom_port)
    else:
        dest = Destination(name="pacs", type="dicomweb", url=pacs.dicomweb_url)
    env = make_env(dest)
    uids = env.stage(30)
    start = time.perf_counter()
    report = env.service().deliver_due(now=at(0))["pacs"]
    seconds = time.perf_counter() - start
    record_property(f"deliver_30_{transport}_seconds", round(seconds, 3))
    assert report.delivered == 30
    assert pacs.sop_instance_uids() == sorted(uids)
    assert seconds < 60


# -- STOW-RS to Orthanc ------------------------------------------------------------------
def test_stow_rs_delivers_and_retries_while_the_server_is_down(
    make_env: Callable[..., Env], pacs: Orthanc
) -> None:
    env = make_env(Destination(name="web", type="dicomweb", url=pacs.dicomweb_url))
    service = env.service()
    first = env.stage(3)
    assert service.deliver_due(now=at(0))["web"].delivered == 3
    assert sorted(i.sop_instance_uid for i in pacs.instances()) == sorted(first)
    assert {i.sop_class_uid for i in pacs.instances()} == {"1.2.840.10008.5.1.4.1.1.4"}

    second = env.stage(2)
    pacs.stop()
    try:
        assert service.deliver_due(now=at(1))["web"].retried == 2
        errors = [r.last_error or "" for r in env.rows() if r.state == OutboxState.PENDING]
        assert len(errors) == 2
        assert all(f"STOW-RS to {pacs.dicomweb_url} failed: ConnectionError" in e for e in errors)
    finally:
        pacs.start()
    assert service.deliver_due(now=at(600))["web"].delivered == 2
    assert pacs.sop_instance_uids() == sorted(first + second)


# -- pynetdicom SCPs with chosen answers ----------------------------------------------------
@dataclass
class Scp:
    port: int
    statuses: dict[str, int] = field(default_factory=dict)  # SOP Instance UID -> status
    received: list[str] = field(default_factory=list)
    calling: list[str] = field(default_factory=list)
    hook: Callable[[str], None] | None = None


@pytest.fixture
def start_scp() -> Iterator[Callable[..., Scp]]:
    servers = []

    def start(*, require_calling_aet: Sequence[str] = (), contexts: Any = None) -> Scp:
        ae = AE(ae_title="TESTSCP")
        ae.supported_contexts = StoragePresentationContexts if contexts is None else contexts
        ae.require_calling_aet = list(require_calling_aet)
        scp = Scp(port=free_port())

        def on_store(event: Any) -> int:
            uid = str(event.request.AffectedSOPInstanceUID)
            scp.received.append(uid)
            scp.calling.append(event.assoc.requestor.ae_title)
            if scp.hook is not None:
                scp.hook(uid)
            return scp.statuses.get(uid, 0x0000)

        handlers: list[Any] = [(evt.EVT_C_STORE, on_store)]
        server = ae.start_server(("127.0.0.1", scp.port), block=False, evt_handlers=handlers)
        assert server is not None
        servers.append(server)
        return scp

    yield start
    for server in servers:
        server.shutdown()


@pytest.mark.parametrize(
    ("status", "delivered"),
    [
        (0xA700, False),
        (0xC000, False),
        (0x0122, False),
        (0xFFF0, False),
        (0xB000, True),
        (0x0001, True),
    ],
    ids=[
        "out-of-resources",
        "cannot-understand",
        "sop-class-not-supported",
        "unknown",
        "warning-coercion",
        "warning",
    ],
)
def test_each_instance_status_decides_its_row(
    make_env: Callable[..., Env],
    start_scp: Callable[..., Scp],
    database_url: str,
    status: int,
    delivered: bool,
) -> None:
    scp = start_scp()
    env = make_env(dicom("scp", scp.port, "TESTSCP"), database_url=database_url)
    uids = env.stage(3)
    scp.statuses[uids[1]] = status
    report = env.service().deliver_due(now=at(0))["scp"]
    assert scp.received == uids  # one association, every instance offered
    assert set(scp.calling) == {"KI67NODE"}  # our node.ae_title
    states = env.states()
    assert states[uids[0]] == states[uids[2]] == OutboxState.DELIVERED
    if delivered:
        assert states[uids[1]] == OutboxState.DELIVERED and report.delivered == 3
        return
    assert states[uids[1]] == OutboxState.PENDING and report.retried == 1
    row = next(r for r in env.rows() if r.sop_instance_uid == uids[1])
    assert f"0x{status:04X}" in (row.last_error or "")
    scp.statuses.clear()  # the PACS recovers
    assert env.service().deliver_due(now=at(60))["scp"].delivered == 1
    assert scp.received == [*uids, uids[1]]  # only the failed one was sent again


def test_a_rejected_association_is_retried(
    make_env: Callable[..., Env], start_scp: Callable[..., Scp], database_url: str
) -> None:
    scp = start_scp(require_calling_aet=["SOMEONE"])
    env = make_env(dicom("scp", scp.port, "TESTSCP"), database_url=database_url)
    env.stage(2)
    assert env.service().deliver_due(now=at(0))["scp"].retried == 2
    rows = env.rows()
    assert {r.state for r in rows} == {OutboxState.PENDING}
    assert all("rejected the association" in (r.last_error or "") for r in rows)
    assert scp.received == []


def test_a_refused_connection_and_an_unaccepted_sop_class_are_retried(
    make_env: Callable[..., Env], start_scp: Callable[..., Scp]
) -> None:
    scp = start_scp(contexts=[build_context(CTImageStorage), build_context(Verification)])
    env = make_env(dicom("closed", free_port()), dicom("ct", scp.port, "TESTSCP"))
    env.stage(1)
    report = env.service().deliver_due(now=at(0))
    assert (report["closed"].retried, report["ct"].retried) == (1, 1)
    errors = {r.destination: r.last_error or "" for r in env.rows()}
    assert "could not be reached" in errors["closed"]
    assert "did not accept this object" in errors["ct"]


def test_stop_during_a_batch_finishes_the_instance_in_flight_and_gives_the_rest_back(
    make_env: Callable[..., Env], start_scp: Callable[..., Scp]
) -> None:
    scp = start_scp()
    env = make_env(dicom("scp", scp.port, "TESTSCP"))
    uids = env.stage(4)
    service = env.service()
    scp.hook = lambda _uid: service.request_stop()
    report = service.deliver_due(now=at(0))["scp"]
    assert (report.delivered, report.not_sent) == (1, 3)
    rows = {r.sop_instance_uid: r for r in env.rows()}
    assert rows[uids[0]].state == OutboxState.DELIVERED
    assert {(rows[u].state, rows[u].attempts, rows[u].next_attempt_at) for u in uids[1:]} == {
        (OutboxState.PENDING, 0, at(0))
    }


# -- folders, give-up, isolation, robustness --------------------------------------------
def test_folder_destinations_write_atomically_under_data_dir(
    make_env: Callable[..., Env], tmp_path: Path
) -> None:
    absolute = tmp_path / "elsewhere"
    env = make_env(
        Destination(name="rel", type="folder", path="exports/site"),
        Destination(name="abs", type="folder", path=str(absolute)),
        Destination(name="escape", type="folder", path="../../outside"),
    )
    uids = env.stage(2)
    report = env.service().deliver_due(now=at(0))
    assert (report["rel"].delivered, report["abs"].delivered, report["escape"].retried) == (2, 2, 2)
    data_dir = env.settings.data_dir
    staged = {p.name: p.read_bytes() for p in (data_dir / "results").rglob("*.dcm")}
    for root in (data_dir / "exports" / "site", absolute):
        copies = sorted(root.rglob("*"))
        files = [p for p in copies if p.is_file()]
        assert sorted(p.name for p in files) == sorted(f"{u}.dcm" for u in uids)
        assert all(len(p.relative_to(root).parts) == 3 for p in files)  # study/series/sop
        assert all(p.read_bytes() == staged[p.name] for p in files)
    escape_errors = {r.last_error for r in env.rows() if r.destination == "escape"}
    assert escape_errors == {
        "destination escape: path '../../outside' leaves data_dir; use a path under data_dir "
        "or an absolute one"
    }
    assert not (tmp_path.parent / "outside").exists() and not (tmp_path / "outside").exists()
    assert not list(tmp_path.rglob("*.part"))


def test_no_destination_means_the_default_outbox_folder(make_env: Callable[..., Env]) -> None:
    env = make_env()
    uids = env.stage(1)
    assert env.service().deliver_due(now=at(0))["outbox"].delivered == 1
    assert [p.name for p in env.settings.outbox_dir.rglob("*.dcm")] == [f"{uids[0]}.dcm"]


def test_rows_are_given_up_after_the_configured_age_with_an_audit_event(
    make_env: Callable[..., Env], database_url: str
) -> None:
    env = make_env(
        dicom("dead", free_port()),
        database_url=database_url,
        delivery__give_up_after_hours=1,
    )
    env.stage(2)
    service = env.service()
    assert service.deliver_due(now=at(0))["dead"].retried == 2
    assert service.deliver_due(now=at(1800))["dead"].retried == 2
    assert service.deliver_due(now=at(3600))["dead"].failed == 2
    rows = env.rows()
    assert {(r.state, r.attempts) for r in rows} == {(OutboxState.FAILED, 3)}
    assert all("could not be reached" in (r.last_error or "") for r in rows)
    with env.sm() as s:
        events = list(
            s.scalars(select(AuditEvent).where(AuditEvent.kind == AuditKind.OUTBOX_FAILED))
        )
    assert sorted(e.sop_instance_uid or "" for e in events) == sorted(
        r.sop_instance_uid for r in rows
    )
    assert all(e.level == "error" and "gave up delivering" in e.message for e in events)
    assert CANARY not in repr([(e.message, e.detail) for e in events])
    assert service.deliver_due(now=at(7200))["dead"].claimed == 0  # failed rows stay failed


def test_rows_of_a_removed_destination_and_missing_files_fail(make_env: Callable[..., Env]) -> None:
    old = make_env(Destination(name="old", type="folder", path="old"))
    old.stage(1)
    env = make_env(
        Destination(name="new", type="folder", path="new"), delivery__give_up_after_hours=1
    )
    env.sm = old.sm  # the same database, a new configuration
    missing = env.stage(1)[0]
    row = next(r for r in env.rows() if r.sop_instance_uid == missing and r.destination == "new")
    (env.settings.data_dir / row.path).unlink()
    service = env.service()
    assert service.deliver_due(now=at(0))["new"].failed == 1  # its file is gone: never deliverable
    assert service.give_up_orphans(now=at(60)) == 0  # too young
    assert service.give_up_orphans(now=at(3600)) == 1
    errors = {(r.destination, r.state): r.last_error or "" for r in env.rows()}
    assert "is missing" in errors[("new", OutboxState.FAILED)]
    assert "no longer configured" in errors[("old", OutboxState.FAILED)]


def test_a_failing_destination_never_blocks_another(make_env: Callable[..., Env]) -> None:
    env = make_env(dicom("down", free_port()), Destination(name="disk", type="folder", path="d"))
    env.stage(3)
    report = env.service().deliver_due(now=at(0))
    assert (report["down"].retried, report["disk"].delivered) == (3, 3)


def test_database_errors_are_reported_not_raised(
    make_env: Callable[..., Env], tmp_path: Path
) -> None:
    env = make_env(Destination(name="disk", type="folder", path="d"))
    broken = make_sessionmaker(make_engine(f"sqlite:///{tmp_path / 'empty.db'}"))  # no schema
    report = delivery_service(env.settings, broken).deliver_due(now=at(0))["disk"]
    assert "database unavailable" in report.error and report.claimed == 0


def test_backoff_doubles_with_jitter_and_is_bounded(make_env: Callable[..., Env]) -> None:
    env = make_env(delivery__retry_initial_seconds=10, delivery__retry_max_seconds=600)
    service = env.service()
    for attempts, top in [(1, 10), (2, 20), (3, 40), (7, 600), (50, 600)]:
        delays = [service.backoff(attempts).total_seconds() for _ in range(50)]
        assert all(0.75 * top <= d <= top for d in delays), (attempts, min(delays), max(delays))
        assert len(set(delays)) > 1  # jitter spreads retries of many rows


def test_the_service_threads_deliver_and_stop(make_env: Callable[..., Env]) -> None:
    env = make_env(Destination(name="disk", type="folder", path="d"), delivery__poll_seconds=0.05)
    service = env.service()
    service.start()
    try:
        assert service.alive()
        env.stage(2, now=dt.datetime(2000, 1, 1))  # due at once for the real clock
        deadline = time.monotonic() + 10
        while set(env.states().values()) != {OutboxState.DELIVERED} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(env.states().values()) == {OutboxState.DELIVERED}
    finally:
        started = time.monotonic()
        service.stop(timeout=5)
    assert time.monotonic() - started < 2
    assert not service.alive()
