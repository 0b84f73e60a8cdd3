"""The acceptor's policy (:class:`AcceptorConfig`) and association negotiation as
pure functions (PS3.8 §7.1.1, §9.3.3): whether to reject an A-ASSOCIATE-RQ and
with what, and the result of each proposed presentation context.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class AcceptorConfig:
    """What the acceptor negotiates and how long it waits."""

    ae_title: str
    abstract_syntaxes: frozenset[str]
    transfer_syntaxes: frozenset[str]
    allowed_calling_aets: frozenset[str] = frozenset()
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
    return None


def context_results(rq: AssociateRequest, config: AcceptorConfig) -> list[tuple[int, int, str]]:
    """(context id, result, chosen transfer syntax or "") for each proposed context.

    The first proposed transfer syntax we support is chosen (the proposer's order).
    """
    results: list[tuple[int, int, str]] = []
    for pc in rq.contexts:
        if pc.abstract_syntax not in config.abstract_syntaxes:
            results.append((pc.context_id, ContextResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
            continue
        chosen = next((t for t in pc.transfer_syntaxes if t in config.transfer_syntaxes), "")
        if not chosen:
            results.append((pc.context_id, ContextResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
            continue
        results.append((pc.context_id, ContextResult.ACCEPTANCE, chosen))
    return results
