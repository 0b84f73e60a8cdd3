"""The acceptor's policy (:class:`AcceptorConfig`) and association negotiation as
pure functions (PS3.8 §7.1.1, §9.3.3): whether to reject an A-ASSOCIATE-RQ and
with what, and the result of each proposed presentation context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from daemon.dicom.ul_pdu import (
    APPLICATION_CONTEXT,
    AcseRejectReason,
    AssociateRequest,
    ContextResult,
    RejectResult,
    RejectSource,
    UserRejectReason,
)
from dicom_out.lossy import is_lossy


@dataclass(frozen=True)
class AcceptorConfig:
    """What the acceptor negotiates and how long it waits."""

    ae_title: str
    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: frozenset[str]
    allowed_calling_aets: frozenset[str] = frozenset()
    require_called_aet: bool = False
    max_pdu: int = 4_194_304
    max_instance_bytes: int = 536_870_912
    acse_timeout: float = 30.0
    network_timeout: float = 60.0


def association_reject(
    rq: AssociateRequest, config: AcceptorConfig
) -> tuple[RejectResult, RejectSource, int] | None:
    """(result, source, reason) of the A-ASSOCIATE-RJ to send, or None to accept."""
    if not rq.protocol_version & 1:
        return (
            RejectResult.PERMANENT,
            RejectSource.SERVICE_PROVIDER_ACSE,
            AcseRejectReason.PROTOCOL_VERSION_NOT_SUPPORTED,
        )
    if rq.application_context != APPLICATION_CONTEXT:
        return (
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            UserRejectReason.APPLICATION_CONTEXT_NOT_SUPPORTED,
        )
    if config.allowed_calling_aets and rq.calling_ae not in config.allowed_calling_aets:
        return (
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            UserRejectReason.CALLING_AE_NOT_RECOGNIZED,
        )
    if config.require_called_aet and rq.called_ae != config.ae_title:
        return (
            RejectResult.PERMANENT,
            RejectSource.SERVICE_USER,
            UserRejectReason.CALLED_AE_NOT_RECOGNIZED,
        )
    return None


def choose_transfer_syntax(proposed: Sequence[str], supported: frozenset[str]) -> str:
    """The transfer syntax to accept from one presentation context, or "".

    The node's preference, not the proposer's: any lossless syntax
    (uncompressed or lossless compressed) before any lossy one; among the
    lossless ones the proposer's order (a sender lists its native encoding
    first, so the instance arrives without being transcoded); a lossy
    syntax only when it is all the sender offers.
    """
    usable = [t for t in proposed if t in supported]
    lossless = [t for t in usable if not is_lossy(t)]
    return (lossless or usable or [""])[0]


def context_results(rq: AssociateRequest, config: AcceptorConfig) -> list[tuple[int, int, str]]:
    """(context id, result, chosen transfer syntax or "") for each proposed context."""
    results: list[tuple[int, int, str]] = []
    for pc in rq.contexts:
        if pc.abstract_syntax not in config.abstract_syntaxes:
            results.append((pc.context_id, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
            continue
        chosen = choose_transfer_syntax(pc.transfer_syntaxes, config.transfer_syntaxes)
        if not chosen:
            results.append((pc.context_id, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
            continue
        results.append((pc.context_id, ContextResult.ACCEPTANCE, chosen))
    return results
