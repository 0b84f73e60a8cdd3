"""The cascaded multi-modal mixing Transformer (Liu et al., NeuroImage 2023) and its loss.

A learned query passes through three :class:`~ai_core.model.blocks.MixingBlock`
in the order of :data:`MODALITIES` (MRI -> radiological characteristics ->
radiomics); each block cross-attends to its modality's tokens and is followed
by an auxiliary head (LN + Linear on the query averaged over queries), plus,
with ``linear_skip``, the :class:`~ai_core.model.blocks.LinearEvidence` terms
of the modalities read so far (the MRI's size and texture values from block 1
on, characteristics from block 2 on). Output 1
(after MRI + characteristics) is the reported prediction, output 2 (after
radiomics) is reported as well.

A missing modality has its token embeddings multiplied by 0 (the paper's
"zeroing"): at inference when ``present`` says so, in training also by
modality dropout. Inputs of an absent modality are never read (NaN there is
harmless).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ai_core.errors import ModelError
from ai_core.model.blocks import (
    CharacteristicEmbedding,
    LinearEvidence,
    MixingBlock,
    MriTokenizer,
    RadiomicsEmbedding,
    summary_values,
)
from ai_core.model.config import N_SIZE_VALUES, ModelConfig, check_loss_weights

MODALITIES: tuple[str, str, str] = ("mri", "characteristics", "radiomics")

#: The linear path reads the size values (in [0, 1]) times this (the texture values as they are).
LINEAR_SIZE_SCALE = 10.0


@dataclass
class CascadeOutput:
    """What one forward pass returns."""

    logits: Tensor  # [B, 3]: head after block 1 (MRI), 2 (+characteristics), 3 (+radiomics)
    attention: tuple[Tensor, Tensor, Tensor]  # per block [B, n_heads, n_queries, n_tokens]
    present: Tensor  # [B, 3] bool: modalities actually used (after modality dropout)
    linear: Tensor | None = None  # [B, 3]: the linear path's part of each logit (None: 0)

    @property
    def attention_logits(self) -> Tensor:
        """The attention path's part of each logit: ``logits`` minus the linear path's."""
        return self.logits if self.linear is None else self.logits - self.linear

    @property
    def output1(self) -> Tensor:
        """Logit after MRI + radiological characteristics: the reported prediction."""
        return self.logits[:, 1]

    @property
    def output2(self) -> Tensor:
        """Logit after all three modalities."""
        return self.logits[:, 2]


def modality_dropout(present: Tensor, probabilities: Sequence[float]) -> Tensor:
    """Drop each present modality of each sample with its probability (torch's global RNG).

    A sample that had at least one modality keeps at least one: if every
    present modality was drawn for dropping, one of them, chosen at random,
    is kept.
    """
    p = torch.tensor(list(probabilities), dtype=torch.float32, device=present.device)
    drop = torch.rand(present.shape, device=present.device) < p
    kept = present & ~drop
    emptied = present.any(dim=1) & ~kept.any(dim=1)
    score = torch.rand(present.shape, device=present.device).masked_fill(~present, -1.0)
    rescue = F.one_hot(score.argmax(dim=1), present.shape[1]).bool() & emptied.unsqueeze(1)
    return kept | rescue


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ModelError(message)


class CascadedMixingTransformer(nn.Module):
    """MRI crop + radiological characteristics + radiomics -> three cascaded logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise ModelError(f"config must be a ModelConfig, got {type(config).__name__}")
        self.config = config
        d = config.d_model
        self.mri_encoder = MriTokenizer(config)
        self.characteristic_embedding = CharacteristicEmbedding(config.n_characteristics, d)
        self.radiomics_embedding = RadiomicsEmbedding(config.n_radiomics, d)
        self.query = nn.Parameter(torch.empty(1, config.n_queries, d))
        nn.init.trunc_normal_(self.query, std=0.02, a=-0.04, b=0.04)
        self.blocks = nn.ModuleList(
            MixingBlock(d, config.n_heads, config.ffn_mult, config.dropout) for _ in MODALITIES
        )
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 1)) for _ in MODALITIES
        )
        self.linear = (
            LinearEvidence(config.n_characteristics, config.n_summary_tokens)
            if config.linear_skip
            else None
        )
        #: Dotted name of the last CNN stage, for ``monai.visualize.GradCAM(target_layers=...)``.
        self.gradcam_layer: str = f"mri_encoder.stages.{len(config.cnn_channels) - 1}"

    def forward(
        self,
        image: Tensor,
        characteristics: Tensor,
        characteristics_known: Tensor,
        radiomics: Tensor,
        radiomics_known: Tensor,
        present: Tensor,
        summary: Tensor | None = None,
    ) -> CascadeOutput:
        """Run the cascade; see :class:`CascadeOutput`.

        ``image`` [B, in_channels, *crop_size]; ``characteristics`` [B,
        n_characteristics] with ``characteristics_known`` (bool, same shape);
        ``radiomics`` [B, n_radiomics] z-scores with ``radiomics_known``;
        ``present`` [B, 3] bool in the order of :data:`MODALITIES`; ``summary``
        [B, n_summary_tokens]: the size/texture values when the caller measured them
        already (training measures them on the crops before augmentation, which
        would otherwise smooth the texture they measure); else read off ``image``.
        """
        self._check_inputs(
            image, characteristics, characteristics_known, radiomics, radiomics_known, present
        )
        used = modality_dropout(present, self.config.modality_dropout) if self.training else present
        b = image.shape[0]
        on = used.to(image.dtype)
        # Absent images never reach the CNN (NaN * 0 would still be NaN).
        mri_in = torch.where(used[:, 0].view(b, 1, 1, 1, 1), image, torch.zeros_like(image))
        char_known = characteristics_known & used[:, 1:2]
        rad_known = radiomics_known & used[:, 2:3]
        if summary is None:
            summary = summary_values(mri_in, self.config)
        else:
            _check(
                tuple(summary.shape) == (b, self.config.n_summary_tokens),
                f"summary must have shape [B={b}, {self.config.n_summary_tokens}], "
                f"got {list(summary.shape)}",
            )
            summary = torch.where(used[:, :1], summary, torch.zeros_like(summary))
        tokens = (
            self.mri_encoder(mri_in, summary) * on[:, 0, None, None],
            self.characteristic_embedding(characteristics, char_known) * on[:, 1, None, None],
            self.radiomics_embedding(radiomics, rad_known) * on[:, 2, None, None],
        )
        query = self.query.expand(b, -1, -1)
        skip = self.linear_terms(summary, characteristics, char_known, on)
        logits: list[Tensor] = []
        weights: list[Tensor] = []
        for block, head, modality_tokens, extra in zip(
            self.blocks, self.heads, tokens, skip, strict=True
        ):
            query, w = block(query, modality_tokens)
            weights.append(w)
            logits.append(head(query.mean(dim=1)).squeeze(-1) + extra)
        return CascadeOutput(
            logits=torch.stack(logits, dim=1),
            attention=(weights[0], weights[1], weights[2]),
            present=used,
            linear=torch.stack(skip, dim=1),
        )

    def linear_input(self, summary: Tensor) -> Tensor:
        """The summary values as the linear path reads them (size values x LINEAR_SIZE_SCALE)."""
        if not self.config.size_tokens:
            return summary
        scale = torch.ones(summary.shape[1], dtype=summary.dtype, device=summary.device)
        scale[:N_SIZE_VALUES] = LINEAR_SIZE_SCALE  # values in [0, 1]: log-odds weights ~1
        return summary * scale

    def linear_terms(
        self, summary: Tensor, characteristics: Tensor, char_known: Tensor, on: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The linear path's addition to each head's logit (zeros without ``linear_skip``);
        ``on`` [B, 3]: 1 where the modality is used."""
        if self.linear is None:
            zero = on.new_zeros(on.shape[0])
            return zero, zero, zero
        image = self.linear_input(summary.to(on.dtype)) if summary.shape[1] else None
        mri, chars = self.linear(image, characteristics, char_known)
        mri, chars = mri * on[:, 0], chars * on[:, 1]
        return mri, mri + chars, mri + chars

    def _check_inputs(
        self,
        image: Tensor,
        characteristics: Tensor,
        characteristics_known: Tensor,
        radiomics: Tensor,
        radiomics_known: Tensor,
        present: Tensor,
    ) -> None:
        cfg = self.config
        _check(
            image.ndim == 5 and image.is_floating_point(),
            f"image must be a float tensor [B, {cfg.in_channels}, *{list(cfg.crop_size)}], "
            f"got {image.dtype} {list(image.shape)}",
        )
        b = image.shape[0]
        _check(
            image.shape[1] == cfg.in_channels,
            f"image must have in_channels = {cfg.in_channels} channels (T1C, mask), "
            f"got {image.shape[1]}",
        )
        _check(
            tuple(image.shape[2:]) == cfg.crop_size,
            f"image spatial size must be crop_size {list(cfg.crop_size)}, "
            f"got {list(image.shape[2:])}",
        )
        expected = {
            "characteristics": (characteristics, cfg.n_characteristics, "n_characteristics"),
            "characteristics_known": (
                characteristics_known,
                cfg.n_characteristics,
                "n_characteristics",
            ),
            "radiomics": (radiomics, cfg.n_radiomics, "n_radiomics"),
            "radiomics_known": (radiomics_known, cfg.n_radiomics, "n_radiomics"),
            "present": (present, len(MODALITIES), "the number of modalities"),
        }
        for name, (t, width, rule) in expected.items():
            _check(
                t.ndim == 2 and tuple(t.shape) == (b, width),
                f"{name} must have shape [B={b}, {width}] ({rule}), got {list(t.shape)}",
            )
            if name.endswith("known") or name == "present":
                _check(t.dtype == torch.bool, f"{name} must be a bool tensor, got {t.dtype}")
            else:
                _check(t.is_floating_point(), f"{name} must be a float tensor, got {t.dtype}")
        with torch.no_grad():
            finite = torch.isfinite(image).flatten(1).all(dim=1)
            image_ok = (finite | ~present[:, 0]).all()
            char_ok = torch.isfinite(characteristics[characteristics_known & present[:, 1:2]]).all()
            rad_ok = torch.isfinite(radiomics[radiomics_known & present[:, 2:3]]).all()
        _check(bool(image_ok), "image has NaN/inf in a sample whose MRI is present")
        _check(bool(char_ok), "characteristics has NaN/inf where characteristics_known is True")
        _check(bool(rad_ok), "radiomics has NaN/inf where radiomics_known is True")


def cascade_loss(
    output: CascadeOutput,
    target: Tensor,
    weights: Sequence[float] = (0.5, 0.4, 0.1),
    pos_weight: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Weighted sum of the three heads' BCE-with-logits losses (mean over the batch).

    Returns ``(total, per_head)`` with ``per_head`` [3] in the order of
    :data:`MODALITIES`. ``pos_weight`` (> 0) up-weights the positive class
    (Ki-67 high) as in :func:`torch.nn.functional.binary_cross_entropy_with_logits`.
    """
    w = check_loss_weights("weights", weights)
    logits = output.logits
    if target.shape != logits.shape[:1]:
        raise ModelError(
            f"target must have shape [B={logits.shape[0]}] (one 0/1 label per sample), "
            f"got {list(target.shape)}"
        )
    pw = None
    if pos_weight is not None:
        if not pos_weight > 0 or pos_weight == float("inf"):
            raise ModelError(f"pos_weight must be a finite number > 0, got {pos_weight!r}")
        pw = torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    y = target.to(logits.dtype)
    per_head = torch.stack(
        [F.binary_cross_entropy_with_logits(logits[:, i], y, pos_weight=pw) for i in range(3)]
    )
    total = (torch.tensor(w, dtype=logits.dtype, device=logits.device) * per_head).sum()
    return total, per_head
