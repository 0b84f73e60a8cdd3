"""Train the bundled U-Net on images synthesised from label maps (issue 17).

    python -m ai_core.segmentation.train --out DIR --steps 6000 --seed 7 \\
        --maps 160 --map-seed 1701 --max-minutes 90 [--resume] [--holdout COHORT]

No training image comes from the renderer: :mod:`ai_core.segmentation.labelmaps`
builds ``--maps`` whole-head label maps (the generator's anatomy as tissue
codes, tumours 0.5-150 cm³ at every site, 15 % tumour-free), and every step
draws fresh crops from them with a random deformation and a random
appearance per label (:mod:`ai_core.segmentation.synthesis`, after SynthSeg),
in a worker process. The network has two sigmoid outputs, tumour and
intracranial compartment; loss = Dice + binary cross-entropy on each
(intracranial weighted ½); AdamW with cosine decay over ``--steps``.

Training is checkpointed (``DIR/checkpoint.pt``) every ``--checkpoint-every``
steps and when ``--max-minutes`` runs out; ``--resume`` continues from it
with the same schedule. The output folder is a model folder (``unet.pt`` +
``model.json``) that :class:`UNetBackend` loads; ``model.json`` records the
command, seeds and wall time. With ``--holdout`` (a ``ki67node synth``
cohort: realistic rendering, never seen in any form), Dice at 1 mm after
post-processing is measured and written into ``model.json``.
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.segmentation.base import RESEARCH_ONLY
from ai_core.segmentation.postprocess import IntensityReference, PostprocessParams
from ai_core.segmentation.synthesis import SynthesisParams
from ai_core.segmentation.unet import (
    BACKEND_NAME,
    MODEL_JSON,
    UNetArchitecture,
    UNetBackend,
)

log = logging.getLogger(__name__)

WEIGHTS_FILE = "unet.pt"
CHECKPOINT_FILE = "checkpoint.pt"
MODEL_VERSION = "0.2.0"
#: ``--arch``: "base" (16-32-64-128, instance norm) or "small" (the 0.1 network's
#: 8-16-32-64 with batch norm, which ``--init`` can warm-start from a 0.1 model).
ARCHITECTURES = {
    "base": UNetArchitecture(
        channels=(16, 32, 64, 128),
        strides=(2, 2, 2),
        num_res_units=1,
        norm="instance",
        activation="sigmoid",
    ),
    "small": UNetArchitecture(
        channels=(8, 16, 32, 64),
        strides=(2, 2, 2),
        num_res_units=1,
        norm="batch",
        activation="sigmoid",
    ),
}
#: Post-processing of the 0.2 models: the most confident intracranial candidate.
POSTPROCESS = PostprocessParams(
    threshold=0.5,
    min_component_ml=0.05,
    min_lesion_ml=0.1,
    select="confidence",
    min_confidence=0.8,
    confidence_quantile=0.9,
    min_intracranial=0.5,
    max_dural_distance_mm=8.0,
)
#: Head statistics of preprocessed synthetic T1C studies (40 studies, cohort seed 101,
#: measured for model 0.1.0); the preprocessing has not changed since.
INTENSITY_REFERENCE = IntensityReference(
    mean_mean=124.17456493377685,
    mean_std=6.667965593906663,
    std_mean=66.05041217803955,
    std_std=3.2137810695440834,
    max_z=8.0,
)


@dataclass(frozen=True)
class TrainParams:
    steps: int = 6000
    seed: int = 0
    device: str = "auto"
    working_mm: float = 2.0
    batch_size: int = 2
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    max_minutes: float = 0.0  # stop (with a checkpoint) after this many minutes; 0: no limit
    threads: int = 1
    workers: int = 1  # processes synthesising samples
    maps: int = 160
    map_seed: int = 1701
    tumour_free_fraction: float = 0.15
    checkpoint_every: int = 200
    intracranial_weight: float = 0.5
    arch: str = "base"
    init: str = ""  # a 0.1 model folder (warm start) or a 0.2 one (fine-tune) of the same arch
    roi: int = 0  # inference window edge (voxels); 0: the crop's

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"arch must be one of {sorted(ARCHITECTURES)}, got {self.arch!r}")


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


def _samples(bank: list[Any], seed: int, params: SynthesisParams, start: int) -> Any:
    """An endless stream of synthesised (image, target) pairs; each worker its own seed."""
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    from ai_core.segmentation.synthesis import synthesise

    class Samples(IterableDataset):
        def __iter__(self) -> Iterator[tuple[Any, Any]]:
            info = get_worker_info()
            worker = info.id if info is not None else 0
            rng = np.random.default_rng([seed, start, worker])
            while True:
                lm = bank[int(rng.integers(len(bank)))]
                image, target = synthesise(lm, rng, params)
                yield torch.from_numpy(image), torch.from_numpy(target)

    return Samples()


def _loss(logits: Any, target: Any, intracranial_weight: float) -> Any:
    """Dice (over the batch) + BCE on the tumour output, the same ×weight on the intracranial one."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    prob = torch.sigmoid(logits)
    dims = (0, 2, 3, 4)
    inter = (prob * target).sum(dims)
    denom = prob.sum(dims) + target.sum(dims)
    dice = 1.0 - (2.0 * inter + 1.0) / (denom + 1.0)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dims)
    per_channel = dice + bce
    return per_channel[0] + intracranial_weight * per_channel[1]


def _learning_rate(params: TrainParams, step: int, seconds: float) -> float:
    """Warm-up, then cosine decay over the steps or the wall-time budget, whichever ends first."""
    warmup = 100
    if step < warmup:
        return params.learning_rate * (step + 1) / warmup
    frac = step / max(params.steps, 1)
    if params.max_minutes:
        frac = max(frac, seconds / (params.max_minutes * 60.0))
    return params.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))


def warm_start(net: Any, folder: Path) -> None:
    """Load a 0.1 (softmax: background, tumour) model into the two-sigmoid ``net``.

    A 0.2 (two-sigmoid) model of the same architecture is loaded unchanged
    (fine-tuning a previous run).
    Every layer but the last is copied. The last (MONAI's top residual unit:
    ``conv(h) + h`` on the two channels ``h``) is set so that output 0 is
    exactly the old tumour logit minus the background logit — the old tumour
    probability through a sigmoid — and output 1 (intracranial) starts at
    ``h_1``; training then adapts both.
    """
    import torch

    from ai_core.segmentation.unet import load_unet_model

    old = load_unet_model(folder)
    state = torch.load(folder / old.weights_file, map_location="cpu", weights_only=True)
    if old.architecture.activation == "sigmoid":  # a 0.2 model: fine-tune it as it is
        net.load_state_dict(state)
        return
    last = "model.2.1.conv.unit0.conv."
    weight, bias = state[last + "weight"].clone(), state[last + "bias"].clone()
    centre = tuple(k // 2 for k in weight.shape[2:])
    new_w, new_b = torch.zeros_like(weight), torch.zeros_like(bias)
    new_w[0] = weight[1] - weight[0]
    new_b[0] = bias[1] - bias[0]
    # out0 = conv0(h) + h0 must equal (W1 - W0) h + b1 - b0 + h1 - h0
    new_w[(0, 1, *centre)] += 1.0
    new_w[(0, 0, *centre)] -= 2.0
    state[last + "weight"], state[last + "bias"] = new_w, new_b
    net.load_state_dict(state)


def _save_checkpoint(path: Path, net: Any, opt: Any, step: int, seconds: float) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(
        {"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "seconds": seconds}, tmp
    )
    tmp.replace(path)


def train(
    out: Path,
    params: TrainParams,
    *,
    resume: bool = False,
    synthesis: SynthesisParams | None = None,
) -> dict[str, Any]:
    """Train (or resume), save ``unet.pt`` + ``model.json`` under ``out``; return the description."""
    import torch
    from torch.utils.data import DataLoader

    from ai_core.segmentation.labelmaps import build_bank
    from ai_core.segmentation.unet import resolve_device

    synthesis = synthesis or SynthesisParams()
    torch.set_num_threads(params.threads)
    torch.manual_seed(params.seed)
    device = resolve_device(params.device)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bank = build_bank(
        params.maps, params.map_seed, tumour_free_fraction=params.tumour_free_fraction
    )
    bank_s = time.perf_counter() - started
    log.info("%d label maps built in %.0f s", len(bank), bank_s)
    arch = ARCHITECTURES[params.arch]
    net = arch.build()
    if params.init:
        warm_start(net, Path(params.init))
    net = net.to(device)
    opt = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    step, previous_s = 0, 0.0
    checkpoint = out / CHECKPOINT_FILE
    if resume and checkpoint.is_file():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        step, previous_s = int(state["step"]), float(state["seconds"])
        log.info("resumed at step %d (%.0f s of training before)", step, previous_s)
    loader: DataLoader[Any] = DataLoader(
        _samples(bank, params.seed, synthesis, step),
        batch_size=params.batch_size,
        num_workers=params.workers,
        persistent_workers=params.workers > 0,
    )
    train_start = time.perf_counter()
    budget_s = params.max_minutes * 60.0 - previous_s
    losses: list[float] = []
    net.train()
    for image, target in loader:
        if step >= params.steps:
            break
        for group in opt.param_groups:
            group["lr"] = _learning_rate(
                params, step, previous_s + time.perf_counter() - train_start
            )
        opt.zero_grad(set_to_none=True)
        loss = _loss(net(image.to(device)), target.to(device), params.intracranial_weight)
        loss.backward()
        opt.step()
        step += 1
        losses.append(float(loss.item()))
        elapsed = time.perf_counter() - train_start
        if step % 50 == 0:
            rate = len(losses) / max(elapsed, 1e-6)
            log.info(
                "step %d/%d loss %.4f (%.2f steps/s, about %.0f min left)",
                step,
                params.steps,
                float(np.mean(losses[-50:])),
                rate,
                (params.steps - step) / max(rate, 1e-6) / 60.0,
            )
        if step % params.checkpoint_every == 0:
            _save_checkpoint(checkpoint, net, opt, step, previous_s + elapsed)
        if params.max_minutes and elapsed > budget_s:
            log.warning("time limit of %s min reached at step %d", params.max_minutes, step)
            break
    seconds = previous_s + time.perf_counter() - train_start
    _save_checkpoint(checkpoint, net, opt, step, seconds)
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    torch.save(state, out / WEIGHTS_FILE)
    meta = _describe(params, synthesis, step, seconds, bank_s, device, losses)
    _write_meta(out, meta)
    return meta


def _describe(
    params: TrainParams,
    synthesis: SynthesisParams,
    step: int,
    seconds: float,
    bank_s: float,
    device: str,
    losses: list[float],
) -> dict[str, Any]:
    import torch

    return {
        "name": BACKEND_NAME,
        "version": MODEL_VERSION,
        "notice": RESEARCH_ONLY,
        "architecture": ARCHITECTURES[params.arch].to_dict(),
        "weights": WEIGHTS_FILE,
        "working_spacing_mm": params.working_mm,
        "input": (
            "ai_core.preprocess.preprocess defaults (1 mm, N4, head 0.5-99.5 percentiles to "
            "[0, 255]); reoriented to the nearest axial LPS; area-resampled to the working "
            "spacing; multiplied by input_scale"
        ),
        "input_scale": 1.0 / 255.0,
        "inference": {
            "roi_size": [params.roi or synthesis.crop] * 3,
            "overlap": 0.25,
            "blend": "gaussian",
        },
        "postprocess": asdict(POSTPROCESS),
        "intensity_reference": asdict(INTENSITY_REFERENCE),
        "training": {
            "command": "python -m ai_core.segmentation.train " + shlex.join(sys.argv[1:]),
            "data": (
                "images synthesised on the fly from label maps with a random appearance per "
                "label (ai_core.segmentation.labelmaps / synthesis); no rendered study"
            ),
            "params": asdict(params),
            "synthesis": asdict(synthesis),
            "steps_done": step,
            "final_loss": round(float(np.mean(losses[-100:])), 4) if losses else None,
            "device": device,
            "torch": torch.__version__,
            "label_map_seconds": round(bank_s, 1),
            "seconds": round(seconds, 1),
        },
    }


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
    d = TrainParams()
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"optimiser steps ({d.steps})")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--maps", type=int, default=d.maps, help=f"label maps ({d.maps})")
    parser.add_argument("--map-seed", type=int, default=d.map_seed)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--threads", type=int, default=d.threads, help="torch threads")
    parser.add_argument("--workers", type=int, default=d.workers, help="sample processes")
    parser.add_argument("--max-minutes", type=float, default=0.0, help="wall-time limit")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    parser.add_argument("--resume", action="store_true", help="continue from checkpoint.pt")
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--arch", choices=sorted(ARCHITECTURES), default=d.arch)
    parser.add_argument(
        "--init", default="", help="model folder to start from (0.1: warm start; 0.2: fine-tune)"
    )
    parser.add_argument("--roi", type=int, default=0, help="inference window (0: --crop)")
    parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
    s = SynthesisParams()
    parser.add_argument("--crop", type=int, default=s.crop, help=f"crop edge, voxels ({s.crop})")
    parser.add_argument(
        "--p-realistic",
        type=float,
        default=s.p_realistic,
        help=f"share of samples with a realistic T1C appearance ({s.p_realistic})",
    )
    parser.add_argument(
        "--p-brain-centre",
        type=float,
        default=s.p_brain_centre,
        help=f"share of crops centred in the lower brain: hard negatives ({s.p_brain_centre})",
    )
    parser.add_argument("--holdout", type=Path, help="ki67node synth cohort for held-out Dice")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    params = replace(
        d,
        steps=args.steps,
        seed=args.seed,
        maps=args.maps,
        map_seed=args.map_seed,
        device=args.device,
        threads=args.threads,
        workers=args.workers,
        max_minutes=args.max_minutes,
        checkpoint_every=args.checkpoint_every,
        batch_size=args.batch_size,
        arch=args.arch,
        init=args.init,
        roi=args.roi,
        learning_rate=args.learning_rate,
    )
    synthesis = replace(
        s, crop=args.crop, p_realistic=args.p_realistic, p_brain_centre=args.p_brain_centre
    )
    meta = train(args.out, params, resume=args.resume, synthesis=synthesis)
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
