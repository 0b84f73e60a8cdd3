"""Re-running an analysed series: the radiologist's characteristics
(``ki67node characteristics``) and a received DICOM SEG each queue a new
revision; our own SEG routed back never does; the new run finds its
predecessor SR. On SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage, generate_uid
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from daemon.cli import main
from daemon.db.engine import make_engine, make_sessionmaker, migrate
from daemon.db.models import (
    Instance,
    Job,
    OutboxItem,
    Series,
    SeriesDecision,
    Study,
    StudyCharacteristics,
)
from daemon.db.states import JobState
from daemon.intake.reanalysis import (
    handle_received_seg,
    latest_received_seg,
    previous_sr,
    requeue_series,
)
from daemon.intake.spool import Spool
from daemon.jobs.queue import JobQueue
from daemon.settings import Settings

STUDY = "1.2.826.0.1.3680043.10.99.1"
T1C = "1.2.826.0.1.3680043.10.99.1.1"
SR_UID = "1.2.826.0.1.3680043.10.99.1.9.1"


@dataclass
class World:
    settings: Settings
    engine: Engine
    queue: JobQueue
    spool: Spool
    series_id: int
    study_id: int

    def series(self) -> Series:
        with Session(self.engine) as s:
            row = s.get(Series, self.series_id)
            assert row is not None
            return row

    def jobs(self) -> list[tuple[int, str]]:
        with Session(self.engine) as s:
            rows = s.execute(
                select(Job.revision, Job.state)
                .where(Job.series_id == self.series_id)
                .order_by(Job.revision)
            )
            return [(int(r.revision), str(r.state)) for r in rows]


@pytest.fixture
def world(
    make_settings: Callable[..., Settings],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> Iterator[World]:
    settings = make_settings(database__url=database_url)
    monkeypatch.setenv("KI67NODE_NODE__DATA_DIR", f'"{tmp_path / "data"}"')
    monkeypatch.setenv("KI67NODE_DATABASE__URL", f'"{database_url}"')
    engine = make_engine(database_url)
    migrate(engine)
    with Session(engine) as s, s.begin():
        study = Study(study_uid=STUDY, patient_id="TEST0001")
        s.add(study)
        s.flush()
        series = Series(
            series_uid=T1C, study_id=study.id, modality="MR", state="decided", qualifies=True
        )
        s.add(series)
        s.flush()
        s.add(
            Job(
                series_id=series.id,
                revision=0,
                state=JobState.DONE,
                result={
                    "outputs": [
                        {
                            "kind": "sr",
                            "series_uid": SR_UID + ".0",
                            "sop_instance_uid": SR_UID,
                            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
                        }
                    ]
                },
            )
        )
        ids = (series.id, study.id)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    queue = JobQueue(make_sessionmaker(engine), max_attempts=3, backoff_seconds=0)
    yield World(settings, engine, queue, Spool(settings.spool_dir), *ids)
    engine.dispose()


def test_characteristics_are_recorded_merged_and_requeue_the_series(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["characteristics", STUDY, "--necrosis", "yes", "--edema-index", "1.8"]) == 0
    assert "re-analysis queued for 1 series" in capsys.readouterr().out
    assert world.series().revision == 1
    assert world.jobs() == [(0, JobState.DONE), (1, JobState.QUEUED)]
    assert main(["characteristics", STUDY, "--csf-cleft", "no"]) == 0
    with Session(world.engine) as s:
        row = s.scalar(select(StudyCharacteristics))
        assert row is not None
        assert (row.edema_index, row.necrosis, row.csf_cleft, row.capsular_enhancement) == (
            1.8,
            True,
            False,
            None,
        )
        reasons = list(s.scalars(select(SeriesDecision.reason).order_by(SeriesDecision.id)))
    assert reasons == ["re-analysis: radiological characteristics entered"] * 2
    assert world.series().revision == 2
    with Session(world.engine) as s:
        assert previous_sr(s, world.series_id, 2) == {
            "kind": "sr",
            "series_uid": SR_UID + ".0",
            "sop_instance_uid": SR_UID,
            "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.34",
        }
        assert previous_sr(s, world.series_id, 0) is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["1.2.3.999", "--necrosis", "no"], "has not been received by this node"),
        ([STUDY], "give at least one of"),
        ([STUDY, "--necrosis", "maybe"], "necrosis"),
        ([STUDY, "--edema-index", "0.5"], "edema_index must be between"),
        (["1.2.x", "--necrosis", "no"], "not a valid Study Instance UID"),
    ],
    ids=["unknown-study", "nothing-given", "bad-yes-no", "bad-edema-index", "bad-uid"],
)
def test_characteristics_refuses_bad_input(
    world: World, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["characteristics", *args]) == 1
    assert message in capsys.readouterr().err
    assert world.series().revision == 0


def _seg_file(world: World, name: str, referenced: str) -> tuple[str, str]:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = SegmentationStorage
    sop = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.SOPClassUID = SegmentationStorage
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SEG"
    item = Dataset()
    item.SeriesInstanceUID = referenced
    ds.ReferencedSeriesSequence = [item]
    rel = f"seg/{name}.dcm"
    path = world.settings.spool_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    with Session(world.engine) as s, s.begin():
        series = Series(series_uid=ds.SeriesInstanceUID, study_id=world.study_id, modality="SEG")
        s.add(series)
        s.flush()
        s.add(
            Instance(
                sop_instance_uid=sop,
                sop_class_uid=SegmentationStorage,
                series_id=series.id,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                path=rel,
                size_bytes=path.stat().st_size,
                sha256="0" * 64,
            )
        )
        seg_series_id = series.id
    return sop, str(seg_series_id)


def test_received_seg_requeues_its_series_and_is_found_by_the_job(world: World) -> None:
    sop, seg_series = _seg_file(world, "radiologist", T1C)
    reason, details = handle_received_seg(world.engine, world.spool, world.queue, int(seg_series))
    assert reason == "received SEG: re-analysis queued"
    assert details == {"referenced_series": [T1C]}
    assert world.jobs() == [(0, JobState.DONE), (1, JobState.QUEUED)]
    with Session(world.engine) as s:
        found = latest_received_seg(s, world.spool, world.study_id, T1C)
        assert found is not None and found.name == "radiologist.dcm"
        assert latest_received_seg(s, world.spool, world.study_id, "1.2.3.4") is None


def test_our_own_seg_routed_back_is_ignored(world: World) -> None:
    sop, seg_series = _seg_file(world, "ours", T1C)
    with Session(world.engine) as s, s.begin():
        s.add(OutboxItem(destination="pacs", sop_instance_uid=sop, path="results/x.dcm"))
    reason, _ = handle_received_seg(world.engine, world.spool, world.queue, int(seg_series))
    assert reason == "our own SEG routed back to us: ignored"
    assert world.jobs() == [(0, JobState.DONE)]
    with Session(world.engine) as s:
        assert latest_received_seg(s, world.spool, world.study_id, T1C) is None


def test_seg_for_an_unknown_series_is_kept_without_a_job(world: World) -> None:
    _, seg_series = _seg_file(world, "other", "1.2.826.0.1.3680043.10.99.7")
    reason, details = handle_received_seg(world.engine, world.spool, world.queue, int(seg_series))
    assert reason.startswith("received SEG for a series this node has not analysed")
    assert world.jobs() == [(0, JobState.DONE)]


def test_requeue_skips_a_series_that_does_not_qualify(world: World) -> None:
    with Session(world.engine) as s, s.begin():
        row = s.get(Series, world.series_id)
        assert row is not None
        row.qualifies = False
    assert requeue_series(world.engine, world.queue, world.series_id, "x") is False
    assert world.series().revision == 0
