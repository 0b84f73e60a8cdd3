"""Explanation maps of the cascaded Transformer on the crop grid: Grad-CAM and MRI attention.

Both maps come back as [B, *crop_size] in [0, 1], in the axis order of the
input crop ([D, H, W], no transposition or flip), hot = important, each sample
divided by its own peak (an all-zero map stays zero).

:func:`grad_cam` uses ``monai.visualize.GradCAM`` on the model's last CNN stage
(``model.gradcam_layer``) with our own post-processing: MONAI's default
``default_normalizer`` maps (min, max) to (1, 0), i.e. it *inverts* the map.
MONAI also leaves its hooks on the model and zeroes its gradients; both are
undone here.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from torch import Tensor, nn

from ai_core.errors import ModelError
from ai_core.model.config import ModelConfig
from ai_core.model.network import MODALITIES, CascadedMixingTransformer

#: The keyword arguments of :meth:`CascadedMixingTransformer.forward`.
FORWARD_KEYS: tuple[str, ...] = (
    "image",
    "characteristics",
    "characteristics_known",
    "radiomics",
    "radiomics_known",
    "present",
)


def upsample_to_crop(maps: Tensor, config: ModelConfig) -> Tensor:
    """[B, C, *feature_grid] -> [B, C, *crop_size], trilinear, aligned with the CNN's strides.

    Each stride-2 stage (3x3x3, padding 1) centres its output cell ``i`` on
    input voxel ``2 i``, so feature cell ``i`` sits on crop voxel
    ``2**n_down * i``. A plain ``interpolate(..., align_corners=False)`` would
    put it at ``2**n_down * (i + 0.5) - 0.5``: shifted by 3.5 voxels at the
    default depth. Here crop voxel ``x`` samples the grid at ``x / 2**n_down``
    (edge cells repeated past the last centre).
    """
    step = 2**config.n_down
    padded = F.pad(maps, (0, 1, 0, 1, 0, 1), mode="replicate")
    size = [step * n + 1 for n in maps.shape[2:]]
    up = F.interpolate(padded, size=size, mode="trilinear", align_corners=True)
    d, h, w = config.crop_size
    return up[:, :, :d, :h, :w]


def normalise_per_sample(maps: Tensor) -> Tensor:
    """[B, ...] non-negative maps -> each divided by its maximum; an all-zero map stays zero."""
    maps = maps.clamp_min(0)
    peak = maps.flatten(1).amax(dim=1).view(-1, *([1] * (maps.ndim - 1)))
    return torch.where(peak > 0, maps / peak.clamp_min(torch.finfo(maps.dtype).tiny), 0.0)


class _HeadOfImage(nn.Module):
    """The model as a function of the image alone: returns one head's logit as [B, 1]."""

    def __init__(self, model: CascadedMixingTransformer, others: dict[str, Tensor], head: int):
        super().__init__()
        self.model = model
        self.others = others
        self.head = head

    def forward(self, image: Tensor) -> Tensor:
        out = self.model(image=image, **self.others)
        return out.logits[:, self.head : self.head + 1]


def grad_cam(
    model: CascadedMixingTransformer, batch: Mapping[str, Tensor], head: int = 1
) -> Tensor:
    """Grad-CAM of one head's logit on the crop: [B, *crop_size] in [0, 1], hot = Ki-67 high.

    ``batch`` holds the forward keyword arguments (:data:`FORWARD_KEYS`; other
    keys, such as a target, are ignored). ``head`` 0, 1 or 2 (1 = output 1,
    the reported prediction). The model runs in eval mode and is put back in
    the mode it was in; its parameter gradients are left as they were.
    A sample without MRI gets an all-zero map.
    """
    if not isinstance(model, CascadedMixingTransformer):
        raise ModelError(f"model must be a CascadedMixingTransformer, got {type(model).__name__}")
    if isinstance(head, bool) or head not in range(len(MODALITIES)):
        raise ModelError(f"head must be 0, 1 or 2 (one per block), got {head!r}")
    missing = [k for k in FORWARD_KEYS if k not in batch]
    if missing:
        raise ModelError(f"batch lacks the forward input(s) {', '.join(missing)}")
    # Clones: tensors made under inference_mode cannot take part in autograd.
    image = batch["image"].detach().clone().requires_grad_(True)
    others = {k: batch[k].detach().clone() for k in FORWARD_KEYS if k != "image"}

    target_name = model.gradcam_layer
    target = model.get_submodule(target_name)
    forward_hooks = set(target._forward_hooks)
    backward_hooks = set(target._backward_hooks)
    full_backward = target._is_full_backward_hook
    saved_grads = [p.grad for p in model.parameters()]
    was_training = model.training
    wrapper = _HeadOfImage(model, others, head)
    try:
        with torch.enable_grad():
            cam = GradCAM(
                nn_module=wrapper,
                target_layers=f"model.{target_name}",
                upsampler=lambda _size: lambda m: upsample_to_crop(m, model.config),
                postprocessing=normalise_per_sample,
            )
            maps = cam(x=image, class_idx=0)
    finally:
        for key in set(target._forward_hooks) - forward_hooks:
            del target._forward_hooks[key]
        for key in set(target._backward_hooks) - backward_hooks:
            del target._backward_hooks[key]
        target._is_full_backward_hook = full_backward
        for p, g in zip(model.parameters(), saved_grads, strict=True):
            p.grad = g
        model.train(was_training)
    return maps[:, 0].detach()


def mri_attention_map(attention_mri: Tensor, model_config: ModelConfig) -> Tensor:
    """Cross-attention of the MRI block on the crop: [B, *crop_size] in [0, 1].

    ``attention_mri`` [B, n_heads, n_queries, n_mri_tokens + n_summary_tokens]
    (``CascadeOutput.attention[0]``) is averaged over heads and queries, the
    size and texture tokens (last, not places in the image) left out, put back on the token grid in the
    order the tokens were flattened, upsampled (trilinear, :func:`upsample_to_crop`)
    to the crop and divided by its peak per sample.
    """
    n = model_config.n_mri_tokens
    extra = model_config.n_summary_tokens
    if attention_mri.ndim != 4 or attention_mri.shape[-1] != n + extra:
        raise ModelError(
            f"attention_mri must be [B, n_heads, n_queries, n_mri_tokens + n_summary_tokens = "
            f"{n} + {extra}], got {list(attention_mri.shape)}"
        )
    weights = attention_mri.detach().float().mean(dim=(1, 2))[:, :n]
    grid = weights.reshape(weights.shape[0], 1, *model_config.feature_grid)
    up = upsample_to_crop(grid, model_config)
    return normalise_per_sample(up[:, 0])
