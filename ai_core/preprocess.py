"""A T1C volume → the model's working image: 1 mm isotropic, bias-corrected, [0, 255].

Steps, in order (each timed, see :attr:`Preprocessed.timings_s`):

1. ``resample`` — onto a grid of ``target_spacing_mm`` isotropic voxels with
   the *source orientation* (direction kept, so no reorientation artefact)
   covering the same physical extent (voxel edges) within half a voxel;
   linear interpolation, 0 outside.
2. ``head_mask`` — Otsu threshold on the image shrunk by ``n4_shrink_factor``,
   largest connected component, closing, holes filled; then put back on the
   working grid. Used as the N4 mask, for the intensity window and by
   :func:`ai_core.measure.measure` (midline, vertex).
3. ``n4`` — N4 bias field correction (SimpleITK) fitted on the shrunk image
   and mask (cut to the head's bounding box) for speed; the log bias field,
   evaluated on the shrunk grid, is interpolated onto the working grid and
   divided out. Nearly all of the time goes here.
4. ``scale`` — intensities between the ``percentiles`` of the head voxels are
   mapped linearly onto ``output_range``, clipped outside; float32. The same
   mapping clipped only below is kept as :attr:`Preprocessed.unclipped`: an
   enhancing tumour is often the brightest tissue in the head, so the upper
   percentile cuts through it (a third to two thirds of its voxels at the
   top of the range in the synthetic cohort) and flattens its enhancement
   texture, which the Ki-67 model's crop needs (:class:`ai_core.model.inputs.CropParams`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import SimpleITK as sitk

from ai_core.errors import VolumeError
from ai_core.image import (
    Grid,
    MaskInterpolation,
    array_to_sitk,
    mask_to_sitk,
    resample_mask,
    to_sitk,
)
from ai_core.volume import Volume

log = logging.getLogger(__name__)

MAX_WORKING_VOXELS = 400**3  # a larger 1 mm grid means a wrong spacing or a whole-body FOV
HEAD_CLOSING_RADIUS = 1  # voxels of the shrunk image
OTSU_BINS = 128
N4_CROP_MARGIN = 2  # shrunk voxels kept around the head for N4
MIN_HEAD_VOXELS = 8  # on the shrunk image; fewer means an empty or flat image


@dataclass(frozen=True)
class PreprocessParams:
    """How a volume becomes the working image; stored in the model bundle (JSON)."""

    target_spacing_mm: float = 1.0
    n4: bool = True
    n4_shrink_factor: int = 4
    n4_iterations: tuple[int, ...] = (15, 15, 10)  # per fitting level, coarse to fine
    n4_convergence_threshold: float = 1e-3
    percentiles: tuple[float, float] = (0.5, 99.5)
    output_range: tuple[float, float] = (0.0, 255.0)

    def __post_init__(self) -> None:
        # JSON gives lists; keep tuples so that the dataclass stays hashable
        object.__setattr__(self, "n4_iterations", tuple(self.n4_iterations))
        object.__setattr__(self, "percentiles", tuple(self.percentiles))
        object.__setattr__(self, "output_range", tuple(self.output_range))
        if not 0.1 <= self.target_spacing_mm <= 10.0:
            raise ValueError(
                f"target_spacing_mm must be between 0.1 and 10 mm, got {self.target_spacing_mm}"
            )
        if isinstance(self.n4_shrink_factor, bool) or not isinstance(self.n4_shrink_factor, int):
            raise ValueError(f"n4_shrink_factor must be an integer, got {self.n4_shrink_factor!r}")
        if not 1 <= self.n4_shrink_factor <= 16:
            raise ValueError(f"n4_shrink_factor must be 1 to 16, got {self.n4_shrink_factor}")
        if not self.n4_iterations or any(
            not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in self.n4_iterations
        ):
            raise ValueError(
                "n4_iterations must be a non-empty list of positive integers (one per level), "
                f"got {list(self.n4_iterations)}"
            )
        if not 0.0 < self.n4_convergence_threshold < 1.0:
            raise ValueError(
                f"n4_convergence_threshold must be in (0, 1), got {self.n4_convergence_threshold}"
            )
        if (
            len(self.percentiles) != 2
            or not 0.0 <= self.percentiles[0] < self.percentiles[1] <= 100
        ):
            raise ValueError(
                f"percentiles must be [low, high] with 0 <= low < high <= 100, got {self.percentiles}"
            )
        if len(self.output_range) != 2 or not self.output_range[0] < self.output_range[1]:
            raise ValueError(
                f"output_range must be [min, max] with min < max, got {self.output_range}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PreprocessParams:
        """The parameters from :meth:`to_dict` output; an unknown key is refused by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"unknown preprocessing parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessParams:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("preprocessing parameters must be a JSON object")
        return cls.from_dict(data)


@dataclass(frozen=True, eq=False)
class Preprocessed:
    """The working image, its head mask and how it was made."""

    image: np.ndarray  # float32 [z, y, x] within params.output_range
    head_mask: np.ndarray  # uint8 [z, y, x], 1 inside the head
    grid: Grid  # the working grid (target spacing, source direction)
    source: Grid  # the series grid, to put masks back on the source slices
    params: PreprocessParams
    intensity_window: tuple[float, float]  # bias-corrected values mapped to the range ends
    timings_s: dict[str, float] = field(default_factory=dict)
    #: The same linear mapping clipped only below (float32); None = not kept, use :attr:`image`.
    unclipped: np.ndarray | None = None

    @property
    def image_unclipped(self) -> np.ndarray:
        """The working image without the upper clip (:attr:`image` where it was not kept)."""
        return self.image if self.unclipped is None else self.unclipped

    def to_sitk(self) -> sitk.Image:
        """The working image as a SimpleITK image."""
        return array_to_sitk(self.image, self.grid.spacing, self.grid.origin, self.grid.direction)

    def mask_to_source(
        self, mask_zyx: np.ndarray, *, interpolation: MaskInterpolation = "nearest"
    ) -> np.ndarray:
        """A mask on the working grid put back on the source series' slices (uint8 ``[z, y, x]``)."""
        return resample_mask(
            mask_to_sitk(mask_zyx, self.grid), self.source, interpolation=interpolation
        )

    def head_mask_sitk(self) -> sitk.Image:
        return array_to_sitk(
            self.head_mask, self.grid.spacing, self.grid.origin, self.grid.direction
        )


def preprocess(volume: Volume, params: PreprocessParams | None = None) -> Preprocessed:
    """Resample, mask, bias-correct and scale ``volume`` (see the module docstring).

    Raises :class:`VolumeError` when the volume cannot give a usable image
    (working grid too large, no head found, flat intensities).
    """
    params = params or PreprocessParams()
    timings: dict[str, float] = {}
    start = time.perf_counter()
    image = resample_isotropic(to_sitk(volume, dtype=np.float32), params.target_spacing_mm)
    image = sitk.Clamp(image, sitk.sitkFloat32, lowerBound=0.0)
    timings["resample"] = _lap(start)

    start = time.perf_counter()
    small = _shrink(image, params.n4_shrink_factor)
    small_mask = head_mask(small)
    mask = sitk.Cast(_onto(sitk.Cast(small_mask, sitk.sitkFloat32), image) >= 0.5, sitk.sitkUInt8)
    timings["head_mask"] = _lap(start)

    start = time.perf_counter()
    if params.n4:
        image = _n4(image, small, small_mask, params)
    timings["n4"] = _lap(start)

    start = time.perf_counter()
    pixels = sitk.GetArrayFromImage(image)
    mask_array = sitk.GetArrayFromImage(mask).astype(np.uint8, copy=False)
    unclipped, window = scale_intensities(pixels, mask_array, params, clip_top=False)
    scaled = np.minimum(unclipped, np.float32(params.output_range[1]))
    timings["scale"] = _lap(start)
    timings["total"] = float(sum(timings.values()))
    log.debug(
        "preprocessed %s -> %s in %.2f s (%s)",
        volume.shape,
        scaled.shape,
        timings["total"],
        ", ".join(f"{k} {v:.2f}" for k, v in timings.items()),
    )
    return Preprocessed(
        image=scaled,
        head_mask=mask_array,
        grid=Grid.of(image),
        source=Grid.of(volume),
        params=params,
        intensity_window=window,
        timings_s=timings,
        unclipped=unclipped,
    )


def working_grid(source: Grid, spacing_mm: float) -> Grid:
    """The isotropic grid with the source's direction covering the source's extent.

    Voxel edges line up with the source's first edge; each axis has
    ``round(extent / spacing)`` voxels (at least one), so the extent is kept
    within half a target voxel.
    """
    src_spacing = np.asarray(source.spacing, dtype=float)
    size_xyz = np.asarray(source.shape[::-1], dtype=float)
    n_out = np.maximum(np.rint(size_xyz * src_spacing / spacing_mm), 1).astype(int)
    total = int(np.prod(n_out))
    if total > MAX_WORKING_VOXELS:
        raise VolumeError(
            f"the {spacing_mm} mm working grid would have {n_out.tolist()} = {total} voxels "
            f"(more than {MAX_WORKING_VOXELS}); check the series' PixelSpacing and slice spacing"
        )
    shift = (spacing_mm - src_spacing) / 2.0  # first centre: half a target voxel in from the edge
    origin = np.asarray(source.origin, dtype=float) + source.direction @ shift
    return Grid(
        (int(n_out[2]), int(n_out[1]), int(n_out[0])),
        (spacing_mm, spacing_mm, spacing_mm),
        (float(origin[0]), float(origin[1]), float(origin[2])),
        np.asarray(source.direction, dtype=float),
    )


def resample_isotropic(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """``image`` on :func:`working_grid` (linear interpolation, 0 outside)."""
    grid = working_grid(Grid.of(image), spacing_mm)
    return sitk.Resample(
        image,
        grid.blank(sitk.sitkFloat32),
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkFloat32,
    )


def head_mask(image: sitk.Image) -> sitk.Image:
    """The head (UInt8 0/1): Otsu foreground, largest component, closed, holes filled."""
    fg = sitk.OtsuThreshold(image, 0, 1, OTSU_BINS)
    components = sitk.RelabelComponent(sitk.ConnectedComponent(fg), sortByObjectSize=True)
    largest = sitk.Cast(components == 1, sitk.sitkUInt8)
    radius = [HEAD_CLOSING_RADIUS] * 3
    closed = sitk.BinaryMorphologicalClosing(largest, radius, sitk.sitkBall, 1)
    filled = sitk.BinaryFillhole(closed, fullyConnected=False, foregroundValue=1)
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(filled)))
    if count < MIN_HEAD_VOXELS:
        raise VolumeError(
            f"no head found in the image ({count} foreground voxels after Otsu); "
            "the series is empty or flat"
        )
    return filled


def scale_intensities(
    pixels: np.ndarray, mask: np.ndarray, params: PreprocessParams, *, clip_top: bool = True
) -> tuple[np.ndarray, tuple[float, float]]:
    """Map the head's percentile window onto the output range, clipped (below only
    with ``clip_top=False``); float32."""
    inside = pixels[mask != 0]
    if inside.size == 0:
        inside = pixels.ravel()
    low, high = (float(v) for v in np.percentile(inside, params.percentiles))
    if not high > low:
        raise VolumeError(
            f"flat intensities in the head (percentiles {params.percentiles} both {low:g}); "
            "the series has no contrast to scale"
        )
    out_min, out_max = params.output_range
    scaled = (pixels.astype(np.float32) - np.float32(low)) * np.float32(
        (out_max - out_min) / (high - low)
    )
    scaled += np.float32(out_min)
    np.clip(scaled, out_min, out_max if clip_top else None, out=scaled)
    return scaled, (low, high)


def _n4(
    image: sitk.Image, small: sitk.Image, small_mask: sitk.Image, params: PreprocessParams
) -> sitk.Image:
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(n) for n in params.n4_iterations])
    n4.SetConvergenceThreshold(params.n4_convergence_threshold)
    small, small_mask = _crop_to_mask(small, small_mask)
    n4.Execute(small, small_mask)
    # the field is smooth: evaluating it on the shrunk grid and interpolating is
    # ~3× faster than evaluating the B-spline on every working voxel (< 1 % apart)
    log_bias = _onto(n4.GetLogBiasFieldAsImage(small), image)
    return sitk.Divide(image, sitk.Exp(log_bias))


def _crop_to_mask(image: sitk.Image, mask: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """Both cut to the mask's bounding box plus a margin: N4's time grows with the image size."""
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    box = stats.GetBoundingBox(1)  # (x, y, z, size x, size y, size z)
    size = image.GetSize()
    lower = [max(int(box[i]) - N4_CROP_MARGIN, 0) for i in range(3)]
    upper = [min(int(box[i] + box[i + 3]) + N4_CROP_MARGIN, int(size[i])) for i in range(3)]
    extent = [hi - lo for lo, hi in zip(lower, upper, strict=True)]
    return sitk.RegionOfInterest(image, extent, lower), sitk.RegionOfInterest(mask, extent, lower)


def _onto(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """``image`` linearly interpolated onto ``reference``'s grid, edges extrapolated."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetUseNearestNeighborExtrapolator(True)
    return resampler.Execute(image)


def _shrink(image: sitk.Image, factor: int) -> sitk.Image:
    if factor == 1:
        return image
    size = image.GetSize()
    factors = [min(factor, int(n)) for n in size]  # never below one voxel on a thin axis
    return sitk.Shrink(image, factors)


def _lap(start: float) -> float:
    return round(time.perf_counter() - start, 4)
