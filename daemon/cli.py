"""The ``ki67node`` command line: one entry point, one subcommand per task.

Exit codes: 0 success, 1 error (message on stderr, no traceback unless
``--debug``), 2 usage error. Logging is configured here, once.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ai_core.errors import AiCoreError
from daemon import DISCLAIMER, __version__
from daemon.cli_args import positive_int
from daemon.errors import ConfigError, NodeError
from daemon.settings import Settings, default_config_path, load_settings

log = logging.getLogger("ki67node")


def _load(args: argparse.Namespace) -> Settings:
    path = Path(args.config) if args.config else default_config_path()
    if not args.config and not path.exists():
        return load_settings(None)  # embedded defaults
    return load_settings(path)


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom logs dataset contents (patient names) at DEBUG and whole
    # PDU summaries at INFO; keep it at WARNING unless we debug.
    if level.upper() != "DEBUG":
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _load(args)
    except ConfigError as exc:
        for key, msg in exc.problems:
            print(f"{key}: {msg}", file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"configuration OK (data_dir={settings.data_dir}, database={_safe_url(settings)})")
    print(f"destinations: {_describe_destinations(settings)}")
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


def _safe_url(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.database_url).render_as_string(hide_password=True)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _load(args)
    setup_logging(settings.logging.level if not args.debug else "DEBUG")
    from daemon.serve import serve

    return serve(settings)


def cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    from daemon.status import collect_status, format_status

    report = collect_status(settings)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(format_status(report))
    return 0


def head_indices(text: str) -> tuple[int, ...]:
    """An argparse type: ``1,2,3``, ``1-4`` or a mix (``0,2-5``) -> sorted head indices."""
    out: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        lo_text, sep, hi_text = part.partition("-")
        try:
            lo = int(lo_text)
            hi = int(hi_text) if sep else lo
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{part!r} is not a head index or range; write e.g. 1,2,3 or 1-4"
            ) from None
        if lo < 0 or hi < lo:
            raise argparse.ArgumentTypeError(
                f"{part!r}: head indices are 0 or more and ranges run upwards, e.g. 1-4"
            )
        out.update(range(lo, hi + 1))
    return tuple(sorted(out))


def volume_range(text: str) -> tuple[float, float]:
    """An argparse type: ``LOW,HIGH`` tumour volumes in cm3, 0 < LOW <= HIGH."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not LOW,HIGH in cm3; write e.g. 0.5,150"
        ) from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LOW <= HIGH, e.g. 0.5,150")
    return lo, hi


def fraction(text: str) -> float:
    """An argparse type: a share between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; write e.g. 0.2") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1, e.g. 0.2")
    return value


def _synth_usage(message: str) -> int:
    print(f"ki67node synth: error: {message}", file=sys.stderr)
    return 2


def cmd_synth(args: argparse.Namespace) -> int:
    benchmark = {
        "--heads": args.heads is not None,
        "--volume-range": args.volume_range is not None,
        "--tumour-free": args.tumour_free is not None,
        "--t1c-only": args.t1c_only,
    }
    used = [name for name, on in benchmark.items() if on]
    if (args.longitudinal or args.baseline_only) and (used or args.pairs):
        return _synth_usage(
            f"--longitudinal does not combine with {', '.join(used) or '--pairs'}; "
            "drop one of them (--pairs writes baseline/follow-up pairs)"
        )
    if args.pairs and args.tumour_free is not None:
        return _synth_usage("--pairs needs a tumour in every study; drop --tumour-free")
    setup_logging("INFO")
    from ai_core.synth import generate_cohort

    if args.pairs:
        from ai_core.synth.pairs import DEFAULT_PAIR_HEADS, generate_pairs

        pairs = generate_pairs(
            Path(args.out_dir),
            pairs=args.pairs,
            seed=args.seed,
            heads=args.heads or DEFAULT_PAIR_HEADS,
            profile=args.profile,
            size=args.size,
            volume_range=args.volume_range or (0.5, 15.0),
            progress=not args.no_progress,
        )
        print(
            f"wrote {pairs.pairs} baseline/follow-up pair(s) to {pairs.cohort.out_dir}\n"
            f"pairs: {pairs.pairs_csv}\n{DISCLAIMER}; synthetic data, no patient"
        )
        return 0
    if args.longitudinal or args.baseline_only:
        from ai_core.synth.longitudinal import generate_longitudinal

        growth = generate_longitudinal(
            Path(args.out_dir),
            cases=args.cases,
            seed=args.seed,
            profile=args.profile,
            size=args.size,
            progress=not args.no_progress,
            write_followups=not args.baseline_only,
        )
        print(
            f"wrote {growth.patients} surveillance patient(s) to {growth.cohort.out_dir} "
            f"({growth.events} with growth, {growth.followup_studies_written} follow-up "
            f"studies written)\ngrowth manifest: {growth.growth_manifest_csv}\n"
            f"{DISCLAIMER}; synthetic data, no patient"
        )
        return 0
    summary = generate_cohort(
        Path(args.out_dir),
        cases=args.cases,
        seed=args.seed,
        profile=args.profile,
        size=args.size,
        progress=not args.no_progress,
        heads=args.heads or (0,),
        volume_range=args.volume_range,
        tumour_free_fraction=args.tumour_free or 0.0,
        t1c_only=args.t1c_only,
    )
    print(
        f"wrote {summary.cases} synthetic case(s) to {summary.out_dir} "
        f"({summary.ki67_high} with Ki-67 >= 5 %; Bayes-optimal AUC {summary.bayes_auc_cohort:.3f} "
        f"on this cohort, {summary.bayes_auc_population:.3f} on the population)\n"
        f"ground truth: {summary.ground_truth_csv}\n{DISCLAIMER}; synthetic data, no patient"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ki67node",
        description=f"ki67node {__version__}: Ki-67 prediction DICOM node ({DISCLAIMER}).",
    )
    parser.add_argument("--version", action="version", version=f"ki67node {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="TOML configuration (default: config/ki67node.toml)")
        p.set_defaults(func=func)
        return p

    add("serve", cmd_serve, "run the daemon: DICOM listener, workers, scheduler, HTTP status")
    add("check-config", cmd_check_config, "validate the configuration and print every problem")
    p = add("status", cmd_status, "counts of series and jobs by state, outbox backlog, last errors")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser(
        "synth",
        help="write a synthetic cohort (DICOM studies + ground truth) for demos and tests",
        description="Write synthetic brain MR studies with meningiomas as DICOM, with ground "
        "truth (labels, Bayes probabilities, masks). Deterministic per seed.",
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="new or empty folder")
    p.add_argument("--cases", type=positive_int, default=10, help="number of patients (10)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument(
        "--profile",
        choices=("internal", "external"),
        default="internal",
        help="hospital profile: vendor mix, intensity and noise (internal)",
    )
    p.add_argument(
        "--size", choices=("full", "small"), default="full", help="full 1 mm or small fast cases"
    )
    p.add_argument(
        "--longitudinal",
        action="store_true",
        help="surveillance patients (small asymptomatic meningiomas) with follow-up studies "
        "and growth ground truth; writes growth_manifest.csv (docs/growth-analysis.md)",
    )
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="with --longitudinal: write only the baseline studies (follow-ups in the truth only)",
    )
    bench = p.add_argument_group(
        "segmentation benchmarks (docs/synthetic-cohort.md; defaults change nothing)"
    )
    bench.add_argument(
        "--heads",
        type=head_indices,
        metavar="LIST",
        help="distinct heads to draw cases from, e.g. 1,2,3 or 1-4 (0 = the template head; "
        "default 0, with --pairs 1-8)",
    )
    bench.add_argument(
        "--volume-range",
        type=volume_range,
        metavar="LOW,HIGH",
        help="tumour volume in cm3, log-uniform, at uniformly drawn locations, e.g. 0.5,150",
    )
    bench.add_argument(
        "--tumour-free",
        type=fraction,
        metavar="F",
        help="share of cases without a tumour (empty mask, volume 0), e.g. 0.2",
    )
    bench.add_argument("--t1c-only", action="store_true", help="write only the T1C series")
    bench.add_argument(
        "--pairs",
        type=positive_int,
        metavar="N",
        help="write N baseline/follow-up pairs of the same tumour with a known volume change "
        "(pairs.csv) instead of a cohort; T1C only",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_synth)
    from daemon.cli_followups import add_followup_commands
    from daemon.cli_growth import add_growth_commands
    from daemon.cli_model import add_model_commands
    from daemon.cli_results import add_result_commands

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
