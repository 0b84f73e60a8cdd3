"""The linear path's warm start: a logistic regression fitted before the first epoch.

:func:`training_summaries` measures the size/texture values of the training
crops once, before augmentation; :func:`warm_start_linear` fits the linear
path and the heads' biases on them and the characteristics, so that the
Transformer starts as the regression; :func:`parameter_groups` then freezes
the linear path or lets it train on at a multiple of the learning rate.
"""

from __future__ import annotations

import logging
from typing import Any

from lab.model.data import CaseTable

log = logging.getLogger(__name__)


def training_summaries(train: CaseTable, config: Any, device: Any) -> Any:
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


def warm_start_linear(
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


def parameter_groups(model: Any, lr: float, linear_lr_mult: float) -> list[dict[str, Any]]:
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
