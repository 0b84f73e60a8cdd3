"""The ``ki67node`` command line (entry point :func:`main`, one module per group of subcommands)."""

from __future__ import annotations

from daemon.cli.app import build_parser, main

__all__ = ["build_parser", "main"]
