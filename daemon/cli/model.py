"""``ki67node train`` and ``ki67node evaluate``: the research side of the command line.

Thin wrappers: arguments in, :mod:`lab.model.fit` /
:mod:`lab.evaluation.evaluate` do the work, a short summary out.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ai_core.disclaimer import DISCLAIMER
from daemon.cli.common import add_workers_option, positive_int, setup_logging

log = logging.getLogger("ki67node")

#: Default of --ema-decay (lab.model.train.TrainSettings.ema_decay).
EMA_DECAY = 0.0


def _at_least_one(text: str) -> float:
    """An argparse type: a finite number of at least 1."""
    value = float(text)
    if not 1.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be a number of at least 1")
    return value


def _non_negative(text: str) -> float:
    """An argparse type: a finite number of at least 0."""
    value = float(text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError("must be a finite number of at least 0")
    return value


def _train_settings(args: argparse.Namespace) -> Any:
    # research tooling (lab) and torch (predict): not loaded by serve
    from ai_core.model.predict import resolve_device
    from lab.model.train import TrainSettings

    return TrainSettings(
        epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        augment=not args.no_augment,
        device=resolve_device(args.device),
        ema_decay=args.ema_decay,
        linear_lr_mult=args.linear_lr_mult,
        residual_l2=args.residual_l2,
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=positive_int, default=60, help="maximum epochs per run (60)")
    p.add_argument("--patience", type=positive_int, default=30, help="early-stopping patience (30)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="batch size (16)")
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate (3e-4)")
    p.add_argument(
        "--ema-decay",
        type=float,
        default=EMA_DECAY,
        help=f"moving average of the weights per step, the averaged model is kept; 0 = off "
        f"({EMA_DECAY})",
    )
    p.add_argument(
        "--linear-lr-mult",
        type=_non_negative,
        default=0.0,
        help="learning rate of the warm-started linear path as a multiple of --lr; "
        "0 = frozen as fitted (0)",
    )
    p.add_argument(
        "--residual-l2",
        type=_non_negative,
        default=0.5,
        help="L2 penalty on the attention path's logits, which shrinks the Transformer's "
        "correction to the linear path towards 0 (0.5)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto)")
    p.add_argument("--no-augment", action="store_true", help="no MONAI augmentation")
    add_workers_option(p)
    p.add_argument("--cache", help="feature cache folder (default: OUT/cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def cmd_train(args: argparse.Namespace) -> int:

    setup_logging("DEBUG" if args.debug else "INFO")
    # research tooling (lab) and SimpleITK (inputs): not loaded by serve
    from ai_core.model.inputs import CropParams
    from lab.model.fit import train_bundle

    out = Path(args.out)
    outcome = train_bundle(
        [Path(m) for m in args.manifest],
        out,
        settings=_train_settings(args),
        config_overrides={
            "size_tokens": not args.no_size_tokens,
            "texture_tokens": not args.no_texture_tokens,
            "linear_skip": not args.no_linear_skip,
        },
        crop=None if args.crop_max_value is None else CropParams(max_value=args.crop_max_value),
        cache_dir=Path(args.cache) if args.cache else None,
        workers=args.workers,
        progress=not args.no_progress,
    )
    v = outcome.validation
    print(
        f"model bundle written to {outcome.bundle_dir} ({outcome.cases_used} cases, "
        f"{outcome.not_assessable} not assessable; best epoch {outcome.best_epoch}, "
        f"{outcome.seconds / 60:.1f} min)\n"
        f"validation Output 1: AUC {v['auc']:.3f}, sensitivity {v['sensitivity']:.3f}, "
        f"specificity {v['specificity']:.3f} (optimistic: the same split chose the epoch; "
        f"run `ki67node evaluate` for held-out estimates)\n"
        f"training curve: {outcome.curve}\n"
        "segmentation is not trained by this command: see docs/segmentation.md "
        "(python -m lab.segmentation.train)\n"
        f"{DISCLAIMER}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:

    setup_logging("DEBUG" if args.debug else "INFO")
    # research tooling, not loaded by serve
    from lab.evaluation.evaluate import evaluate_manifest
    from lab.evaluation.protocol import OUTPUT1, EvaluateSettings, summary_table

    settings = EvaluateSettings(
        runs=args.runs, bootstrap=args.bootstrap, seed=args.seed, train=_train_settings(args)
    )
    result, report = evaluate_manifest(
        [Path(m) for m in args.manifest],
        Path(args.model) if args.model else None,
        Path(args.out),
        settings,
        cache_dir=Path(args.cache) if args.cache else None,
        workers=args.workers,
        progress=not args.no_progress,
    )
    table = summary_table(result)
    for cohort, metrics in table[OUTPUT1].items():
        print(f"{OUTPUT1}, {cohort}: AUC {metrics['auc']}")
    print(f"report: {report}\n{DISCLAIMER}")
    return 0


def add_model_commands(sub: Any) -> None:
    p = sub.add_parser(
        "train",
        help="train a Ki-67 model bundle on a manifest of cases",
        description="Train the cascaded multi-modal Transformer on the development cases of a "
        "manifest (CSV: case_id, series, mask, ki67_index or ki67_high, characteristics...; "
        "see docs/model.md) and write a model bundle.",
    )
    p.add_argument("manifest", metavar="MANIFEST", nargs="+", help="CSV(s) of cases")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="bundle folder to write")
    p.add_argument(
        "--no-size-tokens",
        action="store_true",
        help="ablation: no tumour-size tokens in the MRI block (docs/model.md)",
    )
    p.add_argument(
        "--no-texture-tokens",
        action="store_true",
        help="ablation: no enhancement-heterogeneity tokens in the MRI block",
    )
    p.add_argument(
        "--no-linear-skip",
        action="store_true",
        help="ablation: no linear path from the MRI values and characteristics to the heads",
    )
    p.add_argument(
        "--crop-max-value",
        type=_at_least_one,
        metavar="X",
        help="clip the crop's T1C at X times the top of the head's intensity window "
        "(default: ai_core.model.inputs.CropParams, 4; 1 = the clipped working image)",
    )
    _common(p)
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "evaluate",
        help="the paper's evaluation protocol: repeated 8:2 runs, external cohort, baselines",
        description="Repeated stratified 8:2 splits of the development cohort (train with the "
        "bundle's architecture and parameters), test on the split and on the external cohort; "
        "six metrics with 95 % intervals, modality ablation, clinical and radiomics baselines, "
        "DeLong tests, ROC plots and a Markdown report.",
    )
    p.add_argument(
        "manifest",
        metavar="MANIFEST",
        nargs="+",
        help="CSV(s) of cases (cohort column: development / external)",
    )
    p.add_argument(
        "--model", default="", metavar="MODEL_DIR", help="bundle (default: the bundled demo)"
    )
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="report folder")
    p.add_argument("--runs", type=positive_int, default=50, help="repeated splits (50)")
    p.add_argument(
        "--bootstrap", type=positive_int, default=1000, help="bootstrap resamples (1000)"
    )
    _common(p)
    p.set_defaults(func=cmd_evaluate)
