"""The :class:`~daemon.sources.base.Source` for a configured ``[[sources]]`` entry."""

from __future__ import annotations

from daemon.errors import SourceError
from daemon.sources.base import MoveArrivals, Source
from daemon.sources.config import SourceConfig
from daemon.sources.dimse import DicomSource
from daemon.sources.web import DicomwebSource


def make_source(
    config: SourceConfig,
    calling_ae: str,
    *,
    max_pdu_bytes: int = 0,
    arrivals: MoveArrivals | None = None,
) -> Source:
    """A client for ``config`` (``calling_ae``: the node's AE title, also the C-MOVE destination)."""
    if config.type == "dicom":
        return DicomSource(config, calling_ae, max_pdu_bytes=max_pdu_bytes, arrivals=arrivals)
    if config.type == "dicomweb":
        return DicomwebSource(config)
    raise SourceError(f"{config.peer}: unknown type {config.type!r} (fix [[sources]])")


def find_source(sources: tuple[SourceConfig, ...], name: str) -> SourceConfig:
    """The configured source called ``name``."""
    for source in sources:
        if source.name == name:
            return source
    known = ", ".join(s.name for s in sources) or "none is configured"
    raise SourceError(f"no [[sources]] entry named {name!r} ({known})")
