"""Train the bundled U-Net on images synthesised from label maps (issue 17).

    python -m lab.segmentation.train --out DIR --steps 6000 --seed 7 \\
        --maps 160 --map-seed 1701 --max-minutes 90 [--resume] [--holdout COHORT]

No training image comes from the renderer: :mod:`lab.segmentation.labelmaps`
builds ``--maps`` whole-head label maps (the generator's anatomy as tissue
codes, tumours 0.5-150 cm³ at every site, 15 % tumour-free), and every step
draws fresh crops from them with a random deformation and a random
appearance per label (:mod:`lab.segmentation.synthesis`, after SynthSeg),
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
import json
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from lab.segmentation.holdout import evaluate, load_cohort
from lab.segmentation.model_card import ARCHITECTURES, WEIGHTS_FILE, describe, write_meta
from lab.segmentation.synthesis import SynthesisParams

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


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


def _samples(bank: list[Any], seed: int, params: SynthesisParams, start: int) -> Any:
    """An endless stream of synthesised (image, target) pairs; each worker its own seed."""
    import torch
    from torch.utils.data import IterableDataset, get_worker_info

    from lab.segmentation.synthesis import synthesise

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


def _network(params: TrainParams, device: str) -> tuple[Any, Any]:
    """The network (warm-started or fine-tuned with ``--init``) and its optimiser."""
    import torch

    net = ARCHITECTURES[params.arch].build()
    if params.init:
        warm_start(net, Path(params.init))
    net = net.to(device)
    opt = torch.optim.AdamW(
        net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay
    )
    return net, opt


def _resume(checkpoint: Path, net: Any, opt: Any, device: str) -> tuple[int, float]:
    """Load ``checkpoint.pt`` into ``net``/``opt``; returns (step, seconds trained before)."""
    import torch

    state = torch.load(checkpoint, map_location=device, weights_only=True)
    net.load_state_dict(state["net"])
    opt.load_state_dict(state["opt"])
    step, previous_s = int(state["step"]), float(state["seconds"])
    log.info("resumed at step %d (%.0f s of training before)", step, previous_s)
    return step, previous_s


def _progress(step: int, params: TrainParams, losses: list[float], elapsed: float) -> None:
    rate = len(losses) / max(elapsed, 1e-6)
    log.info(
        "step %d/%d loss %.4f (%.2f steps/s, about %.0f min left)",
        step,
        params.steps,
        float(np.mean(losses[-50:])),
        rate,
        (params.steps - step) / max(rate, 1e-6) / 60.0,
    )


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

    from ai_core.segmentation.unet import resolve_device
    from lab.segmentation.labelmaps import build_bank

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
    net, opt = _network(params, device)
    step, previous_s = 0, 0.0
    checkpoint = out / CHECKPOINT_FILE
    if resume and checkpoint.is_file():
        step, previous_s = _resume(checkpoint, net, opt, device)
    loader: DataLoader[Any] = DataLoader(
        _samples(bank, params.seed, synthesis, step),
        batch_size=params.batch_size,
        num_workers=params.workers,
        persistent_workers=params.workers > 0,
    )
    train_start = time.perf_counter()
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
            _progress(step, params, losses, elapsed)
        if step % params.checkpoint_every == 0:
            _save_checkpoint(checkpoint, net, opt, step, previous_s + elapsed)
        if params.max_minutes and elapsed > params.max_minutes * 60.0 - previous_s:
            log.warning("time limit of %s min reached at step %d", params.max_minutes, step)
            break
    seconds = previous_s + time.perf_counter() - train_start
    _save_checkpoint(checkpoint, net, opt, step, seconds)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / WEIGHTS_FILE)
    meta = describe(params, synthesis, step, seconds, bank_s, device, losses)
    write_meta(out, meta)
    return meta


def _cohort_seed(cohort: Path) -> int | None:
    try:
        return int(json.loads((cohort / "cohort.json").read_text(encoding="utf-8"))["seed"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _pair(text: str) -> tuple[float, float]:
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"expected LOW,HIGH (two numbers), got {text!r}") from None
    return low, high


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lab.segmentation.train", description=__doc__.split("\n")[0]
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
    parser.add_argument(
        "--tumour-contrast",
        default=",".join(str(v) for v in s.tumour_contrast),
        help="realistic samples: tumour / white matter intensity range, LOW,HIGH "
        f"({s.tumour_contrast[0]},{s.tumour_contrast[1]})",
    )
    parser.add_argument("--holdout", type=Path, help="ki67node synth cohort for held-out Dice")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    d, s = TrainParams(), SynthesisParams()
    args = _parser().parse_args(argv)
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
        s,
        crop=args.crop,
        p_realistic=args.p_realistic,
        p_brain_centre=args.p_brain_centre,
        tumour_contrast=_pair(args.tumour_contrast),
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
    write_meta(args.out, meta)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
