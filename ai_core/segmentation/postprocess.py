"""From a probability map (or a raw mask) to one lesion, or a reasoned refusal.

Rules, in order:

1. threshold the tumour probability (``threshold``);
2. drop connected components (26-connectivity) smaller than
   ``min_component_ml`` (speckle);
3. weigh every remaining component as a *candidate*: its volume, its
   confidence (the ``confidence_quantile`` of the tumour probability inside
   it) and, when the network also predicts the intracranial compartment, its
   intracranial share (mean intracranial probability over it) and its
   distance to the dura (the nearest of its voxels to the inner surface of
   the skull or to the falx, when the backend gives that map) and its
   enhancement (the median image intensity inside it over the 75th
   percentile of the rest of the intracranial space, about white matter,
   when the image is given). A candidate outside the intracranial space
   (share < ``min_intracranial``), away from the dura
   (> ``max_dural_distance_mm``: a meningioma is dural-based), not brighter
   than white matter on the contrast-enhanced image (< ``min_enhancement``:
   a meningioma enhances avidly; the pons or a gyrus does not) or below
   ``min_confidence`` is rejected, with the reason;
4. choose among the rest by ``select``: ``"confidence"`` (models 0.2+: the
   most confident candidate, ties by volume — a meningioma is one lesion, and
   the biggest bright blob is not the likeliest one) or ``"largest"``
   (models 0.1.x);
5. ``not_assessable`` when no candidate is left (reason: "no meningioma
   found" when nothing was ever a candidate, else why each was rejected) or
   the chosen one is below ``min_lesion_ml`` (with ``"confidence"``, a
   candidate below it is rejected before the choice: a tiny confident
   vessel must not win over the tumour).

Out-of-distribution input is refused before the network runs
(:mod:`ai_core.segmentation.intensity`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ai_core.segmentation.base import STATUS_NOT_ASSESSABLE, STATUS_OK, Status

log = logging.getLogger(__name__)

_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
MM3_PER_ML = 1000.0
SELECTIONS = ("largest", "confidence")
NO_LESION = "no meningioma found"


@dataclass(frozen=True)
class PostprocessParams:
    """How a probability map becomes one lesion; stored in ``model.json``."""

    threshold: float = 0.5
    min_component_ml: float = 0.05  # smaller components are speckle
    min_lesion_ml: float = 0.1  # no lesion at least this large: not assessable
    keep_largest: bool = True  # 0.1.x name of select="largest"
    select: str = "largest"  # largest | confidence
    min_confidence: float = 0.0  # a candidate's confidence must reach this
    confidence_quantile: float = 0.9  # of the tumour probability inside a candidate
    min_intracranial: float = 0.0  # a candidate's mean intracranial probability
    max_dural_distance_mm: float = 0.0  # nearest dura farther than this: rejected (0: off)
    min_enhancement: float = 0.0  # candidate median / intracranial 75th percentile (0: off)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_component_ml < 0 or self.min_lesion_ml < 0:
            raise ValueError("min_component_ml and min_lesion_ml must not be negative")
        if self.select not in SELECTIONS:
            raise ValueError(f"select must be one of {SELECTIONS}, got {self.select!r}")
        for name in ("min_confidence", "confidence_quantile", "min_intracranial"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.min_enhancement < 0:
            raise ValueError(
                f"min_enhancement must not be negative (0 = off), got {self.min_enhancement}"
            )
        if self.max_dural_distance_mm < 0:
            raise ValueError(
                f"max_dural_distance_mm must not be negative (0 = off), got "
                f"{self.max_dural_distance_mm}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PostprocessParams:
        known = {k: data[k] for k in asdict(cls()) if k in data}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown post-processing key(s) {unknown}; remove them")
        return cls(**known)


@dataclass(frozen=True)
class Postprocessed:
    mask: np.ndarray  # uint8 0/1
    status: Status
    reason: str
    components: int  # components above the speckle size
    candidates: tuple[dict[str, Any], ...] = ()


def postprocess(
    probability_or_mask: np.ndarray,
    spacing: tuple[float, float, float],
    params: PostprocessParams | None = None,
    *,
    intracranial: np.ndarray | None = None,
    dural_distance_mm: np.ndarray | None = None,
    image: np.ndarray | None = None,
) -> Postprocessed:
    """Apply the module's rules; ``spacing`` is ``(x, y, z)`` mm.

    ``intracranial`` (same grid, probability) enables the intracranial rule,
    ``dural_distance_mm`` (same grid, mm to the nearest dura) the dural rule,
    ``image`` (same grid, the network's input) with ``intracranial`` the
    enhancement rule.
    """
    params = params or PostprocessParams()
    data = np.asarray(probability_or_mask)
    is_prob = data.dtype.kind == "f"
    binary = data > params.threshold if is_prob else data > 0
    voxel_ml = float(np.prod(spacing)) / MM3_PER_ML
    labels, count = ndi.label(binary, structure=_CONNECTIVITY)
    if count == 0:
        return _refused(binary.shape, f"{NO_LESION} (no voxel above the threshold)", 0)
    sizes = np.bincount(labels.ravel())[1:]
    big = np.flatnonzero(sizes * voxel_ml >= params.min_component_ml) + 1
    if big.size == 0:
        return _refused(
            binary.shape,
            f"{NO_LESION}: only speckle ({count} component(s), largest "
            f"{sizes.max() * voxel_ml:.3f} mL < {params.min_component_ml} mL)",
            0,
        )
    maps = CandidateMaps(
        data if is_prob else None,
        intracranial,
        dural_distance_mm,
        _brain_level(image, intracranial, binary, params),
        image,
    )
    candidates = _weigh(labels, big, sizes, voxel_ml, maps, params)
    passing = [c for c in candidates if c["rejected"] is None]
    if not passing:
        why = "; ".join(f"{c['volume_ml']:.2f} mL candidate {c['rejected']}" for c in candidates)
        return _refused(
            binary.shape, f"not assessable: no plausible lesion ({why})", int(big.size), candidates
        )
    chosen = _choose(passing, params)
    keep = [chosen] if params.select == "confidence" or params.keep_largest else passing
    for c in keep:
        c["chosen"] = True
    mask = np.isin(labels, [c["label"] for c in keep]).astype(np.uint8)
    volume_ml = float(mask.sum()) * voxel_ml
    if volume_ml < params.min_lesion_ml:
        return _refused(
            binary.shape,
            f"largest lesion {volume_ml:.3f} mL is below the minimum {params.min_lesion_ml} mL",
            int(big.size),
            candidates,
        )
    reason = f"one lesion of {volume_ml:.2f} mL"
    if params.select == "confidence" and is_prob:
        reason += f" (confidence {chosen['confidence']:.2f}"
        if chosen["intracranial"] is not None:
            reason += f", intracranial {chosen['intracranial']:.2f}"
        reason += ")"
    if len(candidates) > 1 and len(keep) == 1:
        kept = "most confident" if params.select == "confidence" else "largest"
        reason += f"; {kept} of {len(candidates)} candidates kept"
    return Postprocessed(
        mask, STATUS_OK, reason, int(big.size), tuple(_public(c) for c in candidates)
    )


@dataclass(frozen=True, eq=False)
class CandidateMaps:
    """The maps a candidate is weighed on (all on the grid of the labels; None = not given)."""

    probability: np.ndarray | None
    intracranial: np.ndarray | None
    dural_distance_mm: np.ndarray | None
    brain_level: float | None = None  # 75th percentile of the intracranial non-candidate image
    image: np.ndarray | None = None


def _brain_level(
    image: np.ndarray | None,
    intracranial: np.ndarray | None,
    candidates: np.ndarray,
    params: PostprocessParams,
) -> float | None:
    """About white matter: the 75th percentile of the intracranial image outside the candidates."""
    if image is None or intracranial is None or not params.min_enhancement:
        return None
    brain = (intracranial >= 0.5) & ~candidates
    if int(brain.sum()) < 1000:
        return None
    return float(np.percentile(image[brain], 75))


def _weigh(
    labels: np.ndarray,
    big: np.ndarray,
    sizes: np.ndarray,
    voxel_ml: float,
    maps: CandidateMaps,
    params: PostprocessParams,
) -> list[dict[str, Any]]:
    """Volume, confidence, intracranial share, dural distance and the first failed rule."""
    objects = ndi.find_objects(labels)
    out = []
    for label in big:
        box = objects[int(label) - 1]
        inside = labels[box] == label
        confidence = 1.0
        if maps.probability is not None:
            values = maps.probability[box][inside]
            confidence = float(np.quantile(values, params.confidence_quantile))
        share = None if maps.intracranial is None else float(maps.intracranial[box][inside].mean())
        dural = None
        if maps.dural_distance_mm is not None:
            dural = float(maps.dural_distance_mm[box][inside].min())
        enhancement = None
        if maps.image is not None and maps.brain_level:
            enhancement = float(np.median(maps.image[box][inside])) / maps.brain_level
        volume_ml = float(sizes[int(label) - 1]) * voxel_ml
        out.append(
            {
                "label": int(label),
                "volume_ml": volume_ml,
                "confidence": confidence,
                "intracranial": share,
                "dural_distance_mm": dural,
                "enhancement": enhancement,
                "rejected": _rejection(volume_ml, confidence, share, dural, enhancement, params),
                "chosen": False,
            }
        )
    return out


def _rejection(
    volume_ml: float,
    confidence: float,
    share: float | None,
    dural: float | None,
    enhancement: float | None,
    params: PostprocessParams,
) -> str | None:
    """The first rule a candidate fails, in words, or None."""
    if share is not None and share < params.min_intracranial:
        return f"outside the intracranial space (share {share:.2f} < {params.min_intracranial})"
    limit = params.max_dural_distance_mm
    if dural is not None and limit and dural > limit:
        return f"not dural-based (nearest dura {dural:.0f} mm > {limit:g} mm)"
    if enhancement is not None and enhancement < params.min_enhancement:
        return (
            f"does not enhance (median {enhancement:.2f} x white matter < "
            f"{params.min_enhancement:g})"
        )
    if confidence < params.min_confidence:
        return f"low confidence ({confidence:.2f} < {params.min_confidence})"
    if params.select == "confidence" and volume_ml < params.min_lesion_ml:
        return f"too small ({volume_ml:.2f} mL < {params.min_lesion_ml:g} mL)"
    return None


def _choose(passing: list[dict[str, Any]], params: PostprocessParams) -> dict[str, Any]:
    if params.select == "confidence":
        return max(passing, key=lambda c: (round(c["confidence"], 3), c["volume_ml"]))
    return max(passing, key=lambda c: c["volume_ml"])


def _public(candidate: dict[str, Any]) -> dict[str, Any]:
    """A JSON-safe copy without the internal component label."""
    out = {k: v for k, v in candidate.items() if k != "label"}
    for key in ("volume_ml", "confidence", "intracranial", "dural_distance_mm", "enhancement"):
        if out[key] is not None:
            out[key] = round(float(out[key]), 4)
    return out


def _refused(
    shape: tuple[int, ...],
    reason: str,
    components: int,
    candidates: list[dict[str, Any]] | None = None,
) -> Postprocessed:
    log.debug("segmentation not assessable: %s", reason)
    return Postprocessed(
        np.zeros(shape, dtype=np.uint8),
        STATUS_NOT_ASSESSABLE,
        reason,
        components,
        tuple(_public(c) for c in candidates or ()),
    )
