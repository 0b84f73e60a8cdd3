"""The radiomics standardiser: training mean and standard deviation per feature.

:class:`RadiomicsStandardiser` holds the training mean and standard deviation
of each feature (stored as JSON in the model bundle) and turns a feature dict
(:class:`~ai_core.radiomics_features.RadiomicsResult` ``features``) into
z-scores plus a *missing* mask: a feature that failed, is absent, NaN or
infinite becomes ``NaN`` with ``missing=True``, which the model feeds as an
"unknown" token instead of a made-up value.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ai_core.radiomics_features import RadiomicsError, feature_names

log = logging.getLogger(__name__)

DEFAULT_Z_CLIP = 10.0
STANDARDISER_FORMAT = "ki67node-radiomics-standardiser"
STANDARDISER_VERSION = 1


@dataclass(frozen=True)
class StandardisedFeatures:
    """Z-scores in the standardiser's name order; ``missing`` marks the unknown ones (NaN)."""

    names: tuple[str, ...]
    values: np.ndarray
    missing: np.ndarray


@dataclass(frozen=True, eq=False)
class RadiomicsStandardiser:
    """Training mean and standard deviation per feature, and the z-score transform.

    Policy: ``fit`` ignores absent and non-finite values per feature; a feature
    with fewer than two finite training values is always reported missing; a
    standard deviation of 0 is replaced by 1 (a constant feature gives z = 0 at
    the training value); z-scores are clipped to ``±clip`` so that an
    out-of-distribution value cannot dominate the model.
    """

    names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    n_train: int
    clip: float = DEFAULT_Z_CLIP
    _index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (len(self.names) == len(self.mean) == len(self.std)):
            raise RadiomicsError(
                f"standardiser has {len(self.names)} names but {len(self.mean)} means and "
                f"{len(self.std)} standard deviations; refit it"
            )
        if not self.clip > 0:
            raise RadiomicsError(f"standardiser clip must be > 0, got {self.clip}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(self.names)})

    @classmethod
    def fit(
        cls,
        rows: Sequence[Mapping[str, float]],
        names: Sequence[str] | None = None,
        clip: float = DEFAULT_Z_CLIP,
    ) -> RadiomicsStandardiser:
        """Statistics over training feature dicts (``RadiomicsResult.features``)."""
        if not rows:
            raise RadiomicsError("cannot fit a radiomics standardiser on zero training cases")
        order = tuple(names) if names is not None else feature_names()
        table = np.array([[r.get(n, math.nan) for n in order] for r in rows], dtype=np.float64)
        table[~np.isfinite(table)] = np.nan
        counts = np.sum(np.isfinite(table), axis=0)
        mean = np.full(len(order), np.nan)
        std = np.full(len(order), np.nan)
        usable = counts >= 2
        mean[usable] = np.nanmean(table[:, usable], axis=0)
        std[usable] = np.nanstd(table[:, usable], axis=0)
        std[usable & (std == 0)] = 1.0
        if not usable.all():
            log.info("radiomics standardiser: %d features unusable", int((~usable).sum()))
        return cls(order, mean, std, len(rows), clip)

    def transform(self, features: Mapping[str, float]) -> StandardisedFeatures:
        """Z-scores of one case; absent, NaN or infinite features become NaN + missing."""
        raw = np.array([features.get(n, math.nan) for n in self.names], dtype=np.float64)
        missing = ~np.isfinite(raw) | ~np.isfinite(self.mean)
        with np.errstate(invalid="ignore"):
            z = np.clip((raw - self.mean) / self.std, -self.clip, self.clip)
        z[missing] = np.nan
        return StandardisedFeatures(self.names, z, missing)

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": STANDARDISER_FORMAT,
                "version": STANDARDISER_VERSION,
                "n_train": self.n_train,
                "clip": self.clip,
                "names": list(self.names),
                "mean": [_json_float(v) for v in self.mean],
                "std": [_json_float(v) for v in self.std],
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> RadiomicsStandardiser:
        try:
            doc = json.loads(text)
            if (
                doc.get("format") != STANDARDISER_FORMAT
                or doc.get("version") != STANDARDISER_VERSION
            ):
                raise ValueError(f"format {doc.get('format')!r} version {doc.get('version')!r}")
            return cls(
                names=tuple(str(n) for n in doc["names"]),
                mean=np.array([_from_json(v) for v in doc["mean"]], dtype=np.float64),
                std=np.array([_from_json(v) for v in doc["std"]], dtype=np.float64),
                n_train=int(doc["n_train"]),
                clip=float(doc["clip"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RadiomicsError(
                f"not a {STANDARDISER_FORMAT} v{STANDARDISER_VERSION} document ({exc}); "
                "re-export the model bundle's standardisation statistics"
            ) from exc

    def save(self, path: Path) -> None:
        path.write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RadiomicsStandardiser:
        return cls.from_json(path.read_text(encoding="utf-8"))


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def _from_json(value: float | None) -> float:
    return math.nan if value is None else float(value)
