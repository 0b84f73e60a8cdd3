"""Checks shared by the configured peers: ``[[destinations]]`` and ``[[sources]]``.

Each check reads one group of keys of a table, appends every problem as
``(key, message)`` and returns a usable value (empty when it was bad), so a
table is checked as a whole and every problem is reported at once.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_AE_FORBIDDEN = set("\\/*?\"'`$;|&<>")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_URL_RE = re.compile(r"https?://[^\s/?#@]+(/[^\s?#]*)?")

Problems = list[tuple[str, str]]


def valid_ae_title(ae: str) -> bool:
    """True for a usable AE title: 1-16 printable ASCII, not blank, no shell or path characters."""
    return bool(_AE_RE.fullmatch(ae)) and bool(ae.strip()) and not (set(ae) & _AE_FORBIDDEN)


def check_table_keys(
    key: str, item: dict[str, Any], allowed: Collection[str], problems: Problems
) -> None:
    """Every key of the table must be one of ``allowed``."""
    for k in item:
        if k not in allowed:
            problems.append((f"{key}.{k}", f"unknown key (known: {', '.join(sorted(allowed))})"))


def check_name(
    key: str, item: dict[str, Any], seen: set[str], what: str, problems: Problems
) -> str:
    """The table's ``name`` (unique among ``seen``), or "" when it is unusable."""
    name = item.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        problems.append((f"{key}.name", "must be 1-64 letters, digits, '_', '.' or '-'"))
        return ""
    if name in seen:
        problems.append((f"{key}.name", f"duplicate {what} name '{name}'"))
    seen.add(name)
    return name


def check_unused_keys(
    key: str,
    item: dict[str, Any],
    known: Collection[str],
    used: Collection[str],
    kind: str,
    problems: Problems,
) -> None:
    """Known keys that the table's type does not use are problems, not silently ignored."""
    for k in sorted(set(item) & set(known) - set(used)):
        problems.append((f"{key}.{k}", f"not used by type '{kind}'"))


def check_dicom_peer(key: str, item: dict[str, Any], problems: Problems) -> tuple[str, str, int]:
    """``ae_title``, ``host`` and ``port`` of a DICOM peer."""
    ae, host, port = item.get("ae_title"), item.get("host"), item.get("port")
    if not isinstance(ae, str) or not valid_ae_title(ae):
        problems.append((f"{key}.ae_title", "must be 1-16 printable ASCII characters"))
        ae = ""
    if not isinstance(host, str) or not host:
        problems.append((f"{key}.host", "must be a host name or address"))
        host = ""
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        problems.append((f"{key}.port", "must be an integer 1-65535"))
        port = 0
    return ae, host, port


def check_web_url(key: str, item: dict[str, Any], example: str, problems: Problems) -> str:
    """``url`` of a DICOMweb peer (http or https, no credentials in it), without a final '/'."""
    url = item.get("url")
    if isinstance(url, str) and "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        problems.append(
            (f"{key}.url", "must not contain credentials; use the username and password keys")
        )
        return ""
    if not isinstance(url, str) or not _URL_RE.fullmatch(url):
        problems.append((f"{key}.url", f"must be {example}"))
        return ""
    return url.rstrip("/")


def check_credentials(key: str, item: dict[str, Any], problems: Problems) -> tuple[str, str]:
    """``username`` and ``password`` (HTTP basic authentication): both or neither."""
    creds: dict[str, str] = {}
    for k in ("username", "password"):
        value = item.get(k, "")
        if not isinstance(value, str):
            problems.append((f"{key}.{k}", "must be a string"))
            value = ""
        creds[k] = value
    if bool(creds["username"]) != bool(creds["password"]):
        problems.append((f"{key}.username", "username and password must be given together"))
    return creds["username"], creds["password"]
