"""Hyper-parameters of the Ki-67 cascaded multi-modal Transformer (:class:`ModelConfig`).

The configuration is frozen and validated when built, so a bad value fails at
start-up with the field's name and the rule it breaks. :meth:`ModelConfig.to_dict`
and :meth:`ModelConfig.from_dict` are a JSON-safe round trip (the form stored in
a model bundle's ``model.json``).

The MRI encoder is a 3D CNN with one stage per entry of ``cnn_channels``: every
stage but the last halves the resolution, the last one refines at the token
resolution. Hence ``n_down = len(cnn_channels) - 1`` and the token grid is
``crop_size / 2**n_down`` (default 64^3 -> 8^3 = 512 MRI tokens).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from ai_core.errors import ModelError

#: The radiological characteristics, in the order of the characteristic tokens.
CHARACTERISTICS: tuple[str, ...] = ("edema_index", "necrosis", "csf_cleft", "capsular_enhancement")

#: The crop channel that holds the tumour mask (channel 0 is the T1C).
MASK_CHANNEL = 1
#: Values behind the MRI block's size tokens and texture tokens (:mod:`ai_core.model.blocks`).
N_SIZE_VALUES = 3
N_TEXTURE_VALUES = 3

#: An MRI token grid larger than this is a mistake (e.g. a crop without down-sampling).
MAX_MRI_TOKENS = 4096
#: Each side of the MRI token grid has at least this many cells (instance norm needs > 1 voxel).
MIN_GRID_SIDE = 2


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    return value


def _int_tuple(name: str, value: object, length: int | None) -> tuple[int, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ModelError(f"ModelConfig.{name} must be a sequence of positive ints, got {value!r}")
    if length is not None and len(value) != length:
        raise ModelError(f"ModelConfig.{name} must have {length} entries, got {len(value)}")
    if not all(_is_int(v) and v >= 1 for v in value):
        raise ModelError(f"ModelConfig.{name} must hold positive ints, got {list(value)!r}")
    return tuple(int(v) for v in value)


def _probability(name: str, value: object) -> float:
    if not isinstance(value, int | float) or not _is_real(value) or not 0.0 <= value < 1.0:
        raise ModelError(f"ModelConfig.{name} must be a probability 0 <= p < 1, got {value!r}")
    return float(value)


def check_loss_weights(name: str, value: object) -> tuple[float, float, float]:
    """Three finite non-negative weights with a positive sum (one per auxiliary head)."""
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise ModelError(
            f"{name} must be three weights (MRI, characteristics, radiomics), got {value!r}"
        )
    if not all(_is_real(v) and v >= 0 for v in value):
        raise ModelError(f"{name} must be finite and non-negative, got {list(value)!r}")
    if sum(float(v) for v in value) <= 0:
        raise ModelError(f"{name} must have a positive sum, got {list(value)!r}")
    return (float(value[0]), float(value[1]), float(value[2]))


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and training-time hyper-parameters of :class:`CascadedMixingTransformer`."""

    in_channels: int = 2  # channel 0: T1C crop scaled to ~[0, 1]; channel 1: tumour mask 0/1
    crop_size: tuple[int, int, int] = (64, 64, 64)
    cnn_channels: tuple[int, ...] = (16, 32, 64, 96)
    d_model: int = 96
    n_heads: int = 4
    ffn_mult: int = 2
    n_queries: int = 1
    n_characteristics: int = 4  # in the order of CHARACTERISTICS
    n_radiomics: int = 1218
    dropout: float = 0.1
    modality_dropout: tuple[float, float, float] = (
        0.2,
        0.3,
        0.3,
    )  # MRI, characteristics, radiomics
    loss_weights: tuple[float, float, float] = (0.5, 0.4, 0.1)
    size_tokens: bool = True  # three MRI tokens stating the tumour's size (blocks.size_values)
    texture_tokens: bool = True  # three MRI tokens: heterogeneity (blocks.texture_values)
    linear_skip: bool = True  # a logistic path from those values + characteristics to the heads

    def __post_init__(self) -> None:
        for name in ("in_channels", "d_model", "n_heads", "ffn_mult", "n_queries"):
            _positive_int(name, getattr(self, name))
        _positive_int("n_characteristics", self.n_characteristics)
        _positive_int("n_radiomics", self.n_radiomics)
        for flag in ("size_tokens", "texture_tokens", "linear_skip"):
            if not isinstance(getattr(self, flag), bool):
                raise ModelError(
                    f"ModelConfig.{flag} must be true or false, got {getattr(self, flag)!r}"
                )
        if (self.size_tokens or self.texture_tokens) and self.in_channels <= MASK_CHANNEL:
            raise ModelError(
                "ModelConfig.size_tokens/texture_tokens read the tumour mask from crop channel "
                f"{MASK_CHANNEL}: in_channels must be at least {MASK_CHANNEL + 1}, "
                f"got {self.in_channels!r}"
            )
        if self.d_model % self.n_heads:
            raise ModelError(
                f"ModelConfig.n_heads must divide d_model ({self.d_model}), got {self.n_heads}"
            )
        channels = _int_tuple("cnn_channels", self.cnn_channels, None)
        if len(channels) < 2:
            raise ModelError(
                "ModelConfig.cnn_channels needs at least 2 stages (a down-sampling stem and a "
                f"refining last stage), got {list(channels)!r}"
            )
        object.__setattr__(self, "cnn_channels", channels)
        crop = _int_tuple("crop_size", self.crop_size, 3)
        step = 2 ** (len(channels) - 1)
        if any(c % step or c // step < MIN_GRID_SIDE for c in crop):
            raise ModelError(
                f"ModelConfig.crop_size must be divisible by 2**n_down = {step} "
                f"(n_down = len(cnn_channels) - 1) with at least {MIN_GRID_SIDE * step} "
                f"voxels per side, got {list(crop)!r}"
            )
        if math.prod(c // step for c in crop) > MAX_MRI_TOKENS:
            raise ModelError(
                f"ModelConfig.crop_size {list(crop)!r} with cnn_channels {list(channels)!r} gives "
                f"more than {MAX_MRI_TOKENS} MRI tokens: add a CNN stage or use a smaller crop"
            )
        object.__setattr__(self, "crop_size", crop)
        object.__setattr__(self, "dropout", _probability("dropout", self.dropout))
        md = self.modality_dropout
        if not isinstance(md, Sequence) or isinstance(md, str) or len(md) != 3:
            raise ModelError(
                "ModelConfig.modality_dropout must be three probabilities (MRI, characteristics, "
                f"radiomics), got {md!r}"
            )
        probs = tuple(_probability(f"modality_dropout[{i}]", p) for i, p in enumerate(md))
        object.__setattr__(self, "modality_dropout", probs)
        weights = check_loss_weights("ModelConfig.loss_weights", self.loss_weights)
        object.__setattr__(self, "loss_weights", weights)

    @property
    def n_down(self) -> int:
        """How many times the CNN halves the crop (every stage but the last)."""
        return len(self.cnn_channels) - 1

    @property
    def feature_grid(self) -> tuple[int, int, int]:
        """Shape [D, H, W] of the last CNN feature map: one MRI token per cell."""
        step = 2**self.n_down
        return (self.crop_size[0] // step, self.crop_size[1] // step, self.crop_size[2] // step)

    @property
    def n_mri_tokens(self) -> int:
        """CNN tokens: one per cell of :attr:`feature_grid` (the size tokens are extra)."""
        return math.prod(self.feature_grid)

    @property
    def n_summary_tokens(self) -> int:
        """The MRI block's tokens after the CNN's: size, then texture."""
        return N_SIZE_VALUES * self.size_tokens + N_TEXTURE_VALUES * self.texture_tokens

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused, missing ones take the default
        (except ``size_tokens``, ``texture_tokens`` and ``linear_skip``: a bundle without
        the key predates them, so False)."""
        if not isinstance(data, Mapping):
            raise ModelError(f"ModelConfig.from_dict needs a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ModelError(
                f"ModelConfig has no field(s) {', '.join(unknown)}; known fields: "
                f"{', '.join(sorted(known))}"
            )
        kwargs: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in data.items()
        }
        # Bundles written before these existed have no such key and no such weights.
        kwargs.setdefault("size_tokens", False)
        kwargs.setdefault("texture_tokens", False)
        kwargs.setdefault("linear_skip", False)
        return cls(**kwargs)
