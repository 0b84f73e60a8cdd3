"""The ingest path on SQLite and PostgreSQL: durable file, then row, then
Success; duplicates; late instances; database down; start-up recovery."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from daemon.db.engine import make_engine, make_sessionmaker, migrate
from daemon.db.models import Instance, Job, QuarantinedInstance, Series, SeriesDecision
from daemon.dicom.dimse_status import Status
from daemon.dicom.file_meta import file_meta
from daemon.dicom.storage import failure_status
from daemon.errors import NodeError
from daemon.intake.decisions import decide
from daemon.intake.ingest import IngestStore
from daemon.intake.spool import Spool, SpoolTemp
from daemon.jobs.queue import JobQueue
from daemon.serve import enqueue_missing_jobs, reconcile_spool
from daemon.settings import FilterSettings
from tests.factories import make_mr_series

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _encoded(ds: Dataset) -> bytes:
    """The dataset part as a sender would put it on the wire (Explicit VR LE)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    clean = Dataset()
    clean.update(ds)
    write_dataset(buf, clean)
    return buf.getvalue()


def _receive(store: IngestStore, spool: Spool, ds: Dataset, *, mutate: bytes = b"") -> int:
    temp = spool.open_temp()
    temp.write(file_meta(ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT_LE, "SENDER"))
    temp.write(_encoded(ds) + mutate)
    temp.flush()
    return int(
        _status(store, temp, sop_class=ds.SOPClassUID, sop_instance=ds.SOPInstanceUID, aet="SENDER")
    )


def _status(
    store: IngestStore, temp: SpoolTemp, *, sop_class: str, sop_instance: str, aet: str
) -> int:
    """What the association answers: the outcome's status, or the status of the error."""
    try:
        outcome = store.store(temp, sop_class=sop_class, sop_instance=sop_instance, calling_aet=aet)
    except NodeError as exc:
        return failure_status(exc)[0]
    return outcome.status


@pytest.fixture
def node(database_url: str, tmp_path: Path):
    engine = make_engine(database_url)
    migrate(engine)
    spool = Spool(tmp_path / "spool")
    touched: list[int] = []
    store = IngestStore(engine, spool, on_stored=touched.append)
    yield engine, spool, store, touched
    engine.dispose()


def _count(engine, column) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count(column))).scalar_one())


def test_series_is_stored_and_recorded(node) -> None:
    engine, spool, store, touched = node
    series = make_mr_series(n_slices=8)
    assert [_receive(store, spool, ds) for ds in series] == [Status.SUCCESS] * 8
    assert _count(engine, Instance.id) == 8
    with engine.connect() as conn:
        row = conn.execute(select(Series.instance_count, Series.state)).one()
        paths = conn.execute(select(Instance.path)).scalars().all()
    assert tuple(row) == (8, "receiving")
    assert len(set(touched)) == 1 and len(touched) == 8
    for relpath in paths:  # the published file is the received dataset, byte for byte
        ds = pydicom.dcmread(spool.path_of(relpath))
        assert ds.PatientName == "TEST^PATIENT"
    assert sorted(paths) == sorted(spool.published_files())
    assert list(spool.tmp_dir.iterdir()) == []


def test_duplicates_identical_and_conflicting(node) -> None:
    engine, spool, store, _ = node
    ds = make_mr_series(n_slices=1)[0]
    assert _receive(store, spool, ds) == Status.SUCCESS
    with engine.connect() as conn:
        first = conn.execute(select(Instance.path, Instance.sha256)).one()
    first_bytes = spool.path_of(first.path).read_bytes()
    assert _receive(store, spool, ds) == Status.SUCCESS  # same bytes again
    assert _count(engine, Instance.id) == 1
    assert _count(engine, QuarantinedInstance.id) == 0
    changed = ds.copy()
    changed.SeriesDescription = "changed by the sender"
    assert _receive(store, spool, changed) == Status.SUCCESS
    assert _count(engine, Instance.id) == 1
    assert _count(engine, QuarantinedInstance.id) == 1
    assert spool.path_of(first.path).read_bytes() == first_bytes  # never overwritten
    with engine.connect() as conn:
        q = conn.execute(select(QuarantinedInstance.path)).scalar_one()
    assert pydicom.dcmread(spool.path_of(q)).SeriesDescription == "changed by the sender"
    assert len(list(spool.published_files())) == 1


def test_mismatched_uid_is_refused_and_nothing_kept(node) -> None:
    engine, spool, store, _ = node
    ds = make_mr_series(n_slices=1)[0]
    temp = spool.open_temp()
    temp.write(file_meta(ds.SOPClassUID, ds.SOPInstanceUID, EXPLICIT_LE, "X"))
    temp.write(_encoded(ds))
    temp.flush()
    status = _status(store, temp, sop_class=ds.SOPClassUID, sop_instance="1.2.3.4", aet="X")
    assert status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert _count(engine, Instance.id) == 0
    assert list(spool.published_files()) == [] and list(spool.tmp_dir.iterdir()) == []


def test_late_instance_reopens_decided_series_as_new_revision(node) -> None:
    engine, spool, store, _ = node
    series = make_mr_series(n_slices=20)
    for ds in series[:-1]:
        _receive(store, spool, ds)
    queue = JobQueue(make_sessionmaker(engine), max_attempts=3, backoff_seconds=1)
    with engine.begin() as conn:
        conn.execute(Series.__table__.update().values(state="complete"))
    cfg = FilterSettings(min_slices=16)
    decision = decide(engine, spool, queue, cfg, 1, 0)
    assert decision is not None and decision.qualifies, decision
    assert decide(engine, spool, queue, cfg, 1, 0) is None  # decided once
    assert _receive(store, spool, series[-1]) == Status.SUCCESS
    with engine.connect() as conn:
        state, revision, count = conn.execute(
            select(Series.state, Series.revision, Series.instance_count)
        ).one()
    assert (state, revision, count) == ("receiving", 1, 20)
    assert _count(engine, Job.id) == 1
    assert _count(engine, SeriesDecision.id) == 1


def test_database_down_answers_out_of_resources_and_keeps_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    spool = Spool(tmp_path / "spool")
    store = IngestStore(engine, spool)
    (tmp_path / "db.sqlite").chmod(0o400)
    engine.dispose()
    ro = make_engine(f"sqlite:///file:{tmp_path / 'db.sqlite'}?mode=ro&uri=true")
    store.engine = ro
    ds = make_mr_series(n_slices=1)[0]
    assert _receive(store, spool, ds) == Status.OUT_OF_RESOURCES
    assert list(spool.published_files()) == [] and list(spool.tmp_dir.iterdir()) == []


def test_reconcile_reindexes_orphan_files_and_enqueues_lost_jobs(node) -> None:
    engine, spool, store, _ = node
    series = make_mr_series(n_slices=3)
    _receive(store, spool, series[0])
    # A crash after the rename, before the commit: a published file without a row.
    orphan = spool.write(
        [
            file_meta(series[1].SOPClassUID, series[1].SOPInstanceUID, EXPLICIT_LE, "SENDER"),
            _encoded(series[1]),
        ]
    )
    fresh = IngestStore(engine, spool)
    assert reconcile_spool(engine, spool, fresh) == 1
    assert reconcile_spool(engine, spool, fresh) == 0
    with engine.connect() as conn:
        paths = set(conn.execute(select(Instance.path)).scalars())
    assert orphan.relpath in paths
    queue = JobQueue(make_sessionmaker(engine), max_attempts=3, backoff_seconds=1)
    with engine.begin() as conn:
        conn.execute(Series.__table__.update().values(state="decided", qualifies=True))
        conn.execute(
            SeriesDecision.__table__.insert().values(
                series_id=1, revision=0, qualifies=True, reason="test"
            )
        )
    assert enqueue_missing_jobs(engine, queue) == 1
    assert enqueue_missing_jobs(engine, queue) == 0


@pytest.mark.parametrize(
    ("charset", "name"),
    [("ISO_IR 100", "Müller^Jörg"), ("ISO_IR 192", "Ōta^Jūrō"), ("", "PLAIN^ASCII")],
    ids=["latin1", "utf8", "default"],
)
def test_patient_fields_are_decoded_with_the_character_set(
    tmp_path: Path, charset: str, name: str
) -> None:
    from daemon.db.models import Study

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    spool = Spool(tmp_path / "spool")
    store = IngestStore(engine, spool)
    ds = make_mr_series(n_slices=1)[0]
    if charset:
        ds.SpecificCharacterSet = charset
    ds.PatientName = name
    assert _receive(store, spool, ds) == Status.SUCCESS
    with engine.connect() as conn:
        assert conn.execute(select(Study.patient_name)).scalar_one() == name


def test_resent_instance_restores_a_file_that_retention_purged(node) -> None:
    from sqlalchemy import update

    from daemon.db.models import utcnow

    engine, spool, store, _ = node
    ds = make_mr_series(n_slices=1)[0]
    assert _receive(store, spool, ds) == Status.SUCCESS
    with engine.begin() as conn:
        rel = conn.execute(select(Instance.path)).scalar_one()
        conn.execute(update(Instance).values(purged_at=utcnow()))
    spool.delete(rel)  # what spool retention does
    assert _receive(store, spool, ds) == Status.SUCCESS
    with engine.connect() as conn:
        row = conn.execute(select(Instance.path, Instance.purged_at)).one()
    assert row.purged_at is None
    assert spool.path_of(row.path).is_file()
    assert list(spool.published_files()) == [row.path]
