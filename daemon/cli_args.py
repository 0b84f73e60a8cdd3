"""Argument types and options shared by the ``ki67node`` subcommands."""

from __future__ import annotations

import argparse
import os


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
