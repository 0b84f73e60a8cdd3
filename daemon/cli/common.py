"""What the ``ki67node`` subcommands share: argument types, loading the settings, logging set-up."""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from pathlib import Path

from daemon.log_repeats import quiet_repeats
from daemon.settings import Settings, default_config_path, load_settings


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_workers_option(p: argparse.ArgumentParser) -> None:
    """``--workers``: processes for the image pipeline (default: half the CPUs)."""
    p.add_argument(
        "--workers",
        type=positive_int,
        default=max(1, (os.cpu_count() or 1) // 2),
        help="parallel processes for the image pipeline (half the CPUs)",
    )


def load_config(args: argparse.Namespace) -> Settings:
    """The settings of ``--config``, else config/ki67node.toml, else the embedded defaults."""
    path = Path(args.config) if args.config else default_config_path()
    if not args.config and not path.exists():
        return load_settings(None)  # embedded defaults
    return load_settings(path)


def setup_logging(level: str) -> None:
    """Configure logging once, for the whole command (handlers on the root logger)."""
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs dataset contents (patient names) at DEBUG and whole
    # PDU summaries at INFO; keep it at WARNING unless we debug.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    quiet_repeats("pydicom")


def current_user() -> str:
    """The operator's login name (recorded with what they enter), else the uid."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else "unknown"
