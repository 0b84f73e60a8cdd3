"""Query/retrieve sources against a real Orthanc: C-FIND, C-GET, C-MOVE and DICOMweb.

Two studies of one patient and one of another are uploaded by REST; each
source type then answers the same questions. The C-MOVE destination is a
pynetdicom Storage SCP started here (the node's listener takes that role later).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

from daemon.cli import main
from daemon.errors import SourceError
from daemon.intake.headers import extract_header
from daemon.sources.base import Source
from daemon.sources.config import SourceConfig
from daemon.sources.dimse import DicomSource
from daemon.sources.factory import make_source
from tests.conftest import free_port
from tests.factories import make_mr_series, write_series
from tests.orthanc import Orthanc, orthanc_fixture

pytestmark = [pytest.mark.slow, pytest.mark.orthanc, pytest.mark.timeout(600)]

orthanc = orthanc_fixture()
NODE_AE = "KI67NODE"
KINDS = ("dicom", "dicomweb")


@dataclass
class Archive:
    """What was uploaded: the patient's two studies (old, new), the other patient's one."""

    orthanc: Orthanc
    series: dict[str, list[Dataset]] = field(default_factory=dict)  # series UID -> data sets
    studies: dict[str, tuple[str, dt.date, str]] = field(
        default_factory=dict
    )  # UID -> (pid, date, series)
    mover: MoveScp | None = None


class MoveScp:
    """A Storage SCP (the C-MOVE destination); its arrivals, by series, as :class:`MoveArrivals`."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.expected: set[tuple[str, str]] = set()
        self.ae = AE(ae_title=NODE_AE)
        self.ae.add_supported_context(MRImageStorage)
        self.server = self.ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
        )

    def _store(self, event: Any) -> int:
        ds = event.dataset
        where = self.folder / ds.StudyInstanceUID / ds.SeriesInstanceUID
        where.mkdir(parents=True, exist_ok=True)
        (where / f"{ds.SOPInstanceUID}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    def expect(self, study_uid: str, series_uid: str) -> None:
        self.expected.add((study_uid, series_uid))

    def collect(self, study_uid: str, series_uid: str, dest_folder: Path) -> list[Path]:
        assert (study_uid, series_uid) in self.expected
        dest_folder.mkdir(parents=True, exist_ok=True)
        out = []
        for path in sorted((self.folder / study_uid / series_uid).glob("*.dcm")):
            out.append(Path(shutil.move(path, dest_folder / path.name)))
        return out

    def discard(self, study_uid: str, series_uid: str) -> None:
        self.expected.discard((study_uid, series_uid))
        shutil.rmtree(self.folder / study_uid / series_uid, ignore_errors=True)

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def archive(orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Archive]:
    orthanc.clear()
    root = tmp_path_factory.mktemp("archive")
    found = Archive(orthanc)
    for number, (pid, date) in enumerate(
        [
            ("PAT-A", dt.date(2019, 5, 2)),
            ("PAT-A", dt.date(2023, 3, 4)),
            ("PAT-B", dt.date(2022, 1, 1)),
        ]
    ):
        series = make_mr_series(
            patient_id=pid,
            n_slices=16,
            rows=32,
            cols=32,
            overrides={"StudyDate": f"{date:%Y%m%d}", "AccessionNumber": f"ACC{number}"},
        )
        for path in write_series(series, root / str(number)):
            orthanc.upload(path)
        uid, series_uid = str(series[0].StudyInstanceUID), str(series[0].SeriesInstanceUID)
        found.studies[uid] = (pid, date, series_uid)
        found.series[series_uid] = series
    mover = MoveScp(root / "moved")
    found.mover = mover
    # Orthanc answers C-FIND/C-GET/C-MOVE for a registered AE; the move destination is that AE.
    orthanc.add_modality(NODE_AE, NODE_AE, "127.0.0.1", mover.port)
    try:
        yield found
    finally:
        mover.close()


def config(kind: str, o: Orthanc, **extra: Any) -> SourceConfig:
    if kind == "dicom":
        return SourceConfig(
            "pacs", "dicom", ae_title=o.aet, host=o.host, port=o.dicom_port,
            connect_timeout_seconds=5, timeout_seconds=30, **extra,
        )  # fmt: skip
    return SourceConfig(
        "web", "dicomweb", url=o.dicomweb_url, connect_timeout_seconds=5, timeout_seconds=30
    )


@pytest.fixture(params=KINDS)
def source(request: pytest.FixtureRequest, archive: Archive) -> Iterator[Source]:
    client = make_source(config(request.param, archive.orthanc), NODE_AE)
    try:
        yield client
    finally:
        client.close()


def patient_studies(archive: Archive, pid: str) -> list[str]:
    mine = [(date, uid) for uid, (p, date, _) in archive.studies.items() if p == pid]
    return [uid for _, uid in sorted(mine, reverse=True)]


def test_echo_answers_and_a_wrong_address_does_not(
    source: Source, archive: Archive, request: pytest.FixtureRequest
) -> None:
    source.echo()  # raises SourceError when the archive does not answer with Success
    kind = request.node.callspec.params["source"]
    wrong = config(kind, archive.orthanc)
    wrong = (
        dataclasses.replace(wrong, port=free_port())
        if kind == "dicom"
        else dataclasses.replace(wrong, url=wrong.url.rstrip("/") + "/no-such-service")
    )
    other = make_source(wrong, NODE_AE)
    try:
        with pytest.raises(SourceError):
            other.echo()
    finally:
        other.close()


def test_find_studies_gives_the_patients_studies_newest_first(
    source: Source, archive: Archive
) -> None:
    studies = source.find_studies("PAT-A")
    assert [s.study_uid for s in studies] == patient_studies(archive, "PAT-A")
    assert [s.study_date for s in studies] == [dt.date(2023, 3, 4), dt.date(2019, 5, 2)]
    assert all("MR" in s.modalities for s in studies)
    assert studies[0].accession_number == "ACC1"
    recent = source.find_studies("PAT-A", since=dt.date(2020, 1, 1))
    assert [s.study_uid for s in recent] == patient_studies(archive, "PAT-A")[:1]
    assert source.find_studies("PAT-A", modality="CT") == []
    assert source.find_studies("NOBODY") == []


def test_find_series_lists_the_studys_series(source: Source, archive: Archive) -> None:
    study_uid = patient_studies(archive, "PAT-B")[0]
    (series,) = source.find_series(study_uid)
    assert series.series_uid == archive.studies[study_uid][2]
    assert series.modality == "MR"
    assert series.number_of_instances == 16
    assert series.series_description


def test_instance_headers_are_enough_for_the_series_filter(
    source: Source, archive: Archive
) -> None:
    study_uid = patient_studies(archive, "PAT-A")[0]
    series_uid = archive.studies[study_uid][2]
    headers = source.find_instance_headers(study_uid, series_uid, limit=2)
    assert len(headers) == 2
    original = archive.series[series_uid][0]
    summary = extract_header(headers[0])
    for key in (
        "Modality", "SOPClassUID", "SeriesDescription", "ImageType", "MRAcquisitionType",
        "SliceThickness", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns",
    ):  # fmt: skip
        assert summary.get(key) not in (None, "", []), key
    assert summary["SeriesDescription"] == original.SeriesDescription
    assert "PixelData" not in headers[0]


def _assert_same_data_sets(files: list[Path], uploaded: list[Dataset]) -> None:
    by_uid = {str(ds.SOPInstanceUID): ds for ds in uploaded}
    got = {}
    for path in files:
        ds = pydicom.dcmread(path)
        got[str(ds.SOPInstanceUID)] = ds
    assert sorted(got) == sorted(by_uid)
    for uid, ds in got.items():
        assert ds == by_uid[uid]
        assert ds.PixelData == by_uid[uid].PixelData


def test_retrieve_series_writes_the_uploaded_instances(
    source: Source, archive: Archive, tmp_path: Path
) -> None:
    study_uid = patient_studies(archive, "PAT-A")[1]
    series_uid = archive.studies[study_uid][2]
    started = time.monotonic()
    files = source.retrieve_series(study_uid, series_uid, tmp_path / "got")
    assert time.monotonic() - started < 30
    assert len(files) == 16
    assert sorted(files) == sorted((tmp_path / "got").iterdir())  # no temp file left behind
    _assert_same_data_sets(files, archive.series[series_uid])


def test_retrieving_an_unknown_series_is_a_clear_error(
    source: Source, archive: Archive, tmp_path: Path
) -> None:
    study_uid = patient_studies(archive, "PAT-A")[0]
    with pytest.raises(SourceError, match="has no series 1.2.3.4 in study"):
        source.retrieve_series(study_uid, "1.2.3.4", tmp_path / "got")
    assert not (tmp_path / "got").exists() or list((tmp_path / "got").iterdir()) == []
    with pytest.raises(SourceError, match="is not a DICOM UID"):
        source.retrieve_series(study_uid, "../etc", tmp_path / "got")


def test_c_move_sends_the_series_to_our_ae(archive: Archive, tmp_path: Path) -> None:
    assert archive.mover is not None
    study_uid = patient_studies(archive, "PAT-B")[0]
    series_uid = archive.studies[study_uid][2]
    moving = DicomSource(
        config("dicom", archive.orthanc, retrieve="move"), NODE_AE, arrivals=archive.mover
    )
    try:
        files = moving.retrieve_series(study_uid, series_uid, tmp_path / "moved")
    finally:
        moving.close()
    assert len(files) == 16
    _assert_same_data_sets(files, archive.series[series_uid])
    # Without a receiver for the arrivals, move is refused before anything is asked.
    lonely = DicomSource(config("dicom", archive.orthanc, retrieve="move"), NODE_AE)
    with pytest.raises(SourceError, match="needs the node's listener"):
        lonely.retrieve_series(study_uid, series_uid, tmp_path / "none")
    lonely.close()


def test_c_move_to_an_unknown_destination_fails_and_leaves_nothing(
    archive: Archive, tmp_path: Path
) -> None:
    assert archive.mover is not None
    study_uid = patient_studies(archive, "PAT-B")[0]
    series_uid = archive.studies[study_uid][2]
    archive.orthanc.add_modality("OTHER", "OTHERAE", "127.0.0.1", archive.mover.port)
    moving = DicomSource(
        config("dicom", archive.orthanc, retrieve="move"), "OTHERAE", arrivals=archive.mover
    )
    moving.move_destination = "NOSUCHAE"
    try:
        with pytest.raises(SourceError, match="C-MOVE with status 0x"):
            moving.retrieve_series(study_uid, series_uid, tmp_path / "moved")
    finally:
        moving.close()
    assert not (tmp_path / "moved").exists() or list((tmp_path / "moved").iterdir()) == []


def test_echo_command_reaches_both_kinds(
    archive: Archive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    o = archive.orthanc
    path = tmp_path / "c.toml"
    path.write_text(
        f'[node]\nae_title = "{NODE_AE}"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[[sources]]\nname = "pacs"\ntype = "dicom"\nae_title = "{o.aet}"\n'
        f'host = "{o.host}"\nport = {o.dicom_port}\n'
        f'[[destinations]]\nname = "web"\ntype = "dicomweb"\nurl = "{o.dicomweb_url}"\n',
        encoding="utf-8",
    )
    assert main(["echo", "pacs", "--config", str(path)]) == 0
    assert main(["echo", "web", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "source pacs" in out and "answered C-ECHO" in out and "answered QIDO-RS" in out


@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_archive_is_a_quick_clear_error(archive: Archive, kind: str) -> None:
    """Last in the module: stops Orthanc (and starts it again)."""
    archive.orthanc.stop()
    client = make_source(config(kind, archive.orthanc), NODE_AE)
    try:
        started = time.monotonic()
        with pytest.raises(SourceError, match="could not be reached|is it running"):
            client.echo()
        with pytest.raises(SourceError, match="could not be reached|is it running"):
            client.find_studies("PAT-A")
        assert time.monotonic() - started < 12  # the 5 s connect timeout, not minutes
    finally:
        client.close()
        archive.orthanc.start()
