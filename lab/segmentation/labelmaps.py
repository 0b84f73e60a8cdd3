"""Label maps of whole heads for training the segmentation (SynthSeg-style, issue 17).

A *label map* is the synthetic generator's anatomy as tissue codes only, no
intensities: the head layers, the face, orbits, sinuses, vessels, choroid
plexus, pituitary (``lab.synth``'s :class:`~lab.synth.anatomy.Label`
codes), the brain split into CSF / grey / white matter from the MNI152
template, and the tumour with its necrosis, capsule, edema and dural tail
(:class:`SegLabel`). Training images are drawn from these maps with a random
appearance per label (:mod:`lab.segmentation.synthesis`), so the network
cannot learn what our renderer's tissues look like, only where and what shape
they are.

Maps are built on the 2 mm world grid of the head model (one map ≈ 1.3 M
voxels, < 1 s), with a random tumour volume log-uniform over
``volume_range_cm3`` at a random site (convexity, falx, skull base), or no
tumour at all. The intracranial compartment (the network's second output) is
a set of codes: :data:`INTRACRANIAL`.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import Final

import numpy as np

from lab.synth.anatomy import (
    TEMPLATE_CSF,
    TEMPLATE_GM,
    TEMPLATE_WM,
    HeadModel,
    Label,
    paint_pituitary,
)

log = logging.getLogger(__name__)

WORLD_SPACING_MM: Final = 2.0


class SegLabel:
    """Codes beyond the anatomy's :class:`Label`: brain tissues and the lesion."""

    BRAIN_CSF = 24
    GREY = 25
    WHITE = 26
    TUMOUR = 27
    NECROSIS = 28
    CAPSULE = 29
    EDEMA = 30
    TAIL = 31
    COUNT = 32


#: The tumour as the truth mask has it: necrosis and capsule are inside it, tail and edema not.
TUMOUR_CODES: Final = (SegLabel.TUMOUR, SegLabel.NECROSIS, SegLabel.CAPSULE)
#: Inside the inner table of the skull (the dura and what it holds).
INTRACRANIAL: Final = (
    Label.CSF,
    Label.DURA,
    Label.SINUS,
    Label.VESSEL,
    Label.CHOROID,
    Label.CORD,
    Label.PITUITARY,
    SegLabel.BRAIN_CSF,
    SegLabel.GREY,
    SegLabel.WHITE,
    SegLabel.TUMOUR,
    SegLabel.NECROSIS,
    SegLabel.CAPSULE,
    SegLabel.EDEMA,
    SegLabel.TAIL,
)
#: Bright or blob-like structures a tumour detector must learn to ignore (crop centres).
DECOYS: Final = (
    Label.ORBIT_FAT,
    Label.FAT,
    Label.SINUS,
    Label.CHOROID,
    Label.VESSEL,
    Label.MARROW,
    Label.MUCOSA,
    Label.PITUITARY,
)
LOCATIONS: Final = ("convexity", "falx", "skull_base")
# template value thresholds between CSF, grey and white matter (midpoints)
_CSF_GM = 0.5 * (TEMPLATE_CSF + TEMPLATE_GM)
_GM_WM = 0.5 * (TEMPLATE_GM + TEMPLATE_WM)


@dataclass(frozen=True, eq=False)
class LabelMap:
    """One head's tissue codes on the world grid, indexed ``[x, y, z]`` (RAS)."""

    labels: np.ndarray  # uint8
    brain_t1: np.ndarray  # uint8 template T1 value (0..255) inside the brain, 0 elsewhere
    spacing: float
    tumour_cm3: float  # world volume of the tumour (0: tumour-free)
    location: str  # convexity | falx | skull_base | none

    @functools.cached_property
    def label_counts(self) -> np.ndarray:
        """Voxels per code in the head (air and the brain's codes excluded), length 256."""
        counts = np.bincount(self.labels.ravel(), minlength=256).astype(np.float64)
        counts[[Label.AIR, SegLabel.BRAIN_CSF, SegLabel.GREY, SegLabel.WHITE]] = 0.0
        return counts

    @functools.cached_property
    def brain_histogram(self) -> np.ndarray:
        """Brain voxels per template T1 value 0..255."""
        brain = np.isin(self.labels, (SegLabel.BRAIN_CSF, SegLabel.GREY, SegLabel.WHITE))
        return np.bincount(self.brain_t1[brain], minlength=256).astype(np.float64)

    def lookup(self, codes: tuple[int, ...]) -> np.ndarray:
        """Boolean table over all codes: True for ``codes``."""
        table = np.zeros(256, dtype=bool)
        table[list(codes)] = True
        return table


def build_label_map(
    rng: np.random.Generator,
    *,
    tumour: bool = True,
    volume_range_cm3: tuple[float, float] = (0.5, 150.0),
    head: int = 0,
) -> LabelMap:
    """A random head (layers, veins) with a random tumour, or none; see the module docstring.

    ``head`` is one of the generator's distinct heads (:mod:`lab.synth.heads`):
    its atrophy, orbital fat and layer tweaks, and its warp pulled back onto the map.
    """
    from lab.synth.contrast import HeadLayers, build_labels, paint_veins
    from lab.synth.head_build import head_model
    from lab.synth.heads import head_variant

    model = head_model(WORLD_SPACING_MM)
    variant = head_variant(head)
    layers = variant.adjust_layers(HeadLayers.draw(rng))
    lab = build_labels(model, layers)
    variant.apply_labels(lab, model)
    paint_veins(lab, model, rng, float(rng.uniform(0.3, 0.95)))
    paint_pituitary(lab, model)
    t1 = variant.apply_atrophy(model.t1, model.brain, spacing=model.spacing)
    volume_cm3, location = 0.0, "none"
    lesion_codes: list[tuple[np.ndarray, tuple[slice, ...], int]] = []
    if tumour:
        lo, hi = volume_range_cm3
        volume_cm3 = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        location = str(rng.choice(LOCATIONS))
        lesion_codes = _tumour(model, layers.csf, t1, lab, volume_cm3, location, rng)
    out = lab.copy()
    brain = lab == Label.BRAIN
    out[brain & (t1 < _CSF_GM)] = SegLabel.BRAIN_CSF
    out[brain & (t1 >= _CSF_GM) & (t1 < _GM_WM)] = SegLabel.GREY
    out[brain & (t1 >= _GM_WM)] = SegLabel.WHITE
    for region, box, code in lesion_codes:
        view = out[box]
        view[region] = code
    out = variant.warp_label_map(out, model)
    in_brain = np.isin(out, (SegLabel.BRAIN_CSF, SegLabel.GREY, SegLabel.WHITE))
    brain_t1 = variant.warp_label_map(np.clip(np.rint(t1), 0, 255).astype(np.uint8), model)
    brain_t1[~in_brain] = 0
    if tumour:  # the warp changes the volume a little; keep the map's own
        volume_cm3 = float(np.isin(out, TUMOUR_CODES).sum()) * model.spacing**3 / 1000.0
    return LabelMap(out, brain_t1, model.spacing, volume_cm3, location)


def _tumour(
    model: HeadModel,
    csf_mm: float,
    t1: np.ndarray,
    lab: np.ndarray,
    volume_cm3: float,
    location: str,
    rng: np.random.Generator,
) -> list[tuple[np.ndarray, tuple[slice, ...], int]]:
    """Place a tumour with its surroundings; return (region, box, code) in paint order."""
    from lab.synth.lesion import LesionSpec, apply_mass_effect, build_lesion
    from lab.synth.tumour import TumourShape, place_tumour

    volume_mm3 = volume_cm3 * 1000.0
    radius = (3 * volume_mm3 / (4 * math.pi)) ** (1 / 3)
    edema_mm3 = float(rng.choice([0.0, rng.uniform(0.1, 1.5)])) * volume_mm3
    shell = (3 * (volume_mm3 + edema_mm3) / (4 * math.pi)) ** (1 / 3) - radius
    tail_mm = float(rng.uniform(8, 22))
    falx = location == "falx"
    shape = TumourShape(
        location=location,
        side=str(rng.choice(["left", "right"])),
        volume_mm3=volume_mm3,
        embed=float(rng.uniform(0.45, 0.9) if falx else rng.uniform(0.05, 0.5)),
        lobes=int(rng.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1])),
        lobulation=float(rng.uniform(0.2, 1.0)),
        elongation=(
            float(rng.uniform(0.85, 1.1) if falx else rng.uniform(0.6, 1.0)),
            float(rng.uniform(0.7, 1.35)),
        ),
        margin_mm=max(2.2 * shell + 8, tail_mm + 4, 0.9 * radius),
    )
    geo = place_tumour(model, shape, csf_mm, rng)
    apply_mass_effect(model, geo, t1, lab, float(rng.uniform(0.4, 0.95)))
    spec = LesionSpec(
        edema_mm3=edema_mm3,
        necrosis=bool(rng.random() < 0.3),
        necrosis_fraction=float(rng.uniform(0.06, 0.25)),
        csf_cleft=bool(rng.random() < 0.5),
        cleft_mm=float(rng.uniform(1.0, 2.2)),
        capsule=bool(rng.random() < 0.3),
        dural_tail=bool(rng.random() < 0.65),
        tail_mm=tail_mm,
        heterogeneity=0.05,
        texture_mm=1.5,
        enhancement=1.0,
        mass_effect=0.7,
    )
    maps = build_lesion(model, geo, spec, t1, lab, csf_mm, rng)
    box = geo.box
    tumour = geo.mask
    return [
        ((maps.edema > 0.2) & ~tumour, box, SegLabel.EDEMA),
        ((maps.tail > 0.5) & ~tumour, box, SegLabel.TAIL),
        (tumour, box, SegLabel.TUMOUR),
        (tumour & (maps.capsule > 0.5), box, SegLabel.CAPSULE),
        (tumour & (maps.necrosis > 0.5), box, SegLabel.NECROSIS),
    ]


#: Distinct heads the bundled network is trained on; benchmarks test on others (>= 10).
TRAINING_HEADS: Final = (0, 1, 2, 3, 4, 5)


def build_bank(
    count: int,
    seed: int,
    *,
    tumour_free_fraction: float = 0.15,
    volume_range_cm3: tuple[float, float] = (0.5, 150.0),
    heads: tuple[int, ...] = TRAINING_HEADS,
) -> list[LabelMap]:
    """``count`` label maps from independent streams ``(seed, i)``, heads taken in turn."""
    bank = []
    for i in range(count):
        rng = np.random.default_rng([seed, i, 17])
        has = bool(rng.random() >= tumour_free_fraction)
        head = heads[i % len(heads)]
        bank.append(build_label_map(rng, tumour=has, volume_range_cm3=volume_range_cm3, head=head))
        log.info(
            "label map %d/%d: head %d, %s %.2f cm3",
            i + 1,
            count,
            head,
            bank[-1].location,
            bank[-1].tumour_cm3,
        )
    return bank
