"""Tissue intensities per MR contrast and the per-case label map.

Intensities are relative (white matter on the post-contrast MP-RAGE = 1.0);
the acquisition step scales them to stored pixel values. Brain tissue takes
its intensity from the MNI152 T1 template value through a per-contrast curve
(so grey/white/CSF contrast, deep nuclei and ventricles come from real anatomy);
every other tissue has one value per contrast.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lab.synth.anatomy import TEMPLATE_CSF, TEMPLATE_GM, TEMPLATE_WM, HeadModel, Label

CONTRASTS = ("t1c", "t1", "t2", "flair", "dwi", "localizer")

# Template value -> intensity: points at 0, CSF, GM, WM, 255.
_BRAIN_XP = np.array([0.0, TEMPLATE_CSF, TEMPLATE_GM, TEMPLATE_WM, 255.0], dtype=np.float32)
BRAIN_CURVES: dict[str, tuple[float, ...]] = {
    "t1c": (0.12, 0.16, 0.60, 1.00, 1.06),
    "t1": (0.12, 0.16, 0.60, 1.00, 1.06),
    "t2": (0.95, 1.00, 0.55, 0.33, 0.30),
    "flair": (0.06, 0.07, 0.72, 0.52, 0.50),
    "dwi": (0.10, 0.12, 0.62, 0.50, 0.50),
    "localizer": (0.20, 0.28, 0.70, 0.90, 0.95),
}

_L = Label
# fmt: off
# One row per contrast, one column per Label code (BRAIN is unused: template curve).
# PITUITARY appears only in distinct heads (index >= 1); it enhances strongly on T1C.
_TABLE: dict[str, dict[int, float]] = {
    "t1c": {
        _L.AIR: 0.0, _L.CSF: 0.15, _L.DURA: 0.55, _L.BONE: 0.05, _L.MARROW: 0.72,
        _L.MUSCLE: 0.42, _L.FAT: 1.30, _L.SKIN: 0.62, _L.SINUS: 1.32, _L.VESSEL: 1.30,
        _L.CHOROID: 1.20, _L.VITREOUS: 0.10, _L.LENS: 0.65, _L.ORBIT_FAT: 1.30,
        _L.MUCOSA: 0.95, _L.CORD: 0.92, _L.DISC: 0.35, _L.PITUITARY: 1.25,
    },
    "t1": {
        _L.AIR: 0.0, _L.CSF: 0.15, _L.DURA: 0.42, _L.BONE: 0.05, _L.MARROW: 0.72,
        _L.MUSCLE: 0.42, _L.FAT: 1.30, _L.SKIN: 0.62, _L.SINUS: 0.35, _L.VESSEL: 0.30,
        _L.CHOROID: 0.45, _L.VITREOUS: 0.10, _L.LENS: 0.65, _L.ORBIT_FAT: 1.30,
        _L.MUCOSA: 0.50, _L.CORD: 0.92, _L.DISC: 0.35, _L.PITUITARY: 0.62,
    },
    "t2": {
        _L.AIR: 0.0, _L.CSF: 1.00, _L.DURA: 0.18, _L.BONE: 0.03, _L.MARROW: 0.55,
        _L.MUSCLE: 0.25, _L.FAT: 0.78, _L.SKIN: 0.40, _L.SINUS: 0.05, _L.VESSEL: 0.05,
        _L.CHOROID: 0.60, _L.VITREOUS: 1.00, _L.LENS: 0.20, _L.ORBIT_FAT: 0.78,
        _L.MUCOSA: 0.90, _L.CORD: 0.40, _L.DISC: 0.80, _L.PITUITARY: 0.60,
    },
    "flair": {
        _L.AIR: 0.0, _L.CSF: 0.07, _L.DURA: 0.30, _L.BONE: 0.03, _L.MARROW: 0.60,
        _L.MUSCLE: 0.30, _L.FAT: 0.80, _L.SKIN: 0.50, _L.SINUS: 0.10, _L.VESSEL: 0.10,
        _L.CHOROID: 0.50, _L.VITREOUS: 0.08, _L.LENS: 0.30, _L.ORBIT_FAT: 0.80,
        _L.MUCOSA: 0.80, _L.CORD: 0.60, _L.DISC: 0.60, _L.PITUITARY: 0.70,
    },
    "dwi": {
        _L.AIR: 0.0, _L.CSF: 0.12, _L.DURA: 0.10, _L.BONE: 0.02, _L.MARROW: 0.10,
        _L.MUSCLE: 0.20, _L.FAT: 0.05, _L.SKIN: 0.15, _L.SINUS: 0.05, _L.VESSEL: 0.05,
        _L.CHOROID: 0.30, _L.VITREOUS: 0.10, _L.LENS: 0.10, _L.ORBIT_FAT: 0.05,
        _L.MUCOSA: 0.40, _L.CORD: 0.50, _L.DISC: 0.30, _L.PITUITARY: 0.55,
    },
    "localizer": {
        _L.AIR: 0.0, _L.CSF: 0.28, _L.DURA: 0.50, _L.BONE: 0.05, _L.MARROW: 0.70,
        _L.MUSCLE: 0.50, _L.FAT: 1.00, _L.SKIN: 0.60, _L.SINUS: 0.60, _L.VESSEL: 0.60,
        _L.CHOROID: 0.50, _L.VITREOUS: 0.25, _L.LENS: 0.60, _L.ORBIT_FAT: 1.00,
        _L.MUCOSA: 0.60, _L.CORD: 0.85, _L.DISC: 0.45, _L.PITUITARY: 0.70,
    },
}
# fmt: on

# Lesion intensities per contrast: tumour, necrosis, edema, capsule factor, dural tail.
LESION: dict[str, dict[str, float]] = {
    "t1c": {"tumour": 1.22, "necrosis": 0.22, "edema": 0.55, "capsule": 1.22, "tail": 1.10},
    "t1": {"tumour": 0.56, "necrosis": 0.28, "edema": 0.55, "capsule": 1.00, "tail": 0.45},
    "t2": {"tumour": 0.62, "necrosis": 0.95, "edema": 0.85, "capsule": 1.00, "tail": 0.20},
    "flair": {"tumour": 0.68, "necrosis": 0.40, "edema": 1.00, "capsule": 1.00, "tail": 0.30},
    "dwi": {"tumour": 0.72, "necrosis": 0.25, "edema": 0.48, "capsule": 1.00, "tail": 0.10},
    "localizer": {"tumour": 0.75, "necrosis": 0.35, "edema": 0.60, "capsule": 1.00, "tail": 0.50},
}


@dataclass(frozen=True)
class HeadLayers:
    """Per-case thickness (mm) of the layers around the brain."""

    csf: float = 2.0  # extra-axial CSF over the brain hull
    dura: float = 0.8
    inner_table: float = 1.6
    skull_offset: float = 0.0  # moves the outer skull surface (thicker/thinner vault)
    outer_table: float = 1.7
    galea: float = 1.2
    fat: float = 5.0
    skin: float = 1.8

    @classmethod
    def draw(cls, rng: np.random.Generator) -> HeadLayers:
        return cls(
            csf=float(rng.uniform(0.6, 2.2)),
            dura=float(rng.uniform(0.5, 0.8)),
            inner_table=float(rng.uniform(1.3, 2.0)),
            skull_offset=float(rng.uniform(-1.5, 1.5)),
            outer_table=float(rng.uniform(1.4, 2.2)),
            galea=float(rng.uniform(0.8, 1.6)),
            fat=float(rng.uniform(3.0, 7.5)),
            skin=float(rng.uniform(1.4, 2.2)),
        )


def label_table(contrast: str, jitter: np.ndarray | None = None) -> np.ndarray:
    """Intensity of every Label code for one contrast (optionally jittered per tissue)."""
    row = np.zeros(Label.COUNT, dtype=np.float32)
    for code, value in _TABLE[contrast].items():
        row[code] = value
    if jitter is not None:
        row *= jitter[: Label.COUNT].astype(np.float32)
    return row


def brain_curve(contrast: str, jitter: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    fp = np.asarray(BRAIN_CURVES[contrast], dtype=np.float32).copy()
    # jitter the grey/white contrast around the white-matter value
    fp[2] = fp[3] + (fp[2] - fp[3]) * jitter
    return _BRAIN_XP, fp


def build_labels(model: HeadModel, layers: HeadLayers) -> np.ndarray:
    """The label map of one case (before tumour): layers by distance, then fixed structures."""
    ds, dh = model.d_skull, model.d_hull
    lab = np.full(model.shape, Label.AIR, dtype=np.uint8)
    off = layers.skull_offset
    muscle = off + layers.galea + model.muscle_extra
    lab[ds < muscle + layers.fat + layers.skin] = Label.SKIN
    lab[ds < muscle + layers.fat] = Label.FAT
    lab[ds < muscle] = Label.MUSCLE
    lab[ds < off] = Label.BONE
    lab[ds < off - layers.outer_table] = Label.MARROW
    lab[dh < layers.csf + layers.dura + layers.inner_table] = Label.BONE
    lab[dh < layers.csf + layers.dura] = Label.DURA
    lab[dh < layers.csf] = Label.CSF
    static = model.static
    outside = static != 0
    lab[outside] = static[outside]
    lab[model.brain] = Label.BRAIN
    for code in (Label.SINUS, Label.CHOROID, Label.DURA):
        lab[static == code] = code
    return lab


def paint_veins(
    lab: np.ndarray, model: HeadModel, rng: np.random.Generator, fraction: float
) -> None:
    """Cortical veins (a random subset of the model's centre lines) as bright tubes."""
    h = model.spacing
    keep = rng.random(len(model.veins)) < fraction
    r = np.arange(-2, 3)
    off = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    for line, k in zip(model.veins, keep, strict=True):
        if not k:
            continue
        radius = float(rng.uniform(0.6, 1.4))
        seg = np.linalg.norm(np.diff(line, axis=0), axis=1).sum()
        n = max(int(seg / (0.5 * h)), 2)
        t = np.linspace(0, len(line) - 1, n)
        pts = np.stack([np.interp(t, np.arange(len(line)), line[:, i]) for i in range(3)], 1)
        idx = (pts - model.origin) / h
        cand = np.round(idx)[:, None, :] + off[None, :, :]
        dist = np.linalg.norm((cand - idx[:, None, :]) * h, axis=2)
        cand = cand[dist <= max(radius, 0.5 * h)].astype(int)
        ok = np.all((cand >= 0) & (cand < np.array(lab.shape)), axis=1)
        cand = cand[ok]
        cur = lab[cand[:, 0], cand[:, 1], cand[:, 2]]
        t1 = model.t1[cand[:, 0], cand[:, 1], cand[:, 2]]
        soft = (cur == Label.CSF) | (cur == Label.DURA) | ((cur == Label.BRAIN) & (t1 < 150))
        c = cand[soft]
        lab[c[:, 0], c[:, 1], c[:, 2]] = Label.VESSEL


def compose(
    lab: np.ndarray,
    t1: np.ndarray,
    contrast: str,
    table: np.ndarray,
    curve: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Relative intensity volume of one contrast from the label map and template values."""
    out = table[lab]
    brain = lab == Label.BRAIN
    out[brain] = np.interp(t1[brain], curve[0], curve[1]).astype(np.float32)
    return out
