"""Train the bundled U-Net on a synthetic cohort (``ki67node synth`` output).

    python -m ai_core.segmentation.train --cohort /tmp/segtrain --out DIR \\
        --epochs 60 --seed 7 --device auto [--holdout /tmp/segtest]

Each case's T1C series (``ground_truth.csv``) goes through
:func:`ai_core.preprocess.preprocess` (1 mm, N4, [0, 255]) exactly as at
inference; its true mask (``masks/<case>.nii.gz``) is resampled onto the same
grid. Both are reoriented and area-resampled to the working spacing (see
:func:`ai_core.segmentation.unet.to_working`). Training: random 3D crops
(tumour-centred 2 of 3), flips, small affine, intensity scale/shift/gamma,
noise; Dice + cross-entropy; AdamW with cosine decay. The output folder is a
model folder (``unet.pt`` + ``model.json``) that :class:`UNetBackend` loads.
With ``--holdout``, Dice on the held-out cohort is measured at 1 mm and
written into ``model.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.segmentation.base import RESEARCH_ONLY
from ai_core.segmentation.postprocess import IntensityReference, IntensityStats, PostprocessParams
from ai_core.segmentation.unet import (
    BACKEND_NAME,
    MODEL_JSON,
    UNetArchitecture,
    UNetBackend,
    to_working,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "unet.pt"
MODEL_VERSION = "0.1.0"


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 60
    seed: int = 0
    device: str = "auto"
    working_mm: float = 2.0
    crop: int = 48
    samples_per_case: int = 2
    batch_size: int = 2  # cases per step (x samples_per_case crops)
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    max_minutes: float = 0.0  # stop after this many minutes (0: no limit)
    threads: int = 2


@dataclass(frozen=True, eq=False)
class Case:
    case_id: str
    image: np.ndarray  # preprocessed 1 mm [0, 255], source orientation
    mask: np.ndarray  # uint8 on the same grid
    spacing: tuple[float, float, float]
    direction: np.ndarray


def load_case(cohort: Path, row: dict[str, str]) -> Case:
    """One case's preprocessed T1C and its true mask on the same 1 mm grid."""
    import SimpleITK as sitk

    from ai_core.image import Grid
    from ai_core.preprocess import preprocess
    from ai_core.volume import load_series

    case_id = row["case_id"]
    series_dir = cohort / case_id / row["series_number"]
    volume = load_series(sorted(series_dir.glob("*.dcm")))
    pre = preprocess(volume)
    mask_img = sitk.Cast(
        sitk.ReadImage(str(cohort / "masks" / f"{case_id}.nii.gz")), sitk.sitkFloat32
    )
    ref = pre.grid.blank(sitk.sitkFloat32)
    on_grid = sitk.Resample(mask_img, ref, sitk.Transform(), sitk.sitkLinear, 0.0)
    mask = (sitk.GetArrayFromImage(on_grid) >= 0.5).astype(np.uint8)
    grid: Grid = pre.grid
    return Case(case_id, pre.image, mask, grid.spacing, np.asarray(grid.direction))


def read_rows(cohort: Path) -> list[dict[str, str]]:
    path = cohort / "ground_truth.csv"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is {cohort} a finished `ki67node synth` cohort?")
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def load_cohort(cohort: Path, limit: int = 0) -> Iterator[Case]:
    rows = read_rows(cohort)
    for row in rows[:limit] if limit else rows:
        yield load_case(cohort, row)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    denom = int(a.sum()) + int(b.sum())
    return 1.0 if denom == 0 else 2.0 * float(np.logical_and(a, b).sum()) / denom


def evaluate(model_dir: Path, cases: Sequence[Case], device: str = "auto") -> list[dict[str, Any]]:
    """Dice of the backend (with post-processing) against the true masks at 1 mm."""
    backend = UNetBackend(model_dir, device=device)
    out = []
    for case in cases:
        result = backend.segment(case.image, case.spacing, direction=case.direction)
        voxel_ml = float(np.prod(case.spacing)) / 1000.0
        out.append(
            {
                "case_id": case.case_id,
                "dice": round(dice(result.mask_zyx, case.mask), 4),
                "status": result.status,
                "true_ml": round(float(case.mask.sum()) * voxel_ml, 2),
                "predicted_ml": round(float(result.mask_zyx.sum()) * voxel_ml, 2),
            }
        )
        log.info("held-out %s: %s", case.case_id, out[-1])
    return out


def _transforms(crop: int, samples: int) -> Any:
    from monai import transforms as T  # noqa: N812

    keys = ["image", "label"]
    return T.Compose(
        [
            T.SpatialPadd(keys, spatial_size=(crop, crop, crop)),
            T.RandCropByPosNegLabeld(
                keys, "label", spatial_size=(crop, crop, crop), pos=2, neg=1, num_samples=samples
            ),
            T.RandFlipd(keys, prob=0.5, spatial_axis=2),  # left-right
            T.RandAffined(
                keys,
                prob=0.3,
                rotate_range=(0.2, 0.2, 0.2),
                scale_range=(0.1, 0.1, 0.1),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            T.RandScaleIntensityd("image", factors=0.15, prob=0.5),
            T.RandShiftIntensityd("image", offsets=0.08, prob=0.5),
            T.RandAdjustContrastd("image", gamma=(0.8, 1.25), prob=0.3),
            T.RandGaussianNoised("image", std=0.02, prob=0.2),
            T.EnsureTyped(keys, track_meta=False),
        ]
    )


def prepared_case(
    cohort: Path, row: dict[str, str], working_mm: float, cache: Path | None
) -> tuple[np.ndarray, np.ndarray, IntensityStats]:
    """(image, label) at the working spacing and the 1 mm intensity stats; cached as .npz."""
    path = cache / f"{row['case_id']}_{working_mm:g}mm.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as data:
            mean, std, frac = (float(v) for v in data["stats"])
            return data["image"], data["label"], IntensityStats(mean, std, frac)
    case = load_case(cohort, row)
    stats = IntensityStats.of(case.image)
    image, _ = to_working(case.image, case.spacing, case.direction, working_mm)
    soft, _ = to_working(case.mask.astype(np.float32), case.spacing, case.direction, working_mm)
    label = (soft >= 0.5).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            image=image,
            label=label,
            stats=np.array([stats.mean, stats.std, stats.head_fraction]),
        )
    return image, label, stats


def train(
    cohort: Path,
    out: Path,
    params: TrainParams,
    *,
    limit: int = 0,
    progress: bool = True,
    cache: Path | None = None,
) -> dict[str, Any]:
    """Train, save ``unet.pt`` + ``model.json`` under ``out``; return the model description."""
    import torch
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.utils import set_determinism
    from tqdm import tqdm

    from ai_core.segmentation.unet import resolve_device

    torch.set_num_threads(params.threads)
    set_determinism(seed=params.seed)
    device = resolve_device(params.device)
    arch = UNetArchitecture()
    scale = 1.0 / 255.0
    started = time.perf_counter()
    items, stats = [], []
    rows = read_rows(cohort)
    for row in tqdm(
        rows[:limit] if limit else rows,
        desc="prepare",
        unit="case",
        disable=not progress,
        file=sys.stderr,
    ):
        image, label, case_stats = prepared_case(cohort, row, params.working_mm, cache)
        stats.append(case_stats)
        items.append({"image": (image * scale)[None], "label": label[None]})
    prep_s = time.perf_counter() - started
    loader = DataLoader(
        Dataset(items, _transforms(params.crop, params.samples_per_case)),
        batch_size=params.batch_size,
        shuffle=True,
        num_workers=0,
    )
    net = arch.build().to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    total_steps = params.epochs * len(loader)
    budget_s = max(params.max_minutes * 60.0 - (time.perf_counter() - started), 60.0)
    train_start = time.perf_counter()
    bar = tqdm(
        range(params.epochs), desc="train", unit="epoch", disable=not progress, file=sys.stderr
    )
    epochs_done, step, last_loss = 0, 0, float("nan")
    for _epoch in bar:
        net.train()
        losses = []
        for batch in loader:
            # cosine decay over the steps, or over the wall-time budget when one is set
            progress_frac = step / total_steps
            if params.max_minutes:
                progress_frac = max(progress_frac, (time.perf_counter() - train_start) / budget_s)
            for group in opt.param_groups:
                group["lr"] = (
                    params.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress_frac, 1.0)))
                )
            x = batch["image"].to(device)
            y = batch["label"].to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(x), y)
            loss.backward()
            opt.step()
            step += 1
            losses.append(float(loss.item()))
        last_loss = float(np.mean(losses))
        epochs_done += 1
        bar.set_postfix(loss=f"{last_loss:.3f}")
        log.info("epoch %d loss %.4f", epochs_done, last_loss)
        if params.max_minutes and time.perf_counter() - train_start > budget_s:
            log.warning(
                "stopping after %d epochs: time limit of %s min", epochs_done, params.max_minutes
            )
            break
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    meta = {
        "name": BACKEND_NAME,
        "version": MODEL_VERSION,
        "notice": RESEARCH_ONLY,
        "architecture": arch.to_dict(),
        "weights": WEIGHTS_FILE,
        "working_spacing_mm": params.working_mm,
        "input": (
            "ai_core.preprocess.preprocess defaults (1 mm, N4, head 0.5-99.5 percentiles to "
            "[0, 255]); reoriented to the nearest axial LPS; area-resampled to the working "
            "spacing; multiplied by input_scale"
        ),
        "input_scale": scale,
        "inference": {"roi_size": [96, 96, 96], "overlap": 0.25, "blend": "gaussian"},
        "postprocess": asdict(PostprocessParams()),
        "intensity_reference": asdict(IntensityReference.fit(stats)),
        "training": {
            "command": "python -m ai_core.segmentation.train " + shlex.join(sys.argv[1:]),
            "cohort": str(cohort),
            "cases": len(items),
            "params": asdict(params),
            "epochs_done": epochs_done,
            "final_loss": round(last_loss, 4),
            "device": device,
            "torch": torch.__version__,
            "prepare_seconds": round(prep_s, 1),
            "seconds": round(time.perf_counter() - started, 1),
        },
    }
    _write_meta(out, meta)
    return meta


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    (out / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _cohort_seed(cohort: Path) -> int | None:
    try:
        return int(json.loads((cohort / "cohort.json").read_text(encoding="utf-8"))["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ai_core.segmentation.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--cohort", type=Path, required=True, help="ki67node synth output (training)"
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--epochs", type=int, default=TrainParams.epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--holdout", type=Path, help="cohort for the held-out Dice")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="wall-time limit")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N cases")
    parser.add_argument("--cache", type=Path, help="folder for prepared working arrays (reused)")
    parser.add_argument("--prepare-only", action="store_true", help="fill --cache and stop")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    params = TrainParams(
        epochs=args.epochs, seed=args.seed, device=args.device, max_minutes=args.max_minutes
    )
    if args.prepare_only:
        for row in read_rows(args.cohort)[: args.limit or None]:
            prepared_case(args.cohort, row, params.working_mm, args.cache)
            log.info("prepared %s", row["case_id"])
        return 0
    meta = train(
        args.cohort,
        args.out,
        params,
        limit=args.limit,
        progress=not args.no_progress,
        cache=args.cache,
    )
    meta["training"]["cohort_seed"] = _cohort_seed(args.cohort)
    if args.holdout:
        rows = evaluate(args.out, list(load_cohort(args.holdout)), device=args.device)
        dices = [r["dice"] for r in rows]
        meta["evaluation"] = {
            "cohort": str(args.holdout),
            "cohort_seed": _cohort_seed(args.holdout),
            "cases": len(rows),
            "dice_mean": round(float(np.mean(dices)), 4),
            "dice_median": round(float(np.median(dices)), 4),
            "dice_min": round(float(np.min(dices)), 4),
            "per_case": rows,
        }
    _write_meta(args.out, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
