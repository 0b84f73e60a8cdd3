"""Training the Ki-67 Transformer: one run on a table, and ``ki67node train``.

One run: AdamW, class imbalance handled by the positive-class weight of the
loss (n_negative / n_positive), MONAI augmentation of the crops
(:mod:`lab.model.augment`), modality dropout inside the network, early
stopping on the validation AUC of Output 1, the best epoch's weights kept.
Before the first epoch the linear path is fitted as a logistic regression on
the training cases, on size/texture values measured once on the crops before
augmentation (:mod:`lab.model.warm_start`); by default it then stays
frozen and the attention path's logits carry an L2 penalty, so that the
Transformer learns a shrunken correction to the regression. Seeds make a run
reproducible on the same device.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import EvaluationError, ModelError
from ai_core.radiomics_standardiser import RadiomicsStandardiser
from lab.model.augment import augmenter
from lab.model.data import CaseTable, batch_tensors, standardised_radiomics
from lab.model.run_record import progress_bar, save_checkpoint
from lab.model.warm_start import parameter_groups, training_summaries, warm_start_linear

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


@dataclass(eq=False)
class _Run:
    """One run's network, optimiser and the inputs fixed before the first epoch."""

    config: Any
    model: Any
    kept: Any  # what is validated and kept: the model, or its moving average
    ema: Any
    optimiser: Any
    device: Any
    pos_weight: float
    summary: Any  # size/texture values of the training crops
    rad_z: np.ndarray
    rad_known: np.ndarray
    val_z: np.ndarray
    val_known: np.ndarray
    augment: Callable[[np.ndarray], np.ndarray] | None


@dataclass(eq=False)
class _Best:
    """The best epoch so far: highest validation AUC, then lowest validation loss."""

    val_probs: np.ndarray
    score: tuple[float, float] = (-math.inf, math.inf)
    epoch: int = 0
    state: dict[str, Any] = field(default_factory=dict)

    def improved_by(self, score: tuple[float, float]) -> bool:
        auc, loss = score
        return auc > self.score[0] or (auc == self.score[0] and loss < self.score[1])


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

    from lab.evaluation.metrics import roc_auc

    if len(np.unique(train.labels)) < 2:
        raise EvaluationError("the training cases contain one class only; add cases of the other")
    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    run = _start_run(config, train, val, standardiser, settings)
    history: list[dict[str, float]] = []
    best = _Best(val_probs=np.zeros(len(val)))
    bar = progress_bar(progress, settings.epochs)
    try:
        for epoch in range(1, settings.epochs + 1):
            losses = _train_epoch(run, train, rng.permutation(len(train)), settings)
            val_probs, val_loss = _evaluate(
                run.kept, val, run.val_z, run.val_known, config, run.pos_weight, run.device
            )
            val_auc = roc_auc(val.labels, val_probs)
            row = {
                "epoch": float(epoch),
                "train_loss": float(np.mean(losses)) if losses else math.nan,
                "val_loss": val_loss,
                "val_auc": val_auc,
            }
            history.append(row)
            _keep_if_best(best, epoch, row, val_probs, run.kept, checkpoint_dir)
            _report_epoch(bar, epoch, settings.epochs, row)
            if epoch >= settings.min_epochs and epoch - best.epoch >= settings.patience:
                log.info(
                    "early stop at epoch %d (best %d, AUC %.3f)", epoch, best.epoch, best.score[0]
                )
                break
    finally:
        if bar is not None:
            bar.close()
    return RunResult(
        best.state,
        history,
        best.epoch,
        best.score[0],
        best.val_probs,
        val.labels,
        time.perf_counter() - start,
    )


def _start_run(
    config: Any,
    train: CaseTable,
    val: CaseTable,
    standardiser: RadiomicsStandardiser,
    settings: TrainSettings,
) -> _Run:
    """The network warm-started on ``train``, its optimiser, and the standardised radiomics."""
    import torch

    from ai_core.model.network import CascadedMixingTransformer

    device = torch.device(settings.device)
    model = CascadedMixingTransformer(config).to(device)
    n_pos = int(train.labels.sum())
    pos_weight = (len(train) - n_pos) / max(n_pos, 1)
    summary = training_summaries(train, config, device)
    warm_start_linear(model, train, summary, pos_weight, device)
    ema = None
    if settings.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True
        )
    optimiser = torch.optim.AdamW(
        parameter_groups(model, settings.learning_rate, settings.linear_lr_mult),
        weight_decay=settings.weight_decay,
    )
    rad_z, rad_known = standardised_radiomics(train, standardiser)
    val_z, val_known = standardised_radiomics(val, standardiser)
    return _Run(
        config=config,
        model=model,
        kept=model if ema is None else ema.module,
        ema=ema,
        optimiser=optimiser,
        device=device,
        pos_weight=pos_weight,
        summary=summary,
        rad_z=rad_z,
        rad_known=rad_known,
        val_z=val_z,
        val_known=val_known,
        augment=augmenter(settings.seed) if settings.augment else None,
    )


def _train_epoch(
    run: _Run, train: CaseTable, order: np.ndarray, settings: TrainSettings
) -> list[float]:
    """One pass over ``train`` in ``order``; the loss of each batch (batches of one skipped)."""
    run.model.train()
    losses = []
    for b in range(0, len(order), settings.batch_size):
        idx = order[b : b + settings.batch_size]
        if len(idx) < 2:
            continue
        losses.append(_train_step(run, train, idx, settings.residual_l2))
    return losses


def _train_step(run: _Run, train: CaseTable, idx: np.ndarray, residual_l2: float) -> float:
    """One optimiser step on the rows ``idx`` (augmented when on); returns the batch loss."""
    import torch

    from ai_core.model.network import cascade_loss

    device = run.device
    crops = None
    if run.augment is not None:
        crops = np.stack([run.augment(train.crops[i].astype(np.float32)) for i in idx])
    batch = batch_tensors(train, idx, run.rad_z, run.rad_known, crops=crops, device=device)
    batch["summary"] = run.summary[torch.as_tensor(idx, device=device)]
    target = torch.as_tensor(train.labels[idx], dtype=torch.float32, device=device)
    out = run.model(**batch)
    loss, _ = cascade_loss(out, target, run.config.loss_weights, pos_weight=run.pos_weight)
    if residual_l2 > 0 and run.model.linear is not None:
        loss = loss + residual_l2 * out.attention_logits.pow(2).mean()
    run.optimiser.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), 5.0)
    run.optimiser.step()
    if run.ema is not None:
        run.ema.update_parameters(run.model)
    return float(loss.detach())


def _keep_if_best(
    best: _Best,
    epoch: int,
    row: dict[str, float],
    val_probs: np.ndarray,
    kept: Any,
    checkpoint_dir: Path | None,
) -> None:
    """Keep the epoch's weights when it is the best so far; write the checkpoints."""
    val_auc = row["val_auc"]
    score = (val_auc if math.isfinite(val_auc) else -1.0, row["val_loss"])
    if best.improved_by(score):
        best.score = score
        best.epoch = epoch
        best.val_probs = val_probs
        best.state = {k: v.detach().cpu().clone() for k, v in kept.state_dict().items()}
        if checkpoint_dir is not None:
            save_checkpoint(checkpoint_dir / "best.pt", best.state, row)
    if checkpoint_dir is not None:
        save_checkpoint(checkpoint_dir / "last.pt", kept.state_dict(), row)


def _report_epoch(bar: Any, epoch: int, epochs: int, row: dict[str, float]) -> None:
    """The epoch on the progress bar; without one (a log file, a service), one log line."""
    if bar is not None:
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_auc=f"{row['val_auc']:.3f}")
        bar.update(1)
        return
    log.info(
        "epoch %d/%d: train loss %.3f, validation loss %.3f, AUC %.3f",
        epoch,
        epochs,
        row["train_loss"],
        row["val_loss"],
        row["val_auc"],
    )


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
