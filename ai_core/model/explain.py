"""Explanation maps of the cascaded Transformer on the crop grid: Grad-CAM and MRI attention.

The maps come back as [B, *crop_size] in [0, 1], in the axis order of the
input crop ([D, H, W], no transposition or flip), hot = important, each sample
divided by its own peak (an all-zero map stays zero).

:func:`grad_cam` uses ``monai.visualize.GradCAM`` on the model's last CNN stage
(``model.gradcam_layer``) with our own post-processing: MONAI's default
``default_normalizer`` maps (min, max) to (1, 0), i.e. it *inverts* the map.
MONAI also leaves its hooks on the model and zeroes its gradients; both are
undone here. :func:`evidence_map` adds to it the share of Output 1 that the
tumour's size and texture values carry (which Grad-CAM cannot see); it is
the map the heatmap Secondary Captures show, for the class reported.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.visualize import GradCAM
from torch import Tensor, nn

from ai_core.errors import ModelError
from ai_core.model.blocks import summary_values
from ai_core.model.config import MASK_CHANNEL, ModelConfig
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
    """The model as a function of the image alone: returns one head's logit as [B, 1].

    ``sign`` (+1/-1 per sample) turns the logit towards the class to explain.
    The size/texture values are fed as the leaf ``summary`` so that the
    backward pass leaves the logit's gradient with respect to them there.
    """

    def __init__(
        self,
        model: CascadedMixingTransformer,
        others: dict[str, Tensor],
        head: int,
        summary: Tensor,
        sign: Tensor,
    ):
        super().__init__()
        self.model = model
        self.others = others
        self.head = head
        self.summary = summary
        self.sign = sign

    def forward(self, image: Tensor) -> Tensor:
        out = self.model(image=image, summary=self.summary, **self.others)
        return (out.logits[:, self.head] * self.sign).unsqueeze(1)


def _check_explain_args(model: object, batch: Mapping[str, Tensor], head: int) -> None:
    if not isinstance(model, CascadedMixingTransformer):
        raise ModelError(f"model must be a CascadedMixingTransformer, got {type(model).__name__}")
    if isinstance(head, bool) or head not in range(len(MODALITIES)):
        raise ModelError(f"head must be 0, 1 or 2 (one per block), got {head!r}")
    missing = [k for k in FORWARD_KEYS if k not in batch]
    if missing:
        raise ModelError(f"batch lacks the forward input(s) {', '.join(missing)}")


def _grad_cam_cells(
    model: CascadedMixingTransformer, batch: Mapping[str, Tensor], head: int, sign: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """MONAI Grad-CAM of ``sign * logit`` on the feature grid, not upsampled or normalised.

    Returns ``(cells, summary, summary_grad)``: cells [B, 1, *feature_grid]
    (ReLU of the gradient-weighted activations: logit units per cell),
    the size/texture values [B, n] and the signed logit's gradient with
    respect to them [B, n].
    """
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
    try:
        with torch.enable_grad():
            present = others["present"][:, :1]
            summary = summary_values(image.detach(), model.config)
            summary = torch.where(present, summary, torch.zeros_like(summary))
            summary = summary.requires_grad_(True)
            wrapper = _HeadOfImage(model, others, head, summary, sign.to(image.dtype))
            cam = GradCAM(
                nn_module=wrapper,
                target_layers=f"model.{target_name}",
                upsampler=lambda _size: lambda m: m,
                postprocessing=lambda m: m,
            )
            cells = cam(x=image, class_idx=0)
    finally:
        for key in set(target._forward_hooks) - forward_hooks:
            del target._forward_hooks[key]
        for key in set(target._backward_hooks) - backward_hooks:
            del target._backward_hooks[key]
        target._is_full_backward_hook = full_backward
        for p, g in zip(model.parameters(), saved_grads, strict=True):
            p.grad = g
        model.train(was_training)
    grad = summary.grad if summary.grad is not None else torch.zeros_like(summary)
    return cells.detach(), summary.detach(), grad.detach()


def _signs(batch: Mapping[str, Tensor], towards_high: Tensor | None) -> Tensor:
    b = batch["image"].shape[0]
    if towards_high is None:
        return torch.ones(b, device=batch["image"].device)
    if towards_high.shape != (b,):
        raise ModelError(f"towards_high must have shape [B={b}], got {list(towards_high.shape)}")
    return torch.where(towards_high.bool(), 1.0, -1.0).to(batch["image"].device)


def _share(model: CascadedMixingTransformer, summary: Tensor, grad: Tensor) -> Tensor:
    """``grad . (values - training mean)`` [B]: the size/texture values' share of a logit
    (0 without a linear path, which holds the training mean)."""
    if model.linear is None:
        return summary.new_zeros(summary.shape[0])
    # The linear path reads linear_input(values) - image_centre: its centre on the values' scale.
    scale = model.linear_input(torch.ones_like(summary[:1]))
    centre = model.linear.image_centre.to(summary.dtype) / scale
    return (grad * (summary - centre)).sum(dim=1)


def size_texture_share(
    model: CascadedMixingTransformer, batch: Mapping[str, Tensor], head: int = 1
) -> Tensor | None:
    """The share of one head's logit that the tumour's size and texture values carry: [B]
    (logit units, first order around the training-mean tumour; > 0 = towards Ki-67 high).

    The same share :func:`evidence_map` spreads over the tumour, so a map for the class
    this points to has the tumour hot. None without a linear path (no training mean).
    Eval mode for the pass, the mode restored; parameter gradients untouched.
    """
    _check_explain_args(model, batch, head)
    if model.linear is None or model.config.n_summary_tokens == 0:
        return None
    image = batch["image"].detach()
    others = {k: batch[k].detach() for k in FORWARD_KEYS if k != "image"}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            summary = summary_values(image, model.config)
            summary = torch.where(others["present"][:, :1], summary, torch.zeros_like(summary))
            summary = summary.clone().requires_grad_(True)
            logit = model(image=image, summary=summary, **others).logits[:, head]
            (grad,) = torch.autograd.grad(logit.sum(), summary)
    finally:
        model.train(was_training)
    share = _share(model, summary.detach(), grad)
    return share * others["present"][:, 0].to(share.dtype)


def grad_cam(
    model: CascadedMixingTransformer,
    batch: Mapping[str, Tensor],
    head: int = 1,
    towards_high: Tensor | None = None,
) -> Tensor:
    """Grad-CAM of one head's logit on the crop: [B, *crop_size] in [0, 1].

    ``batch`` holds the forward keyword arguments (:data:`FORWARD_KEYS`; other
    keys, such as a target, are ignored). ``head`` 0, 1 or 2 (1 = output 1,
    the reported prediction). ``towards_high`` [B] bool: the class each
    sample's map explains (True: Ki-67 high, hot = evidence for high; False:
    the logit's sign turned, hot = evidence for low); None: high for all.
    Only the CNN stage's share of the logit is seen (see :func:`evidence_map`
    for the size and texture values as well). The model runs in eval mode and
    is put back in the mode it was in; its parameter gradients are left as
    they were. A sample without MRI gets an all-zero map.
    """
    _check_explain_args(model, batch, head)
    cells, _, _ = _grad_cam_cells(model, batch, head, _signs(batch, towards_high))
    return normalise_per_sample(upsample_to_crop(cells, model.config))[:, 0]


def evidence_map(
    model: CascadedMixingTransformer,
    batch: Mapping[str, Tensor],
    head: int = 1,
    towards_high: Tensor | None = None,
) -> Tensor:
    """Grad-CAM of the MRI branch plus the evidence of its size and texture values:
    [B, *crop_size] in [0, 1], hot = evidence for the class ``towards_high`` names.

    The MRI reaches a head's logit two ways: through the CNN tokens (what
    Grad-CAM sees, in logit units per feature cell) and through the tumour's
    size and texture values (:func:`~ai_core.model.blocks.summary_values`),
    which are measured on the tumour mask and read by the linear path and the
    size/texture tokens. A model that leans on size (as the source study's
    data do) would get a Grad-CAM that shows only the CNN's small share. Here
    the second share, ``grad . (values - training mean)`` (first order; exact
    for the linear path), is spread evenly over the mask's voxels of the crop
    and added to the Grad-CAM cells' share per voxel; the sum, clipped at 0,
    is divided by its peak. Without a linear path (no training mean to
    compare the values with) this is :func:`grad_cam`. A sample without MRI
    gets an all-zero map.
    """
    _check_explain_args(model, batch, head)
    cells, summary, grad = _grad_cam_cells(model, batch, head, _signs(batch, towards_high))
    config = model.config
    per_voxel = upsample_to_crop(cells, config)[:, 0] / float(2**config.n_down) ** 3
    if model.linear is not None and summary.shape[1]:
        share = _share(model, summary, grad)
        mask = (batch["image"][:, MASK_CHANNEL] > 0.5).to(per_voxel.dtype)
        voxels = mask.flatten(1).sum(dim=1).clamp(min=1.0)
        present = batch["present"][:, 0].to(per_voxel.dtype)
        per_voxel = per_voxel + (share * present / voxels).view(-1, 1, 1, 1) * mask
    return normalise_per_sample(per_voxel)


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
