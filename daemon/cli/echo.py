"""``ki67node echo NAME``: does a configured source or destination answer?

A DICOM peer gets a C-ECHO, a DICOMweb peer a QIDO-RS request (``GET
<url>/studies?limit=1``), a folder destination a write check. Exit 0 when it
answers, 1 with a one-line reason otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from daemon.cli.common import load_config
from daemon.destinations import Destination
from daemon.errors import NodeError, SourceError
from daemon.settings import DeliverySettings, Settings
from daemon.sources.config import SourceConfig
from daemon.sources.factory import make_source


def add_echo_command(sub: Any) -> None:
    p = sub.add_parser(
        "echo",
        help="test a configured source or destination (C-ECHO or a DICOMweb request)",
        description="Send a C-ECHO (dicom) or a QIDO-RS request (dicomweb) to the [[sources]] "
        "or [[destinations]] entry called NAME (a folder destination: check it is writable). "
        "Exit 0 when it answers, 1 with the reason otherwise.",
    )
    p.add_argument("name", metavar="NAME", help="a [[sources]] or [[destinations]] name")
    p.add_argument("--config", help="TOML configuration (default: config/ki67node.toml)")
    p.set_defaults(func=cmd_echo)


def destination_as_source(dest: Destination, delivery: DeliverySettings) -> SourceConfig:
    """A dicom or dicomweb destination as a peer to echo, with the delivery timeouts."""
    return SourceConfig(
        name=dest.name,
        type=dest.type,
        ae_title=dest.ae_title,
        host=dest.host,
        port=dest.port,
        url=dest.url,
        username=dest.username,
        password=dest.password,
        connect_timeout_seconds=delivery.association_timeout_seconds,
        timeout_seconds=delivery.association_timeout_seconds,
    )


def _echo(peer: SourceConfig, settings: Settings) -> str:
    source = make_source(peer, settings.node.ae_title, max_pdu_bytes=settings.node.max_pdu_bytes)
    try:
        started = time.monotonic()
        source.echo()
    finally:
        source.close()
    how = "C-ECHO" if peer.type == "dicom" else "QIDO-RS"
    return f"answered {how} in {time.monotonic() - started:.2f} s"


def _check_folder(dest: Destination, settings: Settings) -> str:
    root = settings.data_dir / dest.path
    if not root.exists():
        return f"folder {root} does not exist yet (it is created on the first delivery)"
    if not os.access(root, os.W_OK | os.X_OK):
        raise SourceError(f"folder {root} is not writable by this user")
    return f"folder {root} is writable"


def cmd_echo(args: argparse.Namespace) -> int:
    settings = load_config(args)
    checks: list[tuple[str, Any]] = []
    for src in settings.sources:
        if src.name == args.name:
            checks.append((src.peer, lambda s=src: _echo(s, settings)))
    for dest in settings.destinations:
        if dest.name != args.name:
            continue
        label = f"destination {dest.name}"
        if dest.type == "folder":
            checks.append((label, lambda d=dest: _check_folder(d, settings)))
        else:
            peer = destination_as_source(dest, settings.delivery)
            where = f"{dest.ae_title}@{dest.host}:{dest.port}" if dest.type == "dicom" else dest.url
            checks.append((f"{label} ({where})", lambda p=peer: _echo(p, settings)))
    if not checks:
        names = [s.name for s in settings.sources] + [d.name for d in settings.destinations]
        known = ", ".join(names) if names else "none is configured"
        print(f"ki67node: no source or destination named {args.name!r} ({known})", file=sys.stderr)
        return 1
    failed = 0
    for label, check in checks:
        try:
            print(f"{label}: {check()}")
        except NodeError as exc:
            print(f"ki67node: {label}: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0
