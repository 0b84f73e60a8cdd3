"""Training the Ki-67 Transformer: one run on a table, and ``ki67node train``.

One run: AdamW, class imbalance handled by the positive-class weight of the
loss (n_negative / n_positive), MONAI augmentation of the crops (left-right
flip — side carries no label information —, small affine, intensity scale/shift,
noise), modality dropout inside the network, early stopping on the
validation AUC of Output 1, the best epoch's weights kept. Before the first
epoch the linear path is fitted as a logistic regression on the training
cases (:func:`_warm_start_linear`), on size/texture values measured once on
the crops before augmentation (:func:`_summaries`); by default it then stays
frozen and the attention path's logits carry an L2 penalty, so that the
Transformer learns a shrunken correction to the regression. Seeds make a run
reproducible on the same device.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError, ModelError
from ai_core.model.data import CaseTable, batch_tensors, standardised_radiomics
from ai_core.radiomics_features import RadiomicsStandardiser

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings of one run (stored in the bundle)."""

    epochs: int = 60
    # Epochs without a better validation AUC before stopping. Long: the shrunken attention
    # path grows slowly and a small split's validation AUC moves in steps (measured: 12
    # stopped a 200-study run at epoch 13, its attention path still a no-op).
    patience: int = 30
    min_epochs: int = 8
    batch_size: int = 16
    learning_rate: float = 3e-4
    weight_decay: float = 1e-2
    validation_fraction: float = 0.2
    augment: bool = True
    seed: int = 0
    device: str = "cpu"
    # Exponential moving average of the weights (per optimiser step); the averaged
    # model is the one validated and kept. 0 = off. Small cohorts: the average of
    # the last few epochs generalises better than any single step's weights.
    ema_decay: float = 0.0
    # Learning-rate multiple of the warm-started linear path (blocks.LinearEvidence).
    # 0 = frozen: it stays the logistic regression fitted before the first epoch and
    # the attention path learns only what it adds (measured on 240 held-out synthetic
    # studies: training it along at 30x lowered Output 1 AUC from 0.79 to 0.75; frozen, 0.79).
    linear_lr_mult: float = 0.0
    # L2 penalty on the attention path's logits (each head's logit minus the linear
    # path's term, mean square over heads and batch): the Transformer's correction to
    # the regression is shrunk towards 0 unless the training cases keep asking for it.
    # Without it the correction fitted noise of 200 cases (Output 1 0.79 -> 0.77 held-out).
    residual_l2: float = 0.5

    def __post_init__(self) -> None:
        for name in ("epochs", "patience", "min_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ModelError(f"TrainSettings.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.validation_fraction < 0.5:
            raise ModelError(
                f"TrainSettings.validation_fraction must be in (0, 0.5), got {self.validation_fraction}"
            )
        if not self.learning_rate > 0:
            raise ModelError(f"TrainSettings.learning_rate must be > 0, got {self.learning_rate}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ModelError(f"TrainSettings.ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("linear_lr_mult", "residual_l2"):
            value = float(getattr(self, name))
            if not 0.0 <= value < math.inf:
                raise ModelError(f"TrainSettings.{name} must be a finite number >= 0, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(eq=False)
class RunResult:
    """What one training run produced."""

    state_dict: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    best_val_auc: float
    val_output1: np.ndarray  # validation probabilities of the best epoch
    val_labels: np.ndarray
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held out) with ``fraction`` of each class held out (at least one each)."""
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    hold: list[int] = []
    for value in (0, 1):
        idx = np.flatnonzero(labels == value)
        if len(idx) < 2:
            raise EvaluationError(
                f"class {value} has {len(idx)} case(s): a stratified split needs at least 2 per class"
            )
        idx = rng.permutation(idx)
        n = min(max(1, round(len(idx) * fraction)), len(idx) - 1)
        hold += idx[:n].tolist()
        keep += idx[n:].tolist()
    return np.array(sorted(keep)), np.array(sorted(hold))


def _augmenter(seed: int) -> Callable[[np.ndarray], np.ndarray]:
    from monai.transforms import (
        RandAffine,
        RandFlip,
        RandGaussianNoise,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    flip = RandFlip(prob=0.5, spatial_axis=2)  # crop axes are [z, y, x]; x = right-left
    affine = RandAffine(
        prob=0.5,
        rotate_range=(0.15, 0.15, 0.15),
        scale_range=(0.08, 0.08, 0.08),
        translate_range=(3, 3, 3),
        padding_mode="zeros",
        mode="bilinear",
    )
    scale = RandScaleIntensity(factors=0.1, prob=0.5)
    shift = RandShiftIntensity(offsets=0.03, prob=0.5)
    noise = RandGaussianNoise(prob=0.2, std=0.008)
    for i, t in enumerate((flip, affine, scale, shift, noise)):
        t.set_random_state(seed=seed + i)

    def apply(crop: np.ndarray) -> np.ndarray:
        import torch

        out = np.asarray(flip(torch.as_tensor(crop)))
        out = np.asarray(affine(torch.as_tensor(out)))
        out[1] = (out[1] >= 0.5).astype(np.float32)
        t1c = out[:1]
        t1c = np.asarray(noise(np.asarray(shift(np.asarray(scale(torch.as_tensor(t1c)))))))
        out[:1] = t1c
        return out.astype(np.float32)

    return apply


def _summaries(train: CaseTable, config: Any, device: Any) -> Any:
    """The size/texture values of every training crop as acquired: [N, n_summary_tokens].

    Measured once, before augmentation: the affine augmentation resamples the
    crop, which smooths the texture the values measure (a systematic shift,
    not the variation between scanners), and at inference the crop is never
    augmented.
    """
    import torch

    from ai_core.model.blocks import summary_values

    out = []
    with torch.no_grad():
        for b in range(0, len(train), 16):
            image = torch.as_tensor(train.crops[b : b + 16], dtype=torch.float32, device=device)
            out.append(summary_values(image, config))
    return torch.cat(out)


#: L2 penalty of the linear path's warm start (per weight, on the mean log-loss).
WARM_START_L2 = 1e-3


def _warm_start_linear(
    model: Any, train: CaseTable, summary: Any, pos_weight: float, device: Any
) -> None:
    """Fit the linear path and the heads' biases as a logistic regression first.

    The Transformer then starts from the logistic regression on the size and
    texture values and the characteristics (each head's bias its intercept)
    and learns what it adds: the heads' weights are zeroed, so before the first
    step every output is exactly the regression's. From zero, the linear path
    needed more epochs than early stopping on a small validation split allows (measured: its
    weights stayed at a third of the regression's). L-BFGS on the same loss
    (class-weighted, the cascade's head weights), a small L2 penalty; no-op
    without ``linear_skip``.
    """
    import torch
    import torch.nn.functional as F

    if model.linear is None:
        return
    chars = torch.as_tensor(train.characteristics, device=device)
    known = torch.as_tensor(train.characteristics_known, device=device)
    y = torch.as_tensor(train.labels, dtype=torch.float32, device=device)
    on = torch.ones(len(train.labels), 3, device=device)
    linear = model.linear
    with torch.no_grad():  # centre the MRI values: an absent MRI then reads as an average one
        linear.image_centre.copy_(model.linear_input(summary).mean(dim=0))
    biases = [head[1].bias for head in model.heads]
    weights = list(linear.parameters())
    params = weights + biases
    head_weights = model.config.loss_weights
    pw = torch.tensor(pos_weight, device=device)
    lbfgs = torch.optim.LBFGS(params, lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> Any:
        lbfgs.zero_grad()
        terms = model.linear_terms(summary, chars, known, on)
        loss = sum(
            w * F.binary_cross_entropy_with_logits(b + t, y, pos_weight=pw)
            for w, b, t in zip(head_weights, biases, terms, strict=True)
        )
        loss = loss + WARM_START_L2 * sum((p**2).sum() for p in weights)
        loss.backward()
        return loss

    lbfgs.step(closure)
    for p in params:
        p.grad = None
    with torch.no_grad():  # an unknown characteristic reads as the average known one
        v = torch.where(known, chars, torch.zeros_like(chars))
        term = v * linear.char_weight + linear.char_known_bias
        n = known.sum(dim=0).clamp(min=1)
        mean = torch.where(known, term, torch.zeros_like(term)).sum(dim=0) / n
        linear.char_unknown_bias.copy_(torch.where(known.any(dim=0), mean, torch.zeros_like(mean)))
        for head in model.heads:  # the attention path starts as a no-op on top of the regression
            head[1].weight.zero_()
    log.info(
        "linear path warm start: MRI weights %s, characteristic weights %s",
        [round(float(v), 2) for v in linear.image_weight.detach()],
        [round(float(v), 2) for v in linear.char_weight.detach()],
    )


def _parameter_groups(model: Any, lr: float, linear_lr_mult: float) -> list[dict[str, Any]]:
    """AdamW groups: the Transformer at ``lr``, the linear path at ``lr * linear_lr_mult``
    (a multiple of 0 freezes it: its weights then take no gradient at all)."""
    linear = [] if model.linear is None else list(model.linear.parameters())
    ids = {id(p) for p in linear}
    rest = [p for p in model.parameters() if id(p) not in ids]
    groups: list[dict[str, Any]] = [{"params": rest, "lr": lr}]
    if linear and linear_lr_mult > 0:
        groups.append({"params": linear, "lr": lr * linear_lr_mult})
    else:
        for p in linear:
            p.requires_grad_(False)
    return groups


def train_run(
    config: Any,
    train: CaseTable,
    val: CaseTable,
    standardiser: RadiomicsStandardiser,
    settings: TrainSettings,
    *,
    progress: bool = False,
    checkpoint_dir: Path | None = None,
) -> RunResult:
    """Train one model on ``train``, early-stopped on ``val``'s Output 1 AUC."""
    import torch

    from ai_core.evaluation.metrics import roc_auc
    from ai_core.model.network import CascadedMixingTransformer, cascade_loss

    if len(np.unique(train.labels)) < 2:
        raise EvaluationError("the training cases contain one class only; add cases of the other")
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = torch.device(settings.device)
    model = CascadedMixingTransformer(config).to(device)
    n_pos = int(train.labels.sum())
    pos_weight = (len(train) - n_pos) / max(n_pos, 1)
    summary = _summaries(train, config, device)
    _warm_start_linear(model, train, summary, pos_weight, device)
    ema = None
    if settings.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True
        )
    kept = model if ema is None else ema.module
    optimiser = torch.optim.AdamW(
        _parameter_groups(model, settings.learning_rate, settings.linear_lr_mult),
        weight_decay=settings.weight_decay,
    )
    rad_z, rad_known = standardised_radiomics(train, standardiser)
    val_z, val_known = standardised_radiomics(val, standardiser)
    augment = _augmenter(settings.seed) if settings.augment else None
    history: list[dict[str, float]] = []
    best = (-math.inf, math.inf)  # (val AUC, val loss)
    best_state: dict[str, Any] = {}
    best_epoch = 0
    best_val = np.zeros(len(val))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=settings.epochs, desc="training", unit="epoch")
    try:
        for epoch in range(1, settings.epochs + 1):
            model.train()
            order = rng.permutation(len(train))
            losses = []
            for b in range(0, len(order), settings.batch_size):
                idx = order[b : b + settings.batch_size]
                if len(idx) < 2:
                    continue
                crops = None
                if augment is not None:
                    crops = np.stack([augment(train.crops[i].astype(np.float32)) for i in idx])
                batch = batch_tensors(train, idx, rad_z, rad_known, crops=crops, device=device)
                batch["summary"] = summary[torch.as_tensor(idx, device=device)]
                target = torch.as_tensor(train.labels[idx], dtype=torch.float32, device=device)
                out = model(**batch)
                loss, _ = cascade_loss(out, target, config.loss_weights, pos_weight=pos_weight)
                if settings.residual_l2 > 0 and model.linear is not None:
                    loss = loss + settings.residual_l2 * out.attention_logits.pow(2).mean()
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimiser.step()
                if ema is not None:
                    ema.update_parameters(model)
                losses.append(float(loss.detach()))
            val_probs, val_loss = _evaluate(kept, val, val_z, val_known, config, pos_weight, device)
            val_auc = roc_auc(val.labels, val_probs)
            row = {
                "epoch": float(epoch),
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_loss": val_loss,
                "val_auc": val_auc,
            }
            history.append(row)
            score = (val_auc if math.isfinite(val_auc) else -1.0, val_loss)
            if score[0] > best[0] or (score[0] == best[0] and score[1] < best[1]):
                best = score
                best_epoch = epoch
                best_val = val_probs
                best_state = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
                if checkpoint_dir is not None:
                    _checkpoint(checkpoint_dir / "best.pt", best_state, row)
            if checkpoint_dir is not None:
                _checkpoint(checkpoint_dir / "last.pt", kept.state_dict(), row)
            if bar is not None:
                bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{val_auc:.3f}")
                bar.update(1)
            else:  # no bar (a log file, a service): one line per epoch instead
                log.info(
                    "epoch %d/%d: train loss %.3f, validation loss %.3f, AUC %.3f",
                    epoch,
                    settings.epochs,
                    row["train_loss"],
                    val_loss,
                    val_auc,
                )
            if epoch >= settings.min_epochs and epoch - best_epoch >= settings.patience:
                log.info("early stop at epoch %d (best %d, AUC %.3f)", epoch, best_epoch, best[0])
                break
    finally:
        if bar is not None:
            bar.close()
    return RunResult(
        best_state, history, best_epoch, best[0], best_val, val.labels, time.perf_counter() - start
    )


def _checkpoint(path: Path, state: dict[str, Any], row: dict[str, float]) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state_dict": state, "epoch": row}, tmp)
    tmp.replace(path)


def _evaluate(
    model: Any,
    table: CaseTable,
    rad_z: np.ndarray,
    rad_known: np.ndarray,
    config: Any,
    pos_weight: float,
    device: Any,
) -> tuple[np.ndarray, float]:
    import torch

    from ai_core.model.network import cascade_loss

    model.eval()
    probs = []
    losses = []
    with torch.no_grad():
        for b in range(0, len(table), 32):
            idx = np.arange(b, min(b + 32, len(table)))
            out = model(**batch_tensors(table, idx, rad_z, rad_known, device=device))
            target = torch.as_tensor(table.labels[idx], dtype=torch.float32, device=device)
            loss, _ = cascade_loss(out, target, config.loss_weights, pos_weight=pos_weight)
            losses.append(float(loss) * len(idx))
            probs.append(torch.sigmoid(out.output1).cpu().numpy())
    return np.concatenate(probs), float(np.sum(losses) / max(len(table), 1))


def predict_table(
    model: Any,
    table: CaseTable,
    standardiser: RadiomicsStandardiser,
    *,
    present: tuple[bool, bool, bool] = (True, True, True),
    device: str = "cpu",
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """Output 1 and Output 2 probabilities of every row with the modalities in ``present``."""
    import torch

    rad_z, rad_known = standardised_radiomics(table, standardiser)
    model.eval()
    out1, out2 = [], []
    with torch.no_grad():
        for b in range(0, len(table), batch_size):
            idx = np.arange(b, min(b + batch_size, len(table)))
            out = model(
                **batch_tensors(table, idx, rad_z, rad_known, present=present, device=device)
            )
            out1.append(torch.sigmoid(out.output1).cpu().numpy())
            out2.append(torch.sigmoid(out.output2).cpu().numpy())
    return {"output1": np.concatenate(out1), "output2": np.concatenate(out2)}


def write_history(history: list[dict[str, float]], out_dir: Path, title: str) -> Path:
    """history.json and training_curve.png in ``out_dir``; returns the PNG."""
    from ai_core.evaluation.plots import plot_training_curve

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "history.json").write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
    return plot_training_curve(history, out_dir / "training_curve.png", title=title)
