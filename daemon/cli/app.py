"""The ``ki67node`` command line: one entry point, one subcommand per task.

Exit codes: 0 success, 1 error (message on stderr, no traceback unless
``--debug``), 2 usage error. Logging is configured here, once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable

from ai_core.disclaimer import DISCLAIMER
from ai_core.errors import AiCoreError
from daemon import __version__
from daemon.cli.common import load_config, setup_logging
from daemon.cli.echo import add_echo_command
from daemon.cli.followups import add_followup_commands
from daemon.cli.growth import add_growth_commands
from daemon.cli.model import add_model_commands
from daemon.cli.results import add_result_commands
from daemon.cli.synth import add_synth_command
from daemon.db.read import safe_url
from daemon.errors import ConfigError, NodeError
from daemon.ops.status import collect_status, format_status
from daemon.serve import serve
from daemon.settings import Settings

log = logging.getLogger("ki67node")


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = load_config(args)
    except ConfigError as exc:
        for key, msg in exc.problems:
            print(f"{key}: {msg}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(
        f"configuration OK (data_dir={settings.data_dir}, database={safe_url(settings.database_url)})"
    )
    print(f"destinations: {_describe_destinations(settings)}")
    print(f"sources: {_describe_sources(settings)}")
    return 0


def _describe_destinations(settings: Settings) -> str:
    if not settings.destinations:
        return f"outbox (folder {settings.outbox_dir}, the default when none is configured)"
    where = {
        "dicom": lambda d: f"C-STORE to {d.ae_title}@{d.host}:{d.port}",
        "folder": lambda d: f"folder {d.path}",
        "dicomweb": lambda d: f"STOW-RS to {d.url}",
    }
    return "; ".join(f"{d.name} ({where[d.type](d)})" for d in settings.destinations)


def _describe_sources(settings: Settings) -> str:
    if not settings.sources:
        return "none"
    where = {
        "dicom": lambda s: f"C-FIND + C-{s.retrieve.upper()} at {s.ae_title}@{s.host}:{s.port}",
        "dicomweb": lambda s: f"QIDO-RS/WADO-RS at {s.url}",
    }
    text = "; ".join(f"{s.name} ({where[s.type](s)})" for s in settings.sources)
    priors = settings.priors
    return text + (f"; priors from {priors.source}" if priors.enabled else "; priors off")


def cmd_serve(args: argparse.Namespace) -> int:
    settings = load_config(args)
    setup_logging(settings.logging.level if not args.debug else "DEBUG")
    return serve(settings)


def cmd_status(args: argparse.Namespace) -> int:
    settings = load_config(args)
    report = collect_status(settings.data_dir, settings.database_target)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_status(report))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ki67node",
        description=f"ki67node {__version__}: Ki-67 prediction DICOM node ({DISCLAIMER}).",
    )
    parser.add_argument("--version", action="version", version=f"ki67node {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_text: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="TOML configuration (default: config/ki67node.toml)")
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "run the daemon: DICOM listener, workers, scheduler, HTTP status")
    add("check-config", cmd_check_config, "validate the configuration and print every problem")
    p = add("status", cmd_status, "counts of series and jobs by state, outbox backlog, last errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_echo_command(sub)
    add_synth_command(sub)
    add_model_commands(sub)
    add_result_commands(sub)
    add_followup_commands(sub)
    add_growth_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"ki67node: {exc}", file=sys.stderr)
        return 1
    except (NodeError, AiCoreError) as exc:
        if args.debug:
            raise
        print(f"ki67node: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
