"""Staging results: written once, atomically, one outbox row per destination (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import io
import os
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from daemon.db.engine import make_engine, make_sessionmaker, migrate
from daemon.db.models import OutboxItem
from daemon.db.states import OutboxState
from daemon.delivery.outbox import (
    DEFAULT_DESTINATION,
    checked_uid,
    publish_bytes,
    remove_stale_parts,
    stage_results,
)
from daemon.destinations import Destination
from daemon.errors import JobError
from daemon.ops.status import collect_status
from daemon.settings import Settings
from tests.conftest import outbox_of, with_destinations
from tests.factories import make_mr_series

T0 = dt.datetime(2026, 3, 1, 12, 0, 0)
PACS = Destination(name="pacs", type="dicom", ae_title="PACS", host="127.0.0.1", port=4242)
ARCHIVE = Destination(name="archive", type="folder", path="exports")


@pytest.fixture
def node(
    make_settings: Callable[..., Settings], database_url: str
) -> Iterator[tuple[Settings, sessionmaker[Session]]]:
    settings = make_settings(database__url=database_url)
    engine = make_engine(settings.database_url)
    migrate(engine)
    yield settings, make_sessionmaker(engine)
    engine.dispose()


def results(n: int = 3) -> list[Dataset]:
    return make_mr_series(n_slices=n, rows=8, cols=8)


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def rows(sm: sessionmaker[Session]) -> list[OutboxItem]:
    with sm() as s:
        return list(s.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def test_each_result_is_written_once_under_its_uids_and_queued_per_destination(
    node: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings, sm = node
    settings = with_destinations(settings, PACS, ARCHIVE)
    datasets = results(3)
    staged = stage_results(*outbox_of(settings), sm, None, datasets, now=T0)
    assert [s.sop_instance_uid for s in staged] == [str(ds.SOPInstanceUID) for ds in datasets]
    for obj, ds in zip(staged, datasets, strict=True):
        expected = f"results/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert obj.relpath == expected
        assert obj.written and obj.queued == ("archive", "pacs")
        assert (settings.data_dir / expected).read_bytes() == encoded(ds)
    got = rows(sm)
    assert sorted((r.destination, r.sop_instance_uid) for r in got) == sorted(
        (d, str(ds.SOPInstanceUID)) for d in ("pacs", "archive") for ds in datasets
    )
    assert {(r.state, r.attempts, r.next_attempt_at, r.created_at) for r in got} == {
        (OutboxState.PENDING, 0, T0, T0)
    }
    assert not list(settings.data_dir.rglob("*.part"))


def test_staging_twice_gives_one_file_and_one_row_per_destination(
    node: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings, sm = node
    settings = with_destinations(settings, PACS, ARCHIVE)
    datasets = results(2)
    stage_results(*outbox_of(settings), sm, None, datasets, now=T0)
    again = stage_results(*outbox_of(settings), sm, None, datasets, now=T0 + dt.timedelta(hours=1))
    assert [(s.written, s.queued) for s in again] == [(False, ()), (False, ())]
    assert len(rows(sm)) == 4
    assert len(list((settings.data_dir / "results").rglob("*.dcm"))) == 2


def test_a_new_destination_gets_rows_for_results_staged_again(
    node: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings, sm = node
    datasets = results(1)
    stage_results(*outbox_of(with_destinations(settings, PACS)), sm, None, datasets, now=T0)
    staged = stage_results(
        *outbox_of(with_destinations(settings, PACS, ARCHIVE)), sm, None, datasets, now=T0
    )
    assert staged[0].queued == ("archive",)
    assert sorted(r.destination for r in rows(sm)) == ["archive", "pacs"]


def test_no_destination_configured_queues_the_default_outbox_folder(
    node: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings, sm = node
    assert settings.destinations == ()
    stage_results(*outbox_of(settings), sm, None, results(1), now=T0)
    assert [r.destination for r in rows(sm)] == [DEFAULT_DESTINATION.name] == ["outbox"]
    assert settings.data_dir / DEFAULT_DESTINATION.path == settings.outbox_dir


def test_the_first_version_of_a_uid_is_kept(
    node: tuple[Settings, sessionmaker[Session]], caplog: pytest.LogCaptureFixture
) -> None:
    settings, sm = node
    caplog.set_level("INFO", logger="daemon.delivery.outbox")
    first = results(1)
    staged = stage_results(*outbox_of(settings), sm, None, first, now=T0)
    original = (settings.data_dir / staged[0].relpath).read_bytes()
    changed = first[0].copy()
    changed.SeriesDescription = "a retried job built other bytes"
    again = stage_results(*outbox_of(settings), sm, None, [changed], now=T0)
    assert not again[0].written
    assert (settings.data_dir / staged[0].relpath).read_bytes() == original
    assert "the staged version is kept" in caplog.text


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("SOPInstanceUID", "../../etc/passwd"),
        ("SeriesInstanceUID", "1.2.3/4"),
        ("StudyInstanceUID", "1.2.03"),
        ("SOPInstanceUID", "1." + "2" * 70),
        ("SOPClassUID", ""),
    ],
    ids=["dots", "slash", "leading-zero", "too-long", "no-class"],
)
def test_bad_uids_never_become_paths(
    node: tuple[Settings, sessionmaker[Session]], keyword: str, value: str
) -> None:
    settings, sm = node
    datasets = results(2)
    with warnings.catch_warnings():  # pydicom warns about the invalid value we set on purpose
        warnings.simplefilter("ignore")
        setattr(datasets[1], keyword, value)
    with pytest.raises(JobError, match="not a valid UID") as info:
        stage_results(*outbox_of(settings), sm, None, datasets, now=T0)
    assert info.value.retryable is False
    assert rows(sm) == []
    assert not (settings.data_dir / "results").exists()


def test_the_same_uid_twice_in_one_job_is_refused(
    node: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings, sm = node
    ds = results(1)[0]
    with pytest.raises(JobError, match="same SOP Instance UID twice"):
        stage_results(*outbox_of(settings), sm, None, [ds, ds], now=T0)


def test_checked_uid_names_what_is_wrong() -> None:
    assert checked_uid("1.2.840.10008.1.1", "x") == "1.2.840.10008.1.1"
    with pytest.raises(ValueError, match="Study Instance UID '1..2' is not a valid UID"):
        checked_uid("1..2", "Study Instance UID")


def test_publish_bytes_is_atomic_and_keeps_or_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b.dcm"
    assert publish_bytes(target, b"one") is True
    assert publish_bytes(target, b"two") is False  # kept: a result never changes
    assert target.read_bytes() == b"one"
    assert publish_bytes(target, b"one", replace=True) is False  # identical: untouched
    assert publish_bytes(target, b"three", replace=True) is True
    assert target.read_bytes() == b"three"
    assert sorted(p.name for p in target.parent.iterdir()) == ["b.dcm"]


def test_remove_stale_parts_removes_only_old_temp_files(tmp_path: Path) -> None:
    old = tmp_path / "x" / ".1.2.dcm.abc.part"
    new = tmp_path / "x" / ".1.3.dcm.def.part"
    kept = tmp_path / "x" / "1.2.dcm"
    for path in (old, new, kept):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    past = time.time() - 7200
    os.utime(old, (past, past))
    assert remove_stale_parts(tmp_path) == 1
    assert not old.exists() and new.exists() and kept.exists()
    assert remove_stale_parts(tmp_path / "missing") == 0


def test_status_counts_the_outbox_with_the_outbox_states(
    node: tuple[Settings, sessionmaker[Session]],
) -> None:
    settings, sm = node
    stage_results(*outbox_of(with_destinations(settings, PACS)), sm, None, results(3), now=T0)
    with sm.begin() as s:
        first, second, _ = s.scalars(select(OutboxItem).order_by(OutboxItem.id)).all()
        first.state = "delivered"
        second.state = "failed"
    outbox = collect_status(settings.data_dir, settings.database_target)["outbox"]
    assert outbox["by_destination"] == {"pacs": {"pending": 1, "delivered": 1, "failed": 1}}
    assert outbox["backlog"] == 1  # failed rows are given up, not waiting
    assert outbox["failed"] == 1
    assert outbox["oldest_pending"] == {"pacs": "2026-03-01T12:00:00Z"}
