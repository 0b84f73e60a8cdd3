"""Archives to query and retrieve from (``[[sources]]``): the :class:`SourceConfig` record.

Each ``[[sources]]`` table names one archive: ``dicom`` (C-FIND, then C-GET on
the same association or C-MOVE to the node's own AE) or ``dicomweb`` (QIDO-RS
and WADO-RS). The table is checked as a whole with the checks
``[[destinations]]`` use (:mod:`daemon.peers`); every problem is reported with
its key (``sources[i].key``). :func:`daemon.settings.load_settings` calls
:func:`parse_sources`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from daemon.peers import (
    check_credentials,
    check_dicom_peer,
    check_name,
    check_table_keys,
    check_unused_keys,
    check_web_url,
)

SOURCE_TYPES = ("dicom", "dicomweb")
RETRIEVE_MODES = ("get", "move")
# The keys each source type takes (besides name, type and the timeouts).
_SOURCE_KEYS = {
    "dicom": ("ae_title", "host", "port", "retrieve"),
    "dicomweb": ("url", "username", "password"),
}
_COMMON_KEYS = ("name", "type", "connect_timeout_seconds", "timeout_seconds")
MAX_TIMEOUT_SECONDS = 3600.0
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_TIMEOUT = 120.0


@dataclass(frozen=True)
class SourceConfig:
    """One archive: a DICOM node (C-FIND + C-GET/C-MOVE) or a DICOMweb server (QIDO/WADO)."""

    name: str
    type: str  # dicom | dicomweb
    ae_title: str = ""
    host: str = ""
    port: int = 0
    retrieve: str = "get"  # dicom: get (C-GET, same association) | move (C-MOVE to our AE)
    url: str = ""  # dicomweb: base URL, e.g. http://pacs:8042/dicom-web
    username: str = ""
    password: str = field(default="", repr=False)
    # Connect + association negotiation (dicom) or TCP/TLS connect (dicomweb).
    connect_timeout_seconds: float = DEFAULT_CONNECT_TIMEOUT
    # Each DIMSE answer (a C-FIND match, a C-GET/C-MOVE progress report) or HTTP read.
    timeout_seconds: float = DEFAULT_TIMEOUT

    @property
    def peer(self) -> str:
        """How logs and errors name the archive (no credentials)."""
        if self.type == "dicom":
            return f"source {self.name} ({self.ae_title}@{self.host}:{self.port})"
        return f"source {self.name} ({self.url})"


def parse_sources(raw: Any, problems: list[tuple[str, str]]) -> tuple[SourceConfig, ...]:
    """The ``[[sources]]`` array as records; each problem is appended as (key, message)."""
    if not isinstance(raw, list):
        problems.append(("sources", "must be an array of tables ([[sources]])"))
        return ()
    out: list[SourceConfig] = []
    names: set[str] = set()
    allowed = {f.name for f in dataclasses.fields(SourceConfig)}
    for i, item in enumerate(raw):
        key = f"sources[{i}]"
        if not isinstance(item, dict):
            problems.append((key, "must be a table"))
            continue
        check_table_keys(key, item, allowed, problems)
        name = check_name(key, item, names, "source", problems)
        if not name:
            continue
        stype = item.get("type")
        if stype not in SOURCE_TYPES:
            problems.append((f"{key}.type", f"must be 'dicom' or 'dicomweb', got {stype!r}"))
            continue
        check_unused_keys(
            key, item, allowed, {*_COMMON_KEYS, *_SOURCE_KEYS[stype]}, stype, problems
        )
        connect, timeout = _timeouts(key, item, problems)
        if stype == "dicom":
            ae, host, port = check_dicom_peer(key, item, problems)
            retrieve = item.get("retrieve", "get")
            if retrieve not in RETRIEVE_MODES:
                problems.append(
                    (
                        f"{key}.retrieve",
                        f"must be 'get' or 'move' (C-MOVE to node.ae_title), got {retrieve!r}",
                    )
                )
                retrieve = "get"
            out.append(
                SourceConfig(
                    name,
                    stype,
                    ae_title=ae,
                    host=host,
                    port=port,
                    retrieve=retrieve,
                    connect_timeout_seconds=connect,
                    timeout_seconds=timeout,
                )
            )
        else:
            url = check_web_url(
                key, item, "the DICOMweb base URL, e.g. http://pacs:8042/dicom-web", problems
            )
            username, password = check_credentials(key, item, problems)
            out.append(
                SourceConfig(
                    name,
                    stype,
                    url=url,
                    username=username,
                    password=password,
                    connect_timeout_seconds=connect,
                    timeout_seconds=timeout,
                )
            )
    return tuple(out)


def _timeouts(
    key: str, item: dict[str, Any], problems: list[tuple[str, str]]
) -> tuple[float, float]:
    """``connect_timeout_seconds`` and ``timeout_seconds`` (defaults when not given or bad)."""
    out = [DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT]
    for i, k in enumerate(("connect_timeout_seconds", "timeout_seconds")):
        if k not in item:
            continue
        value = item[k]
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0 < value <= MAX_TIMEOUT_SECONDS
        ):
            problems.append((f"{key}.{k}", f"must be a number > 0 and <= {MAX_TIMEOUT_SECONDS:g}"))
            continue
        out[i] = float(value)
    return out[0], out[1]


@dataclass(frozen=True)
class PriorsSettings:
    """Fetching a patient's earlier studies from a ``[[sources]]`` archive (issue 20)."""

    enabled: bool = False
    source: str = ""  # a [[sources]] name; required when enabled
    lookback_years: int = 10
    max_studies: int = 3
    send_results: bool = False  # outputs for retrieved priors go to the destinations only when true


def validate_priors(
    p: PriorsSettings, sources: tuple[SourceConfig, ...], problems: list[tuple[str, str]]
) -> None:
    """``priors.source`` must name a configured source (and is required when enabled)."""
    names = [src.name for src in sources]
    if p.enabled and not p.source:
        problems.append(
            ("priors.source", "required when priors.enabled = true (a [[sources]] name)")
        )
    elif p.source and p.source not in names:
        known = ", ".join(names) if names else "none is configured"
        problems.append(("priors.source", f"no [[sources]] entry named {p.source!r} ({known})"))
