"""A DICOM archive as a :class:`~daemon.sources.base.Source`: pynetdicom SCU.

C-FIND in the Study Root model at study, series and image level; retrieval by
C-GET on the same association (we accept the C-STORE sub-operations as SCP,
each instance written durably into the destination folder) or by C-MOVE to a
named AE (the node's own, whose listener receives the instances; see
:class:`~daemon.sources.base.MoveArrivals`). One association per call;
timeouts from the source's configuration; patient IDs only in DEBUG logs.
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    ExplicitVRBigEndian,
)
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    EnhancedMRImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import STATUS_PENDING, STATUS_SUCCESS, STATUS_WARNING, code_to_category

from daemon.dicom.dimse_status import Status
from daemon.dicom.transfer_syntaxes import UNCOMPRESSED, decodable_compressed
from daemon.errors import SourceError
from daemon.intake.headers import HEADER_KEYWORDS
from daemon.sources.base import (
    DEFAULT_HEADER_LIMIT,
    MoveArrivals,
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

# The storage classes a retrieval accepts (the node analyses MR), and the transfer
# syntaxes offered for them: as stored by the archive where we can decode it (never
# Deflated: FAULTS.md, no unbounded inflation).
RETRIEVE_STORAGE_CLASSES = (MRImageStorage, EnhancedMRImageStorage)
# Big endian too: an archive may still hold it (pydicom reads it).
RETRIEVE_SYNTAXES = (*UNCOMPRESSED, ExplicitVRBigEndian, *decodable_compressed())


class DicomSource:
    """C-FIND / C-GET / C-MOVE SCU for one configured archive.

    ``calling_ae``: the node's AE title (also the C-MOVE destination);
    ``arrivals``: where C-MOVE instances land (required when ``retrieve = "move"``).
    """

    def __init__(
        self,
        config: SourceConfig,
        calling_ae: str,
        *,
        max_pdu_bytes: int = 0,
        arrivals: MoveArrivals | None = None,
    ) -> None:
        if config.type != "dicom":
            raise SourceError(f"{config.peer}: not a dicom source (type {config.type!r})")
        self.config = config
        self.peer = config.peer
        self.move_destination = calling_ae
        self.arrivals = arrivals
        self.ae = AE(ae_title=calling_ae)
        self.ae.acse_timeout = config.connect_timeout_seconds
        self.ae.connection_timeout = config.connect_timeout_seconds
        self.ae.dimse_timeout = config.timeout_seconds
        self.ae.network_timeout = config.timeout_seconds
        self.ae.maximum_pdu_size = max_pdu_bytes

    # -- the association -----------------------------------------------------------------
    @contextmanager
    def _association(
        self,
        contexts: Sequence[PresentationContext],
        *,
        roles: Sequence[Any] = (),
        handlers: Sequence[tuple[Any, Any]] = (),
    ) -> Iterator[Association]:
        connected: list[bool] = []
        assoc = self.ae.associate(
            self.config.host,
            self.config.port,
            contexts=list(contexts),
            ae_title=self.config.ae_title,
            ext_neg=list(roles) or None,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _e: connected.append(True)), *handlers],
        )
        if not assoc.is_established:
            if not connected:
                why = "could not be reached (connection refused or timed out; is it running?)"
            elif assoc.is_rejected:
                why = "rejected the association (register our AE title there)"
            elif not assoc.accepted_contexts:
                why = "accepted none of the requested services (check its C-FIND/C-GET/C-MOVE settings)"
            else:
                why = "aborted the association or did not answer in time"
            raise SourceError(f"{self.peer} {why}")
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    @staticmethod
    def _find_context() -> PresentationContext:
        return build_context(StudyRootQueryRetrieveInformationModelFind)

    def _find(self, assoc: Association, query: Dataset, what: str) -> list[Dataset]:
        matches: list[Dataset] = []
        try:
            responses = assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)
            for status, identifier in responses:
                if "Status" not in status:
                    raise SourceError(
                        f"{self.peer}: no C-FIND answer for {what} (timeout or abort)"
                    )
                code = int(status.Status)
                category = code_to_category(code)
                if category == STATUS_PENDING:
                    if identifier is not None:
                        matches.append(identifier)
                elif category == STATUS_SUCCESS:
                    break
                else:
                    comment = str(status.get("ErrorComment", "")).strip()
                    raise SourceError(
                        f"{self.peer} answered C-FIND ({what}) with status 0x{code:04X} "
                        f"({category}){': ' + comment if comment else ''}"
                    )
        except (RuntimeError, ValueError) as exc:
            raise SourceError(f"{self.peer}: C-FIND ({what}) failed: {exc}") from exc
        return matches

    # -- Source -------------------------------------------------------------------------------
    def echo(self) -> None:
        with self._association([build_context(Verification)]) as assoc:
            status = assoc.send_c_echo()
            if "Status" not in status:
                raise SourceError(f"{self.peer}: no C-ECHO answer (timeout or abort)")
            if int(status.Status) != Status.SUCCESS:
                raise SourceError(f"{self.peer} answered C-ECHO with 0x{int(status.Status):04X}")

    def find_studies(
        self,
        patient_id: str,
        issuer: str | None = None,
        since: dt.date | None = None,
        modality: str | None = "MR",
    ) -> list[StudyRecord]:
        if not patient_id or "*" in patient_id or "?" in patient_id:
            raise SourceError("find_studies needs an exact patient ID (no wildcards)")
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        for kw in study_query_keys():
            setattr(query, kw, None)  # universal match
        query.PatientID = patient_id
        if issuer:
            query.IssuerOfPatientID = issuer
        if since:
            query.StudyDate = f"{since:%Y%m%d}-"
        if modality:
            query.ModalitiesInStudy = modality
        log.debug("C-FIND studies of patient %s at %s", patient_id, self.peer)
        with self._association([self._find_context()]) as assoc:
            answers = self._find(assoc, query, "studies")
        studies = select_studies(answers, patient_id, issuer, since, modality)
        log.info("%s: %d matching studies (%d answers)", self.peer, len(studies), len(answers))
        return studies

    def find_series(self, study_uid: str) -> list[SeriesRecord]:
        with self._association([self._find_context()]) as assoc:
            return select_series(self._find(assoc, self._series_query(study_uid), "series"))

    @staticmethod
    def _series_query(study_uid: str, series_uid: str = "") -> Dataset:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = check_uid(study_uid, "StudyInstanceUID")
        for kw in series_query_keys():
            setattr(query, kw, None)  # universal match
        if series_uid:
            query.SeriesInstanceUID = check_uid(series_uid, "SeriesInstanceUID")
        return query

    def find_instance_headers(
        self, study_uid: str, series_uid: str, limit: int = DEFAULT_HEADER_LIMIT
    ) -> list[Dataset]:
        query = Dataset()
        query.QueryRetrieveLevel = "IMAGE"
        query.StudyInstanceUID = check_uid(study_uid, "StudyInstanceUID")
        query.SeriesInstanceUID = check_uid(series_uid, "SeriesInstanceUID")
        query.SOPInstanceUID = None
        for kw in HEADER_KEYWORDS:
            setattr(query, kw, None)  # universal match
        with self._association([self._find_context()]) as assoc:
            return by_instance_number(self._find(assoc, query, "instance headers"), limit)

    def retrieve_series(self, study_uid: str, series_uid: str, dest_folder: Path) -> list[Path]:
        check_uid(study_uid, "StudyInstanceUID")
        check_uid(series_uid, "SeriesInstanceUID")
        if self.config.retrieve == "move":
            return self._move(study_uid, series_uid, dest_folder)
        return self._get(study_uid, series_uid, dest_folder)

    def _expected(self, assoc: Association, study_uid: str, series_uid: str) -> int | None:
        """The archive's instance count of the series; SourceError when it has no such series."""
        found = select_series(
            self._find(assoc, self._series_query(study_uid, series_uid), "series")
        )
        found = [s for s in found if s.series_uid == series_uid]
        if not found:
            raise SourceError(
                f"{self.peer} has no series {series_uid} in study {study_uid} "
                "(deleted or never stored there?)"
            )
        return found[0].number_of_instances

    def _retrieve_query(self, study_uid: str, series_uid: str) -> Dataset:
        query = Dataset()
        query.QueryRetrieveLevel = "SERIES"
        query.StudyInstanceUID = study_uid
        query.SeriesInstanceUID = series_uid
        return query

    def _get(self, study_uid: str, series_uid: str, dest_folder: Path) -> list[Path]:
        folder = SeriesFolder(dest_folder)
        errors: list[str] = []

        def on_store(event: Any) -> int:
            try:
                data = event.encoded_dataset()
                ds = pydicom.dcmread(
                    io.BytesIO(data),
                    stop_before_pixels=True,
                    specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
                )
                sop_uid = str(ds.get("SOPInstanceUID", ""))
                if (
                    str(ds.get("StudyInstanceUID", "")) != study_uid
                    or str(ds.get("SeriesInstanceUID", "")) != series_uid
                ):
                    errors.append("an instance of another series arrived")
                    return int(Status.PROCESSING_FAILURE)
                folder.write(check_uid(sop_uid, "SOPInstanceUID"), data)
            except (InvalidDicomError, SourceError, ValueError, AttributeError) as exc:
                errors.append(f"an unreadable instance arrived: {exc}")
                return int(Status.CANNOT_UNDERSTAND)
            except OSError as exc:
                errors.append(f"could not write into {folder.folder}: {exc.strerror or exc}")
                return int(Status.OUT_OF_RESOURCES)
            return int(Status.SUCCESS)

        contexts = [
            self._find_context(),
            build_context(StudyRootQueryRetrieveInformationModelGet),
            *(build_context(c, list(RETRIEVE_SYNTAXES)) for c in RETRIEVE_STORAGE_CLASSES),
        ]
        roles = [build_role(c, scp_role=True) for c in RETRIEVE_STORAGE_CLASSES]
        try:
            with self._association(
                contexts, roles=roles, handlers=[(evt.EVT_C_STORE, on_store)]
            ) as assoc:
                expected = self._expected(assoc, study_uid, series_uid)
                final = self._retrieve(
                    assoc.send_c_get(
                        self._retrieve_query(study_uid, series_uid),
                        StudyRootQueryRetrieveInformationModelGet,
                    ),
                    "C-GET",
                )
            if errors:
                raise SourceError(f"{self.peer}: C-GET failed: {errors[0]}")
            check_count(self.peer, len(folder.files), expected, "C-GET")
            completed = int(final.get("NumberOfCompletedSuboperations", len(folder.files)) or 0)
            completed += int(final.get("NumberOfWarningSuboperations", 0) or 0)
            check_count(self.peer, len(folder.files), completed, "C-GET")
            folder.sync()
        except BaseException:
            folder.remove()
            raise
        log.info("C-GET from %s: %d instances", self.peer, len(folder.files))
        return sorted(folder.files.values())

    def _retrieve(self, responses: Iterator[tuple[Dataset, Dataset | None]], what: str) -> Dataset:
        """Walk the pending responses; the final status when it is success, else SourceError."""
        final: Dataset | None = None
        try:
            for status, _identifier in responses:
                if "Status" not in status:
                    raise SourceError(f"{self.peer}: no {what} answer (timeout or abort)")
                if code_to_category(int(status.Status)) != STATUS_PENDING:
                    final = status
        except (RuntimeError, ValueError) as exc:
            raise SourceError(f"{self.peer}: {what} failed: {exc}") from exc
        if final is None:
            raise SourceError(f"{self.peer}: {what} ended without a final status")
        code = int(final.Status)
        category = code_to_category(code)
        failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
        if category not in (STATUS_SUCCESS, STATUS_WARNING) or failed:
            comment = str(final.get("ErrorComment", "")).strip()
            raise SourceError(
                f"{self.peer} answered {what} with status 0x{code:04X} ({category}), "
                f"{failed} failed sub-operations{': ' + comment if comment else ''}"
                + (
                    " (is our AE title registered there as a move destination?)"
                    if what == "C-MOVE" and code == 0xA801
                    else ""
                )
            )
        return final

    def _move(self, study_uid: str, series_uid: str, dest_folder: Path) -> list[Path]:
        if self.arrivals is None:
            raise SourceError(
                f'{self.peer}: retrieve = "move" needs the node\'s listener to receive the '
                'instances; run it inside `ki67node serve`, or use retrieve = "get"'
            )
        contexts = [
            self._find_context(),
            build_context(StudyRootQueryRetrieveInformationModelMove),
        ]
        self.arrivals.expect(study_uid, series_uid)
        files: list[Path] = []
        try:
            with self._association(contexts) as assoc:
                expected = self._expected(assoc, study_uid, series_uid)
                final = self._retrieve(
                    assoc.send_c_move(
                        self._retrieve_query(study_uid, series_uid),
                        self.move_destination,
                        StudyRootQueryRetrieveInformationModelMove,
                    ),
                    "C-MOVE",
                )
            files = self.arrivals.collect(study_uid, series_uid, dest_folder)
            check_count(self.peer, len(files), expected, "C-MOVE")
            completed = int(final.get("NumberOfCompletedSuboperations", len(files)) or 0)
            completed += int(final.get("NumberOfWarningSuboperations", 0) or 0)
            check_count(self.peer, len(files), completed, "C-MOVE")
        except BaseException:
            self.arrivals.discard(study_uid, series_uid)
            for path in files:
                path.unlink(missing_ok=True)
            raise
        log.info("C-MOVE from %s to %s: %d instances", self.peer, self.move_destination, len(files))
        return sorted(files)

    def close(self) -> None:
        self.ae.shutdown()
