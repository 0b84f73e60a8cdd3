"""Reusable blocks of the cascaded Transformer: token embedders and the pre-LN mixing block.

* :class:`MriTokenizer` — a 3D CNN (MONAI blocks, instance norm: small batches)
  on the tumour-centred crop; every cell of the last feature map becomes one
  token (flattened in C order over [D, H, W]), projected to ``d_model`` plus a
  learned 3D positional embedding; with ``size_tokens`` three more tokens
  state the tumour's size read off the crop's mask channel (:class:`SizeTokens`).
* :class:`CharacteristicEmbedding` — one token per radiological characteristic.
* :class:`RadiomicsEmbedding` — one token per radiomics feature.
* :class:`LinearEvidence` — the logistic path from the size values and the
  characteristics straight to the heads' logits.
* :class:`MixingBlock` — a learned query self-attends, cross-attends to one
  modality's tokens, then goes through an FFN (pre-LN, residual dropout).
"""

from __future__ import annotations

import math

import torch
from monai.networks.blocks import Convolution
from torch import Tensor, nn

from ai_core.model.config import MASK_CHANNEL, ModelConfig

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
    return values.reshape(b, SizeTokens.N)


class SizeTokens(nn.Module):
    """Three tokens that state the tumour's size: ``type_embedding[i] + value_i * weight[i]``.

    Softmax cross-attention returns a weighted *average* of its tokens, so the
    query cannot count how many CNN tokens lie on the tumour: size, the
    strongest image sign of a high Ki-67 in the source study, would only reach
    the query through the CNN's receptive field. These tokens give it directly,
    read off the mask channel of the same crop (:func:`size_values`), so they
    belong to the MRI modality and are zeroed with it.
    """

    N = 3

    def __init__(self, mask_channel: int, d_model: int) -> None:
        super().__init__()
        self.mask_channel = mask_channel
        self.type_embedding = _embedding(self.N, d_model)
        self.value_weight = _embedding(self.N, d_model)

    def forward(self, image: Tensor) -> Tensor:
        values = size_values(image[:, self.mask_channel]).to(image.dtype)
        return self.type_embedding + values.unsqueeze(-1) * self.value_weight


class MriTokenizer(nn.Module):
    """Crop [B, C, D, H, W] -> MRI tokens [B, n_mri_tokens (+ 3 size tokens), d_model].

    The CNN tokens come first (the feature grid, for the attention map), the
    size tokens last.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.stages = cnn_stages(config)
        self.proj = nn.Linear(config.cnn_channels[-1], config.d_model)
        self.pos_embedding = _embedding(1, config.n_mri_tokens, config.d_model)
        self.size = SizeTokens(MASK_CHANNEL, config.d_model) if config.size_tokens else None

    def forward(self, image: Tensor) -> Tensor:
        fmap = self.stages(image)  # [B, C, d, h, w]
        tokens = fmap.flatten(2).transpose(1, 2)  # token index = (z * h + y) * w + x
        tokens = self.proj(tokens) + self.pos_embedding
        if self.size is None:
            return tokens
        return torch.cat([tokens, self.size(image)], dim=1)


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
    """A logistic-regression path: size values and characteristics straight to the logits.

    The source study's strongest signs (size, edema, necrosis, ...) each add
    roughly independent log-odds; the attention path has to learn that sum
    through softmax averages, LayerNorms and an FFN, which a few hundred
    training cases do not teach it well (measured: the cascade combined them
    worse than a logistic regression on the same inputs). This path adds the
    sum directly: MRI term ``size_values . size_weight``; characteristics term
    ``sum_i (value_i * weight_i + known_bias_i)`` over known characteristics,
    ``unknown_bias_i`` for unknown ones. Zero-initialised (it starts as a
    no-op); an absent modality contributes 0, like its zeroed tokens.
    """

    def __init__(self, n_characteristics: int, n_size: int) -> None:
        super().__init__()
        self.size_weight = nn.Parameter(torch.zeros(n_size))
        self.char_weight = nn.Parameter(torch.zeros(n_characteristics))
        self.char_known_bias = nn.Parameter(torch.zeros(n_characteristics))
        self.char_unknown_bias = nn.Parameter(torch.zeros(n_characteristics))

    def forward(self, size: Tensor | None, values: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
        """-> (MRI term [B], characteristics term [B]); ``size`` [B, n_size] or None."""
        v = torch.where(known, values, torch.zeros_like(values))
        per_char = torch.where(
            known, v * self.char_weight + self.char_known_bias, self.char_unknown_bias
        )
        mri = per_char.new_zeros(per_char.shape[0]) if size is None else size @ self.size_weight
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
