"""Result destinations (``[[destinations]]``): the :class:`Destination` record and its parsing.

Each ``[[destinations]]`` table names one place results go: a DICOM node
(C-STORE), a folder, or a DICOMweb server (STOW-RS). A table is checked as a
whole; every problem is reported with its key (``destinations[i].key``), and
a key that its type does not use is an error rather than silently ignored
(the checks are in :mod:`daemon.peers`, shared with ``[[sources]]``).
:func:`daemon.settings.load_settings` calls :func:`parse_destinations`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon.peers import (
    check_credentials,
    check_dicom_peer,
    check_name,
    check_table_keys,
    check_unused_keys,
    check_web_url,
)

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
        check_table_keys(key, item, allowed, problems)
        name = check_name(key, item, names, "destination", problems)
        if not name:
            continue
        dtype = item.get("type")
        if dtype not in DESTINATION_TYPES:
            problems.append(
                (f"{key}.type", f"must be 'dicom', 'folder' or 'dicomweb', got {dtype!r}")
            )
            continue
        used = {"name", "type", *_DESTINATION_KEYS[dtype]}
        check_unused_keys(key, item, allowed, used, dtype, problems)
        out.append(_destination(key, name, dtype, item, problems))
    return tuple(out)


def _destination(
    key: str, name: str, dtype: str, item: dict[str, Any], problems: list[tuple[str, str]]
) -> Destination:
    if dtype == "dicom":
        ae, host, port = check_dicom_peer(key, item, problems)
        return Destination(name=name, type=dtype, ae_title=ae, host=host, port=port)
    if dtype == "folder":
        path = item.get("path")
        if not isinstance(path, str) or not path.strip():
            problems.append((f"{key}.path", "must be a folder path (relative = under data_dir)"))
            path = ""
        elif not Path(path).is_absolute() and ".." in Path(path).parts:
            problems.append((f"{key}.path", "a relative path must stay under data_dir (no '..')"))
        return Destination(name=name, type=dtype, path=path)
    url = check_web_url(
        key, item, "the STOW-RS base URL, e.g. http://pacs:8042/dicom-web", problems
    )
    username, password = check_credentials(key, item, problems)
    return Destination(name=name, type=dtype, url=url, username=username, password=password)
