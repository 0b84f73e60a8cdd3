"""The series of a synthetic study: which kinds, in which order, and their slice geometry.

:data:`ACQUISITION_ORDER` is the order a scanner runs the series in,
:data:`CONTRAST_OF` the world contrast each kind samples, and
:func:`series_grids` the slices of one series, planned against the scalp
points of :func:`head_points` with the case's pose and its own noise stream.
"""

from __future__ import annotations

import math

import numpy as np

from lab.synth.acquisition import Grid, plan_grid
from lab.synth.anatomy import HeadModel
from lab.synth.heads import HeadVariant
from lab.synth.plan import SIZES, STREAM_NOISE, CasePlan, stream

CONTRAST_OF = {
    "t1c_mprage": "t1c",
    "t1_mprage_pre": "t1",
    "t2_tse": "t2",
    "flair_2d": "flair",
    "flair_3d": "flair",
    "dwi": "dwi",
    "localizer": "localizer",
    "mpr_derived": "t1c",
    "t1c_thick_2d": "t1c",
}
ACQUISITION_ORDER = (
    "localizer",
    "t2_tse",
    "flair_2d",
    "flair_3d",
    "dwi",
    "t1_mprage_pre",
    "t1c_mprage",
    "t1c_thick_2d",
    "mpr_derived",
)
# kind -> orientation, pixel mm, matrix, thickness mm, step mm, slices (full size)
DISTRACTOR_GEOMETRY: dict[str, tuple[str, float, int, float, float, int]] = {
    "t2_tse": ("axial", 0.9, 256, 5.0, 6.0, 24),
    "flair_2d": ("axial", 0.9, 256, 5.0, 6.5, 22),
    "flair_3d": ("sag", 1.2, 200, 1.5, 1.5, 112),
    "dwi": ("axial", 1.8, 128, 5.0, 6.5, 22),
    "t1c_thick_2d": ("axial", 0.9, 256, 5.0, 6.0, 24),
}


def series_number(vendor: str, position: int) -> int:
    """SeriesNumber of the series run ``position``-th (Philips: 101, 201, ...)."""
    return 100 * position + 1 if vendor == "philips" else position


def series_grids(
    plan: CasePlan, kind: str, model: HeadModel, head_pts: np.ndarray
) -> tuple[Grid, ...]:
    """The slice geometry of one series of the case (several grids for a localizer)."""
    s = SIZES[plan.size].distractor_scale
    rng = stream(plan.seed, plan.index, STREAM_NOISE, 1000 + ACQUISITION_ORDER.index(kind))

    def place(
        orient: str,
        matrix: int,
        slices: int,
        pixel: float,
        thick: float,
        step: float,
        *,
        reverse: bool = False,
        oblique: bool = plan.oblique,
        cover_top: bool = True,
    ) -> Grid:
        return plan_grid(
            orient,
            rows=matrix,
            cols=matrix,
            slices=slices,
            pixel=pixel,
            thickness=thick,
            step=step,
            pose=plan.pose,
            head_pts=head_pts,
            rng=rng,
            oblique=oblique,
            reverse=reverse,
            cover_top=cover_top,
        )

    if kind == "t1c_mprage":
        t = plan.t1c_thickness
        return (
            place(
                plan.orientation,
                plan.t1c_matrix,
                plan.t1c_slices,
                plan.t1c_pixel,
                t,
                t,
                reverse=plan.reverse,
            ),
        )
    if kind == "t1_mprage_pre":  # cheaper than the T1C: 2 mm slices, >= 1.2 mm pixels
        thick = 2.0 * s
        slices = int(round(plan.t1c_slices * plan.t1c_thickness / thick))
        pixel = max(plan.t1c_pixel, 1.2 * s)
        matrix = int(round(plan.t1c_matrix * plan.t1c_pixel / pixel / 2)) * 2
        return (place(plan.orientation, matrix, slices, pixel, thick, thick, reverse=plan.reverse),)
    if kind == "mpr_derived":  # a thick reformat of the T1C in another plane
        orient = "axial" if plan.orientation == "sag" else "coronal"
        thick = 3.0 * s
        return (place(orient, plan.t1c_matrix, int(165 / thick), plan.t1c_pixel, thick, thick),)
    if kind == "localizer":  # three planes, three images each, in one series
        out = []
        for orient in ("sag", "coronal", "axial"):
            g = place(orient, int(256 / s), 3, 1.0 * s, 7.0, 30.0, oblique=False, cover_top=False)
            out += [_single(g, k) for k in range(3)]
        return tuple(out)
    orient, pixel, matrix, thick, step, n = DISTRACTOR_GEOMETRY[kind]
    f = s if kind == "flair_3d" else 1.0
    return (place(orient, int(matrix / s), int(math.ceil(n / f)), pixel * s, thick * f, step * f),)


def _single(g: Grid, k: int) -> Grid:
    from dataclasses import replace

    return replace(g, slices=1, origin=g.origin + k * g.slice_step * g.step_dir)


def head_points(model: HeadModel, warp: HeadVariant | None = None) -> np.ndarray:
    """About 4000 points on the scalp surface (world RAS), for slab planning."""
    pts = np.argwhere(np.abs(model.d_skull - 8.0) < 0.6 * model.spacing)
    rng = np.random.default_rng(1)
    pick = rng.choice(len(pts), size=min(4000, len(pts)), replace=False)
    ras = model.origin + model.spacing * pts[np.sort(pick)]
    if warp is not None and not warp.is_identity:
        ras = warp.variant_points(ras)
    return ras


def orientation_name(grid: Grid) -> str:
    """The plane a grid's slices are closest to: "sag", "coronal" or "axial"."""
    n = np.abs(grid.normal)
    return ("sag", "coronal", "axial")[int(np.argmax(n))]
