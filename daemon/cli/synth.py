"""``ki67node synth``: a synthetic cohort (DICOM studies + ground truth) for demos, tests and benchmarks.

Thin wrapper: arguments in, :mod:`lab.synth` does the work (docs/synthetic-cohort.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ai_core.disclaimer import DISCLAIMER
from daemon.cli.common import positive_int, setup_logging


def add_synth_command(sub: Any) -> None:
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
    # research tooling, not loaded by serve
    from lab.synth import generate_cohort

    if args.pairs:
        # research tooling, not loaded by serve
        from lab.synth.pairs import DEFAULT_PAIR_HEADS, generate_pairs

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
        # research tooling, not loaded by serve
        from lab.synth.longitudinal import generate_longitudinal

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
