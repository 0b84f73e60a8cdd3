"""``ki67node growth-analysis``: the source study's surveillance analysis on a site's cohort.

Thin wrapper: arguments in, :mod:`ai_core.evaluation.survival_report` does
the work (docs/growth-analysis.md), a short summary out.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ai_core.disclaimer import DISCLAIMER
from daemon.cli.common import add_workers_option, positive_int, setup_logging


def cmd_growth_analysis(args: argparse.Namespace) -> int:

    setup_logging("DEBUG" if args.debug else "INFO")
    from ai_core.evaluation.growth_report import run_growth_analysis
    from ai_core.evaluation.survival_report import PAPER
    from ai_core.model.predict import resolve_device

    results, report = run_growth_analysis(
        [Path(m) for m in args.manifest],
        Path(args.model) if args.model else None,
        Path(args.out),
        cache_dir=Path(args.cache) if args.cache else None,
        workers=args.workers,
        progress=not args.no_progress,
        device=resolve_device(args.device),
        bootstrap=args.bootstrap,
        seed=args.seed,
        segment=args.segment,
        segmentation_model=Path(args.segmentation_model) if args.segmentation_model else None,
    )
    adopted = ""
    if args.adopt_risk_threshold:
        from ai_core.evaluation.growth_report import adopt_risk_threshold, risk_threshold_record
        from ai_core.model.bundle import BUNDLED_DIR

        record = risk_threshold_record(results)
        if record is None:
            print("no growth-risk threshold: the cohort has no case or no control at 3 years")
            return 1
        path = adopt_risk_threshold(Path(args.model) if args.model else BUNDLED_DIR, record)
        adopted = f"growth-risk threshold {record['threshold']:.4f} written to {path}\n"
    km = results["km_risk"]["logrank"]
    aucs = results["time_auc"]["model probability (Output 1)"]
    multi = results["cox_multivariate"]
    hr = "n/a"
    if multi is not None:
        r = multi.rows[0]
        hr = f"{r.hr:.3f} ({r.low:.3f}-{r.high:.3f}) [{r.covariate}]"
    auc_text = ", ".join(
        f"{a.years:g}-year AUC {'n/a' if a.auc is None else f'{a.auc:.3f}'}" for a in aucs
    )
    p = "n/a" if km.p_value is None else f"{km.p_value:.2g}"
    print(
        f"{results['n']} patients, {results['events']} with growth\n"
        f"{auc_text} (paper: {PAPER['auc_3y']} / {PAPER['auc_5y']})\n"
        f"log-rank p {p} (paper: p {PAPER['logrank_p']}); multivariate Cox HR {hr} "
        f"(paper: {PAPER['cox_hr']})\n"
        f"report: {report}\n{adopted}{DISCLAIMER}"
    )
    return 0


def add_growth_commands(sub: Any) -> None:
    """Register ``growth-analysis`` on the ``ki67node`` subcommand parser."""
    p = sub.add_parser(
        "growth-analysis",
        help="Kaplan-Meier, log-rank, Cox, 3/5-year AUC and decision curves of tumour growth",
        description="The source study's growth analysis on a cohort of baseline studies with "
        "follow-up (growth manifest CSV: the training manifest's columns plus time_years, event "
        "and skull_base; see docs/growth-analysis.md). `ki67node synth --longitudinal` writes one.",
    )
    p.add_argument("manifest", metavar="MANIFEST", nargs="+", help="growth manifest CSV(s)")
    p.add_argument(
        "--model", default="", metavar="MODEL_DIR", help="bundle (default: the bundled demo)"
    )
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder")
    p.add_argument("--cache", help="feature cache folder (default: REPORT_DIR/cache)")
    add_workers_option(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto)")
    p.add_argument("--bootstrap", type=positive_int, default=200, help="AUC bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    p.add_argument(
        "--segment",
        action="store_true",
        help="ignore the manifest's masks: segment every baseline as the node does "
        "(abstentions are not assessable)",
    )
    p.add_argument(
        "--segmentation-model",
        metavar="DIR",
        help="with --segment: a segmentation model folder (default: the bundled weights)",
    )
    p.add_argument(
        "--adopt-risk-threshold",
        action="store_true",
        help="write this cohort's Youden threshold (growth by 3 years) into the --model "
        "bundle's model.json as its growth-risk threshold (a development cohort, not the "
        "one you report on)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_growth_analysis)
