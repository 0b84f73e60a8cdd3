"""Reusable blocks of the cascaded Transformer: token embedders and the pre-LN mixing block.

* :class:`MriTokenizer` — a 3D CNN (MONAI blocks, instance norm: small batches)
  on the tumour-centred crop; every cell of the last feature map becomes one
  token (flattened in C order over [D, H, W]), projected to ``d_model`` plus a
  learned 3D positional embedding; with ``size_tokens`` three more tokens
  state the tumour's size read off the crop's mask channel (:func:`size_values`),
  with ``texture_tokens`` three more its enhancement heterogeneity
  (:func:`texture_values`), each a :class:`ScalarTokens`.
* :class:`CharacteristicEmbedding` — one token per radiological characteristic.
* :class:`RadiomicsEmbedding` — one token per radiomics feature.
* :class:`LinearEvidence` — the logistic path from the size and texture values
  and the characteristics straight to the heads' logits.
* :class:`MixingBlock` — a learned query self-attends, cross-attends to one
  modality's tokens, then goes through an FFN (pre-LN, residual dropout).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from ai_core.model.config import MASK_CHANNEL, N_SIZE_VALUES, N_TEXTURE_VALUES, ModelConfig

#: Instance norm with a learned affine: batch statistics are meaningless at batch 1-16.
_NORM = ("INSTANCE", {"affine": True})
_ACT = "PRELU"
_EMBED_STD = 0.02


def _embedding(*shape: int) -> nn.Parameter:
    param = nn.Parameter(torch.empty(*shape))
    nn.init.trunc_normal_(param, std=_EMBED_STD, a=-2 * _EMBED_STD, b=2 * _EMBED_STD)
    return param


def cnn_stages(config: ModelConfig) -> nn.Sequential:
    """The MRI CNN: one MONAI ``Convolution`` (3x3x3 conv, instance norm, PReLU) per stage.

    Every stage but the last has stride 2 (the first one, the stem, works at
    full resolution, so it is kept narrow); the last stage has stride 1 and
    refines the token grid. Its output is the Grad-CAM layer. Plain
    convolutions rather than residual units: at 64^3 and batch 16 a residual
    unit's extra strided convolution doubles the cost of the CNN on CPU for no
    measurable gain at this depth.
    """
    channels = config.cnn_channels
    stages: list[nn.Module] = []
    previous = config.in_channels
    for i, width in enumerate(channels):
        stages.append(
            Convolution(
                spatial_dims=3,
                in_channels=previous,
                out_channels=width,
                strides=1 if i == len(channels) - 1 else 2,
                kernel_size=3,
                norm=_NORM,
                act=_ACT,
            )
        )
        previous = width
    return nn.Sequential(*stages)


def size_values(mask: Tensor) -> Tensor:
    """The tumour's size on the crop grid: [B, D, H, W] mask -> [B, 3] values in [0, 1].

    0: log(1 + tumour voxels) / log(1 + crop voxels); 1: the largest extent
    along a crop axis as a share of that side; 2: the share of the tumour's
    voxels lying on the crop's faces, times 10, capped at 1 (the tumour is cut
    off by the crop, so 0 and 1 understate it). Scale-free: the crop's size and
    spacing are fixed per bundle, the learned weights absorb the units.
    """
    m = mask > 0.5
    b = m.shape[0]
    total = float(m[0].numel())
    count = m.flatten(1).sum(dim=1).to(torch.float32)
    extent = torch.stack(
        [
            m.any(dim=dims).sum(dim=1).float() / m.shape[axis + 1]
            for axis, dims in enumerate(((2, 3), (1, 3), (1, 2)))
        ],
        dim=1,
    ).amax(dim=1)
    faces = torch.zeros_like(m)
    faces[:, [0, -1]] = True
    faces[:, :, [0, -1]] = True
    faces[:, :, :, [0, -1]] = True
    on_faces = (m & faces).flatten(1).sum(dim=1).float()
    cut = torch.clamp(10.0 * on_faces / count.clamp(min=1.0), max=1.0)
    values = torch.stack([torch.log1p(count) / math.log1p(total), extent, cut], 1)
    return values.reshape(b, N_SIZE_VALUES)


#: Added to the log coefficients of variation so that a typical tumour's lie near 0.
_TEXTURE_LOG_OFFSET = 3.0


def texture_values(t1c: Tensor, mask: Tensor) -> Tensor:
    """The heterogeneity of the tumour's enhancement: [B, D, H, W] T1C + mask -> [B, 3].

    Read on the tumour's interior (the mask eroded by one voxel, so that the
    partial-volume rim does not count; the whole mask if fewer than 27 voxels
    remain). 0: log of the coefficient of variation (std / mean); 1: log of
    the interquartile range over the median (moves less than the CV with a
    necrotic core); both + 3. 2: the share of interior voxels darker than half the median
    (necrosis, cysts). Scale-free: a per-study intensity window changes none
    of them. The crop should not be clipped inside the tumour
    (``CropParams.max_value``).
    """
    b = t1c.shape[0]
    m = mask > 0.5
    inner = -F.max_pool3d(-m.to(t1c.dtype).unsqueeze(1), 3, 1, 1).squeeze(1) > 0.5
    small = inner.flatten(1).sum(dim=1) < 27
    use = torch.where(small.view(b, 1, 1, 1), m, inner).flatten(1)
    n = use.sum(dim=1).clamp(min=1).to(t1c.dtype)
    v = t1c.flatten(1)
    mean = (v * use).sum(dim=1) / n
    var = (((v - mean[:, None]) * use) ** 2).sum(dim=1) / n
    eps = 1e-4
    log_cv = 0.5 * torch.log(var + eps * eps) - torch.log(mean.abs() + eps)
    q = torch.nanquantile(
        torch.where(use, v, torch.full_like(v, float("nan"))),
        torch.tensor([0.25, 0.5, 0.75], dtype=v.dtype, device=v.device),
        dim=1,
    ).nan_to_num(0.0)  # [3, B]; an empty mask gives NaN
    log_iqr = torch.log((q[2] - q[0]).clamp(min=0) + eps) - torch.log(q[1].abs() + eps)
    dark = ((v < 0.5 * q[1][:, None]) & use).sum(dim=1) / n
    values = torch.stack([log_cv + _TEXTURE_LOG_OFFSET, log_iqr + _TEXTURE_LOG_OFFSET, dark], 1)
    return values.reshape(b, N_TEXTURE_VALUES)


def summary_values(image: Tensor, config: ModelConfig) -> Tensor:
    """The values behind the MRI block's extra tokens: [B, C, D, H, W] -> [B, n]
    (the size values, then the texture values, as ``config`` has them; n may be 0)."""
    parts = []
    mask = image[:, MASK_CHANNEL]
    if config.size_tokens:
        parts.append(size_values(mask))
    if config.texture_tokens:
        parts.append(texture_values(image[:, 0], mask))
    if not parts:
        return image.new_zeros(image.shape[0], 0)
    return torch.cat(parts, dim=1).to(image.dtype)


class ScalarTokens(nn.Module):
    """Values [B, N] -> tokens [B, N, d_model]: ``type_embedding[i] + value_i * value_weight[i]``.

    Softmax cross-attention returns a weighted *average* of its tokens, so the
    query cannot count how many CNN tokens lie on the tumour, nor easily read
    a spread of intensities: size, the strongest image sign of a high Ki-67 in
    the source study, and the heterogeneity of the enhancement would reach
    the query only through the CNN's receptive field. These tokens state them
    directly, read off the same crop (:func:`size_values`,
    :func:`texture_values`), so they belong to the MRI modality and are
    zeroed with it.
    """

    def __init__(self, n: int, d_model: int) -> None:
        super().__init__()
        self.type_embedding = _embedding(n, d_model)
        self.value_weight = _embedding(n, d_model)

    def forward(self, values: Tensor) -> Tensor:
        return self.type_embedding + values.unsqueeze(-1) * self.value_weight


class MriTokenizer(nn.Module):
    """Crop [B, C, D, H, W] -> MRI tokens [B, n_mri_tokens + n_summary_tokens, d_model].

    The CNN tokens come first (the feature grid, for the attention map), then
    the size tokens, then the texture tokens.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.stages = cnn_stages(config)
        self.proj = nn.Linear(config.cnn_channels[-1], config.d_model)
        self.pos_embedding = _embedding(1, config.n_mri_tokens, config.d_model)
        self.config = config
        d = config.d_model
        self.size = ScalarTokens(N_SIZE_VALUES, d) if config.size_tokens else None
        self.texture = ScalarTokens(N_TEXTURE_VALUES, d) if config.texture_tokens else None

    def forward(self, image: Tensor, summary: Tensor | None = None) -> Tensor:
        """``summary``: :func:`summary_values` of ``image`` when the caller has them already."""
        fmap = self.stages(image)  # [B, C, d, h, w]
        tokens = fmap.flatten(2).transpose(1, 2)  # token index = (z * h + y) * w + x
        parts = [self.proj(tokens) + self.pos_embedding]
        if self.size is None and self.texture is None:
            return parts[0]
        values = summary_values(image, self.config) if summary is None else summary
        if self.size is not None:
            parts.append(self.size(values[:, :N_SIZE_VALUES]))
        if self.texture is not None:
            parts.append(self.texture(values[:, values.shape[1] - N_TEXTURE_VALUES :]))
        return torch.cat(parts, dim=1)


class CharacteristicEmbedding(nn.Module):
    """Values [B, n] + known mask [B, n] -> tokens [B, n, d_model].

    Known: ``type_embedding[i] + value_i * value_weight[i]``; unknown: the
    learned ``unknown_embedding[i]`` (the value is then never read).
    """

    def __init__(self, n_characteristics: int, d_model: int) -> None:
        super().__init__()
        self.type_embedding = _embedding(n_characteristics, d_model)
        self.value_weight = _embedding(n_characteristics, d_model)
        self.unknown_embedding = _embedding(n_characteristics, d_model)

    def forward(self, values: Tensor, known: Tensor) -> Tensor:
        v = torch.where(known, values, torch.zeros_like(values))
        tokens = self.type_embedding + v.unsqueeze(-1) * self.value_weight
        return torch.where(known.unsqueeze(-1), tokens, self.unknown_embedding.expand_as(tokens))


class RadiomicsEmbedding(nn.Module):
    """z-scores [B, n] + known mask [B, n] -> tokens [B, n, d_model].

    ``feature_embedding[i] + value_i * value_weight[i]``, the value taken as 0
    where unknown.
    """

    def __init__(self, n_radiomics: int, d_model: int) -> None:
        super().__init__()
        self.feature_embedding = _embedding(n_radiomics, d_model)
        self.value_weight = _embedding(n_radiomics, d_model)

    def forward(self, values: Tensor, known: Tensor) -> Tensor:
        v = torch.where(known, values, torch.zeros_like(values))
        return self.feature_embedding + v.unsqueeze(-1) * self.value_weight


class LinearEvidence(nn.Module):
    """A logistic-regression path: MRI summary values and characteristics straight to the logits.

    The source study's strongest signs (size, edema, necrosis, ...) each add
    roughly independent log-odds; the attention path has to learn that sum
    through softmax averages, LayerNorms and an FFN, which a few hundred
    training cases do not teach it well (measured: the cascade combined them
    worse than a logistic regression on the same inputs). This path adds the
    sum directly: MRI term ``summary_values . image_weight``; characteristics term
    ``sum_i (value_i * weight_i + known_bias_i)`` over known characteristics,
    ``unknown_bias_i`` for unknown ones. Zero-initialised (it starts as a
    no-op); an absent modality contributes 0, like its zeroed tokens.
    """

    def __init__(self, n_characteristics: int, n_image: int) -> None:
        super().__init__()
        self.image_weight = nn.Parameter(torch.zeros(n_image))
        #: Subtracted from the MRI values (the training mean, set by the warm start), so
        #: that an absent MRI (term 0) reads as an average one, not as a tumour of size 0.
        self.image_centre: Tensor
        self.register_buffer("image_centre", torch.zeros(n_image))
        self.char_weight = nn.Parameter(torch.zeros(n_characteristics))
        self.char_known_bias = nn.Parameter(torch.zeros(n_characteristics))
        self.char_unknown_bias = nn.Parameter(torch.zeros(n_characteristics))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # Bundles written before the centre existed: it was 0 then.
        state_dict.setdefault(prefix + "image_centre", torch.zeros_like(self.image_centre))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def forward(self, image: Tensor | None, values: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
        """-> (MRI term [B], characteristics term [B]); ``image`` [B, n_image] or None."""
        v = torch.where(known, values, torch.zeros_like(values))
        per_char = torch.where(
            known, v * self.char_weight + self.char_known_bias, self.char_unknown_bias
        )
        if image is None:
            mri = per_char.new_zeros(per_char.shape[0])
        else:
            mri = (image - self.image_centre) @ self.image_weight
        return mri, per_char.sum(dim=1)


class MixingBlock(nn.Module):
    """Pre-LN block: q += SelfAttn(LN q); q += CrossAttn(LN q, LN tokens); q += FFN(LN q).

    Attention weights are not dropped out (dropout acts on the residual
    branches), so the returned cross-attention weights always sum to 1 over
    the tokens.
    """

    def __init__(self, d_model: int, n_heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm_query = nn.LayerNorm(d_model)
        self.norm_tokens = nn.LayerNorm(d_model)
        self.cross_attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_model * ffn_mult),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(d_model * ffn_mult, d_model),
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, query: Tensor, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """query [B, Q, d], tokens [B, N, d] -> (query [B, Q, d], weights [B, heads, Q, N])."""
        h = self.norm_self(query)
        query = query + self.drop(self.self_attn(h, h, h, need_weights=False)[0])
        kv = self.norm_tokens(tokens)
        mixed, weights = self.cross_attn(
            self.norm_query(query), kv, kv, need_weights=True, average_attn_weights=False
        )
        query = query + self.drop(mixed)
        query = query + self.drop(self.ffn(self.norm_ffn(query)))
        assert weights is not None  # need_weights=True
        return query, weights
