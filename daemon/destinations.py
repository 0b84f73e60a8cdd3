"""Result destinations (``[[destinations]]``): the :class:`Destination` record and its parsing.

Each ``[[destinations]]`` table names one place results go: a DICOM node
(C-STORE), a folder, or a DICOMweb server (STOW-RS). A table is checked as a
whole; every problem is reported with its key (``destinations[i].key``), and
a key that its type does not use is an error rather than silently ignored.
:func:`daemon.settings.load_settings` calls :func:`parse_destinations`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_AE_RE = re.compile(r"^[\x20-\x7e]{1,16}$")
_AE_FORBIDDEN = set("\\/*?\"'`$;|&<>")
DESTINATION_TYPES = ("dicom", "folder", "dicomweb")
# The keys each destination type takes (besides name and type).
_DESTINATION_KEYS = {
    "dicom": ("ae_title", "host", "port"),
    "folder": ("path",),
    "dicomweb": ("url", "username", "password"),
}


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM node (C-STORE), a folder, or a DICOMweb server (STOW-RS)."""

    name: str
    type: str  # dicom | folder | dicomweb
    ae_title: str = ""
    host: str = ""
    port: int = 0
    path: str = ""  # folder: relative = under data_dir
    url: str = ""  # dicomweb: STOW-RS base URL, e.g. http://pacs:8042/dicom-web
    username: str = ""
    password: str = field(default="", repr=False)


def parse_destinations(raw: Any, problems: list[tuple[str, str]]) -> tuple[Destination, ...]:
    """The ``[[destinations]]`` array as records; each problem is appended as (key, message)."""
    if not isinstance(raw, list):
        problems.append(("destinations", "must be an array of tables ([[destinations]])"))
        return ()
    out: list[Destination] = []
    names: set[str] = set()
    allowed = {f.name for f in dataclasses.fields(Destination)}
    for i, item in enumerate(raw):
        key = f"destinations[{i}]"
        if not isinstance(item, dict):
            problems.append((key, "must be a table"))
            continue
        for k in item:
            if k not in allowed:
                problems.append(
                    (f"{key}.{k}", f"unknown key (known: {', '.join(sorted(allowed))})")
                )
        name = item.get("name")
        dtype = item.get("type")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            problems.append((f"{key}.name", "must be 1-64 letters, digits, '_', '.' or '-'"))
            continue
        if name in names:
            problems.append((f"{key}.name", f"duplicate destination name '{name}'"))
        names.add(name)
        if dtype not in DESTINATION_TYPES:
            problems.append(
                (f"{key}.type", f"must be 'dicom', 'folder' or 'dicomweb', got {dtype!r}")
            )
            continue
        for k in sorted(set(item) & allowed - {"name", "type", *_DESTINATION_KEYS[dtype]}):
            problems.append((f"{key}.{k}", f"not used by type '{dtype}'"))
        out.append(_destination(key, name, dtype, item, problems))
    return tuple(out)


def _destination(
    key: str, name: str, dtype: str, item: dict[str, Any], problems: list[tuple[str, str]]
) -> Destination:
    if dtype == "dicom":
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
        return Destination(name=name, type=dtype, ae_title=ae, host=host, port=port)
    if dtype == "folder":
        path = item.get("path")
        if not isinstance(path, str) or not path.strip():
            problems.append((f"{key}.path", "must be a folder path (relative = under data_dir)"))
            path = ""
        elif not Path(path).is_absolute() and ".." in Path(path).parts:
            problems.append((f"{key}.path", "a relative path must stay under data_dir (no '..')"))
        return Destination(name=name, type=dtype, path=path)
    url = item.get("url")
    if isinstance(url, str) and "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        problems.append(
            (f"{key}.url", "must not contain credentials; use the username and password keys")
        )
        url = ""
    elif not isinstance(url, str) or not re.fullmatch(r"https?://[^\s/?#@]+(/[^\s?#]*)?", url):
        problems.append(
            (f"{key}.url", "must be the STOW-RS base URL, e.g. http://pacs:8042/dicom-web")
        )
        url = ""
    creds: dict[str, str] = {}
    for k in ("username", "password"):
        value = item.get(k, "")
        if not isinstance(value, str):
            problems.append((f"{key}.{k}", "must be a string"))
            value = ""
        creds[k] = value
    if bool(creds["username"]) != bool(creds["password"]):
        problems.append((f"{key}.username", "username and password must be given together"))
    return Destination(
        name=name,
        type=dtype,
        url=url.rstrip("/"),
        username=creds["username"],
        password=creds["password"],
    )


def valid_ae_title(ae: str) -> bool:
    """True for a usable AE title: 1-16 printable ASCII, not blank, no shell or path characters."""
    return bool(_AE_RE.fullmatch(ae)) and bool(ae.strip()) and not (set(ae) & _AE_FORBIDDEN)
