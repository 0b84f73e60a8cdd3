"""A DICOMweb archive as a :class:`~daemon.sources.base.Source`: dicomweb-client.

QIDO-RS for studies, series and instances; WADO-RS instance metadata for the
headers (no pixels) and WADO-RS for a series (transfer syntax as stored:
``transfer-syntax=*``), each instance written as a Part 10 file. HTTP basic
authentication and https as for ``[[destinations]]`` (certificates checked
against the system's trust store); no retries here (the caller retries).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from daemon.errors import SourceError
from daemon.intake.headers import HEADER_KEYWORDS
from daemon.sources.base import (
    DEFAULT_HEADER_LIMIT,
    SeriesFolder,
    SeriesRecord,
    StudyRecord,
    by_instance_number,
    check_count,
    check_uid,
    select_series,
    select_studies,
    series_query_keys,
    study_query_keys,
)
from daemon.sources.config import SourceConfig

log = logging.getLogger(__name__)
T = TypeVar("T")


def _dataset(item: dict[str, Any]) -> Dataset:
    """A DICOM JSON object as a Dataset, bulk data (pixels) left out."""
    kept = {
        tag: element
        for tag, element in item.items()
        if not ("BulkDataURI" in element or "InlineBinary" in element)
    }
    return Dataset.from_json(kept)


class DicomwebSource:
    """QIDO-RS / WADO-RS client for one configured archive."""

    def __init__(self, config: SourceConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        if config.type != "dicomweb":
            raise SourceError(f"{config.peer}: not a dicomweb source (type {config.type!r})")
        self.config = config
        self.peer = config.peer
        self.session = requests.Session()
        if config.username:
            self.session.auth = (config.username, config.password)
        self.client = DICOMwebClient(
            config.url,
            session=self.session,
            timeout=(config.connect_timeout_seconds, config.timeout_seconds),
        )
        self.client.set_http_retry_params(retry=False)

    def _call(self, what: str, func: Callable[[], T]) -> T:
        try:
            return func()
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            hint = " (check username and password)" if code in (401, 403) else ""
            raise SourceError(f"{self.peer} answered {what} with HTTP {code}{hint}") from exc
        except requests.RequestException as exc:
            raise SourceError(
                f"{self.peer}: {what} failed ({exc.__class__.__name__}); is it running and "
                "reachable?"
            ) from exc
        except ValueError as exc:  # an answer that is not DICOM JSON / multipart
            raise SourceError(f"{self.peer}: {what} gave an unreadable answer: {exc}") from exc

    def echo(self) -> None:
        self._call("QIDO-RS", lambda: self.client.search_for_studies(limit=1))

    def find_studies(
        self,
        patient_id: str,
        issuer: str | None = None,
        since: dt.date | None = None,
        modality: str | None = "MR",
    ) -> list[StudyRecord]:
        if not patient_id or "*" in patient_id or "?" in patient_id:
            raise SourceError("find_studies needs an exact patient ID (no wildcards)")
        filters: dict[str, Any] = {"PatientID": patient_id}
        if issuer:
            filters["IssuerOfPatientID"] = issuer
        if since:
            filters["StudyDate"] = f"{since:%Y%m%d}-"
        if modality:
            filters["ModalitiesInStudy"] = modality
        log.debug("QIDO-RS studies of patient %s at %s", patient_id, self.peer)
        answers = self._call(
            "QIDO-RS (studies)",
            lambda: self.client.search_for_studies(
                fields=list(study_query_keys()), search_filters=filters
            ),
        )
        studies = select_studies(
            [_dataset(a) for a in answers], patient_id, issuer, since, modality
        )
        log.info("%s: %d matching studies (%d answers)", self.peer, len(studies), len(answers))
        return studies

    def find_series(self, study_uid: str) -> list[SeriesRecord]:
        check_uid(study_uid, "StudyInstanceUID")
        return select_series(self._series(study_uid))

    def _series(self, study_uid: str, series_uid: str = "") -> list[Dataset]:
        filters = {"SeriesInstanceUID": series_uid} if series_uid else None
        answers = self._call(
            "QIDO-RS (series)",
            lambda: self.client.search_for_series(
                study_instance_uid=study_uid,
                fields=list(series_query_keys()),
                search_filters=filters,
            ),
        )
        return [_dataset(a) for a in answers]

    def find_instance_headers(
        self, study_uid: str, series_uid: str, limit: int = DEFAULT_HEADER_LIMIT
    ) -> list[Dataset]:
        check_uid(study_uid, "StudyInstanceUID")
        check_uid(series_uid, "SeriesInstanceUID")
        answers = self._call(
            "QIDO-RS (instances)",
            lambda: self.client.search_for_instances(
                study_instance_uid=study_uid,
                series_instance_uid=series_uid,
                fields=["InstanceNumber"],
            ),
        )
        listed = by_instance_number([_dataset(a) for a in answers], limit)
        headers = []
        for item in listed:
            sop_uid = check_uid(str(item.get("SOPInstanceUID", "")), "SOPInstanceUID")
            metadata = self._call(
                "WADO-RS (metadata)",
                lambda uid=sop_uid: self.client.retrieve_instance_metadata(  # type: ignore[misc]
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    sop_instance_uid=uid,
                ),
            )
            ds = _dataset(metadata)
            keep = {*HEADER_KEYWORDS, "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"}
            headers.append(_only(ds, keep))
        return headers

    def retrieve_series(self, study_uid: str, series_uid: str, dest_folder: Path) -> list[Path]:
        check_uid(study_uid, "StudyInstanceUID")
        check_uid(series_uid, "SeriesInstanceUID")
        found = [
            s
            for s in select_series(self._series(study_uid, series_uid))
            if s.series_uid == series_uid
        ]
        if not found:
            raise SourceError(
                f"{self.peer} has no series {series_uid} in study {study_uid} "
                "(deleted or never stored there?)"
            )
        expected = found[0].number_of_instances
        folder = SeriesFolder(dest_folder)
        try:

            def fetch() -> None:
                for ds in self.client.iter_series(
                    study_instance_uid=study_uid,
                    series_instance_uid=series_uid,
                    media_types=(("application/dicom", "*"),),
                ):
                    if str(ds.get("SeriesInstanceUID", "")) != series_uid:
                        raise SourceError(
                            f"{self.peer}: WADO-RS sent an instance of another series"
                        )
                    sop_uid = check_uid(str(ds.get("SOPInstanceUID", "")), "SOPInstanceUID")
                    buffer = io.BytesIO()
                    dcmwrite(buffer, ds, enforce_file_format=True)
                    folder.write(sop_uid, buffer.getvalue())

            self._call("WADO-RS (series)", fetch)
            check_count(self.peer, len(folder.files), expected, "WADO-RS")
            folder.sync()
        except OSError as exc:
            folder.remove()
            raise SourceError(
                f"could not write into {folder.folder}: {exc.strerror or exc} (free space, permissions?)"
            ) from exc
        except BaseException:
            folder.remove()
            raise
        log.info("WADO-RS from %s: %d instances", self.peer, len(folder.files))
        return sorted(folder.files.values())

    def close(self) -> None:
        self.session.close()


def _only(ds: Dataset, keywords: set[str]) -> Dataset:
    """A copy of the top-level elements named by ``keywords`` (sequences included)."""
    out = Dataset()
    for element in ds:
        if element.keyword in keywords or element.VR == "SQ":
            out.add(element)
    return out
