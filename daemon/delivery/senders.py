"""Senders: one per destination type, each delivering a batch of staged files.

They share one small protocol, :class:`Sender`: :class:`DicomSender`
(C-STORE), :class:`FolderSender` (atomic copies) and :class:`StowSender`
(DICOMweb STOW-RS). A sender only sends and reports a :class:`SendResult` per
attempted file; claiming rows, retries and give-up are
:class:`daemon.delivery.service.DeliveryService`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pydicom
import requests
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from daemon.delivery.outbox import publish_bytes, uid_path
from daemon.destinations import Destination
from daemon.errors import SendError
from daemon.settings import DeliverySettings, NodeSettings

log = logging.getLogger(__name__)

MAX_CONTEXTS = 128  # presentation contexts one association can propose
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
STOW_MAX_REQUEST_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class SendItem:
    """One staged file to send for one outbox row."""

    outbox_id: int
    sop_instance_uid: str
    path: Path


@dataclass(frozen=True)
class SendResult:
    """The outcome for one row; ``permanent``: retrying cannot help (fail at once)."""

    outbox_id: int
    delivered: bool
    error: str = ""
    permanent: bool = False


class Sender(Protocol):
    """Sends a batch; returns a result per attempted item (an item left out was not sent).

    ``stop()`` turning true asks to return after the instance in flight.
    Raises :class:`SendError` when nothing could be sent.
    """

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]: ...

    def close(self) -> None: ...


def make_sender(node: NodeSettings, delivery: DeliverySettings, dest: Destination) -> Sender:
    """The sender for a destination's type (``node``: our AE title, PDU size and data_dir)."""
    if dest.type == "dicom":
        return DicomSender(node, delivery, dest)
    if dest.type == "folder":
        return FolderSender(node.data_dir, dest)
    if dest.type == "dicomweb":
        return StowSender(delivery, dest)
    raise SendError(f"destination {dest.name}: unknown type {dest.type!r} (fix [[destinations]])")


def _retry_all(items: Sequence[SendItem], error: str) -> list[SendResult]:
    return [SendResult(i.outbox_id, False, error) for i in items]


class DicomSender:
    """C-STORE SCU: one association per batch, each instance's status checked.

    Presentation contexts come from the files' SOP classes and transfer
    syntaxes (uncompressed files also offer the other uncompressed syntaxes);
    Success and Warning statuses count as delivered, every other status, a
    rejected, aborted or refused association and a timeout mean retry.
    """

    def __init__(self, node: NodeSettings, delivery: DeliverySettings, dest: Destination) -> None:
        self.dest = dest
        self.peer = f"{dest.ae_title}@{dest.host}:{dest.port}"
        self.ae = AE(ae_title=node.ae_title)
        self.ae.acse_timeout = delivery.association_timeout_seconds
        self.ae.connection_timeout = delivery.association_timeout_seconds
        self.ae.dimse_timeout = delivery.dimse_timeout_seconds
        self.ae.network_timeout = delivery.dimse_timeout_seconds
        self.ae.maximum_pdu_size = node.max_pdu_bytes

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]:
        results: list[SendResult] = []
        headers: list[tuple[SendItem, str, str]] = []
        for item in items:
            try:
                meta = pydicom.dcmread(item.path, stop_before_pixels=True).file_meta
                headers.append(
                    (item, str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
                )
            except (OSError, InvalidDicomError, AttributeError) as exc:
                error = f"the staged file {item.path.name} cannot be read as DICOM: {exc}"
                results.append(SendResult(item.outbox_id, False, error, permanent=True))
        for group, contexts in _context_groups(headers):
            if stop():
                break
            results += self._send_group(group, contexts, stop)
        return results

    def _send_group(
        self,
        group: Sequence[SendItem],
        contexts: list[PresentationContext],
        stop: Callable[[], bool],
    ) -> list[SendResult]:
        connected: list[bool] = []
        assoc = self.ae.associate(
            self.dest.host,
            self.dest.port,
            contexts=contexts,
            ae_title=self.dest.ae_title,
            evt_handlers=[(evt.EVT_CONN_OPEN, lambda _event: connected.append(True))],
        )
        if not assoc.is_established:
            if not connected:
                why = "could not be reached (connection refused or timed out)"
            elif assoc.is_rejected:
                why = "rejected the association (check its AE title configuration for us)"
            elif assoc.rejected_contexts and not assoc.accepted_contexts:
                offered = sorted({str(cx.abstract_syntax.name) for cx in contexts})  # type: ignore[union-attr]
                why = f"did not accept this object: none of {', '.join(offered)} is accepted"
            else:
                why = "aborted the association or did not answer in time"
            return _retry_all(group, f"{self.peer} {why}; will retry")
        results: list[SendResult] = []
        try:
            for item in group:
                if stop():
                    break
                if not assoc.is_established:
                    results += _retry_all(
                        group[len(results) :], f"{self.peer} dropped the association; will retry"
                    )
                    break
                results.append(self._store(assoc, item))
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    def _store(self, assoc: Association, item: SendItem) -> SendResult:
        try:
            ds = pydicom.dcmread(item.path)
            status = assoc.send_c_store(ds)
        except (OSError, InvalidDicomError) as exc:
            return SendResult(item.outbox_id, False, f"cannot read {item.path.name}: {exc}", True)
        except ValueError as exc:  # no accepted presentation context for this file
            return SendResult(
                item.outbox_id, False, f"{self.peer} did not accept this object: {exc}"
            )
        if "Status" not in status:
            return SendResult(
                item.outbox_id, False, f"no C-STORE response from {self.peer} (timeout or abort)"
            )
        code = int(status.Status)
        category = code_to_category(code)
        if category in (STATUS_SUCCESS, STATUS_WARNING):
            if category == STATUS_WARNING:
                log.info("C-STORE to %s: warning status 0x%04X (stored)", self.peer, code)
            return SendResult(item.outbox_id, True)
        comment = str(status.get("ErrorComment", "")).strip()
        return SendResult(
            item.outbox_id,
            False,
            f"{self.peer} answered C-STORE status 0x{code:04X} ({category})"
            + (f": {comment}" if comment else ""),
        )

    def close(self) -> None:
        self.ae.shutdown()


def _context_groups(
    headers: Sequence[tuple[SendItem, str, str]],
) -> list[tuple[list[SendItem], list[PresentationContext]]]:
    """Split items into groups that fit one association's 128 presentation contexts."""
    groups: list[tuple[list[SendItem], dict[tuple[str, str], PresentationContext]]] = []
    for item, sop_class, syntax in headers:
        key = (sop_class, syntax)
        if not groups or (key not in groups[-1][1] and len(groups[-1][1]) >= MAX_CONTEXTS):
            groups.append(([], {}))
        items, contexts = groups[-1]
        if key not in contexts:
            offered = [syntax]
            if syntax in UNCOMPRESSED:
                offered += [s for s in UNCOMPRESSED if s != syntax]
            contexts[key] = build_context(sop_class, offered)
        items.append(item)
    return [(items, list(contexts.values())) for items, contexts in groups]


class FolderSender:
    """Copies each file atomically to ``<root>/<StudyUID>/<SeriesUID>/<SOPInstanceUID>.dcm``.

    A relative ``path`` is under data_dir (and may not leave it); only an
    absolute path writes elsewhere.
    """

    def __init__(self, data_dir: Path, dest: Destination) -> None:
        data_dir = data_dir.resolve()
        if not dest.path:
            raise SendError(f"destination {dest.name}: no folder path configured (set path)")
        root = Path(dest.path)
        if not root.is_absolute():
            root = (data_dir / root).resolve()
            if not root.is_relative_to(data_dir):
                raise SendError(
                    f"destination {dest.name}: path {dest.path!r} leaves data_dir; use a path "
                    "under data_dir or an absolute one"
                )
        self.root = root

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]:
        results = []
        for item in items:
            if stop():
                break
            results.append(self._copy(item))
        return results

    def _copy(self, item: SendItem) -> SendResult:
        try:
            ds = pydicom.dcmread(
                item.path,
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"],
            )
            rel = uid_path(
                ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), item.sop_instance_uid
            )
            publish_bytes(self.root / rel, item.path.read_bytes(), replace=True)
        except (ValueError, InvalidDicomError) as exc:
            return SendResult(item.outbox_id, False, f"{item.path.name}: {exc}", permanent=True)
        except OSError as exc:
            return SendResult(
                item.outbox_id,
                False,
                f"could not write to {self.root} ({exc.strerror or exc}); check the folder's "
                "free space and permissions",
            )
        return SendResult(item.outbox_id, True)

    def close(self) -> None:
        """Nothing to release."""


class StowSender:
    """DICOMweb STOW-RS (``POST <url>/studies``) with ``dicomweb-client``.

    One request per batch (split at :data:`STOW_MAX_REQUEST_BYTES`); the
    response's Referenced SOP Sequence marks instances delivered, its Failed
    SOP Sequence and any HTTP or connection error mean retry.
    """

    def __init__(self, delivery: DeliverySettings, dest: Destination) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.dest = dest
        self.session = requests.Session()
        if dest.username:
            self.session.auth = (dest.username, dest.password)
        self.client = DICOMwebClient(
            dest.url,
            session=self.session,
            timeout=(delivery.association_timeout_seconds, delivery.dimse_timeout_seconds),
        )
        self.client.set_http_retry_params(retry=False)  # the outbox retries, with backoff

    def send(self, items: Sequence[SendItem], stop: Callable[[], bool]) -> list[SendResult]:
        results: list[SendResult] = []
        batch: list[tuple[SendItem, Dataset]] = []
        size = 0
        for item in items:
            try:
                ds = pydicom.dcmread(item.path)
            except (OSError, InvalidDicomError) as exc:
                error = f"cannot read {item.path.name}: {exc}"
                results.append(SendResult(item.outbox_id, False, error, permanent=True))
                continue
            item_size = item.path.stat().st_size
            if batch and size + item_size > STOW_MAX_REQUEST_BYTES:
                results += self._post(batch)
                batch, size = [], 0
                if stop():
                    return results
            batch.append((item, ds))
            size += item_size
        if batch:
            results += self._post(batch)
        return results

    def _post(self, batch: Sequence[tuple[SendItem, Dataset]]) -> list[SendResult]:
        items = [item for item, _ in batch]
        where = f"STOW-RS to {self.dest.url}"
        try:
            answer: Dataset | None = self.client.store_instances([ds for _, ds in batch])
            unlisted = ""
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            unlisted = f"{where} answered HTTP {code}"
            answer = _json_dataset(exc.response)  # e.g. 409 with per-instance results
        except requests.RequestException as exc:
            return _retry_all(items, f"{where} failed: {exc.__class__.__name__}: {exc}")
        if answer is None:
            return _retry_all(items, unlisted)
        if (
            not unlisted
            and "ReferencedSOPSequence" not in answer
            and "FailedSOPSequence" not in answer
        ):
            return [SendResult(item.outbox_id, True) for item in items]  # 200 without a body
        stored = {
            str(i.get("ReferencedSOPInstanceUID", ""))
            for i in answer.get("ReferencedSOPSequence", [])
        }
        failed = {
            str(i.get("ReferencedSOPInstanceUID", "")): int(i.get("FailureReason", 0) or 0)
            for i in answer.get("FailedSOPSequence", [])
        }
        results = []
        for item in items:
            uid = item.sop_instance_uid
            if uid in failed:
                error = f"{where}: failure reason 0x{failed[uid]:04X}"
                results.append(SendResult(item.outbox_id, False, error))
            elif uid in stored:
                results.append(SendResult(item.outbox_id, True))
            else:
                error = unlisted or f"{where}: the response does not list this instance"
                results.append(SendResult(item.outbox_id, False, error))
        return results

    def close(self) -> None:
        self.session.close()


def _json_dataset(response: requests.Response | None) -> Dataset | None:
    """The DICOM JSON body of an error response (e.g. 409 with per-instance results)."""
    if response is None or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        return Dataset.from_json(response.json())
    except ValueError:
        return None
