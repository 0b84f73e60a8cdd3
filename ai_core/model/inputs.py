"""What the Ki-67 model reads, in numpy (no torch): the tumour-centred crop,
the four radiological characteristics and the standardised radiomics.

The crop is cut from the 1 mm working image around the tumour mask, on a
grid aligned with the patient axes (LPS: x to the patient's left, y to
posterior, z to superior) whatever the acquisition plane, so that a sagittal
and an axial T1C give the model the same picture. Its geometry is kept so
that maps computed on the crop (Grad-CAM, attention) go back onto the source
series for the heatmap Secondary Captures.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import SimpleITK as sitk

from ai_core.errors import ModelError
from ai_core.image import Grid, array_to_sitk
from ai_core.model.config import CHARACTERISTICS

if TYPE_CHECKING:
    from ai_core.preprocess import Preprocessed

CHANNELS = ("t1c", "tumour_mask")


@dataclass(frozen=True)
class CropParams:
    """Size and voxel spacing of the tumour-centred crop (stored in the model bundle)."""

    size: tuple[int, int, int] = (64, 64, 64)  # [z, y, x] voxels
    spacing_mm: float = 1.25
    intensity_scale: float = 255.0  # working-image value that becomes 1.0
    #: Crop values are clipped at this (after the division by ``intensity_scale``).
    #: Above 1 the crop reads the working image without its upper clip
    #: (:attr:`ai_core.preprocess.Preprocessed.unclipped`), so that a tumour
    #: brighter than the head's upper percentile keeps its enhancement texture.
    #: Bundles written before this parameter load with 1.0 (their crops unchanged).
    max_value: float = 4.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        if len(self.size) != 3 or any(v < 4 for v in self.size):
            raise ModelError(f"CropParams.size must be three integers >= 4, got {self.size}")
        if not (math.isfinite(self.spacing_mm) and 0.2 <= self.spacing_mm <= 5.0):
            raise ModelError(f"CropParams.spacing_mm must be in [0.2, 5] mm, got {self.spacing_mm}")
        if not self.intensity_scale > 0:
            raise ModelError(f"CropParams.intensity_scale must be > 0, got {self.intensity_scale}")
        if not (math.isfinite(self.max_value) and 1.0 <= self.max_value <= 100.0):
            raise ModelError(f"CropParams.max_value must be in [1, 100], got {self.max_value}")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CropParams:
        unknown = set(data) - {"size", "spacing_mm", "intensity_scale", "max_value"}
        if unknown:
            raise ModelError(f"unknown crop parameter(s): {', '.join(sorted(unknown))}")
        base = cls()
        size = data.get("size", base.size)
        return cls(
            size=(int(size[0]), int(size[1]), int(size[2])),
            spacing_mm=float(data.get("spacing_mm", base.spacing_mm)),
            intensity_scale=float(data.get("intensity_scale", base.intensity_scale)),
            max_value=float(data.get("max_value", 1.0)),  # older bundles: the clipped image
        )


@dataclass(frozen=True)
class CropGeometry:
    """Where the crop lies in patient space: axis-aligned LPS, index ``[z, y, x]``."""

    origin: tuple[float, float, float]  # LPS mm of voxel (x=0, y=0, z=0)
    spacing_mm: float
    size: tuple[int, int, int]  # [z, y, x]

    def grid(self) -> Grid:
        return Grid(self.size, (self.spacing_mm,) * 3, self.origin, np.eye(3))

    def to_dict(self) -> dict[str, Any]:
        return {"origin": list(self.origin), "spacing_mm": self.spacing_mm, "size": list(self.size)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CropGeometry:
        o = data["origin"]
        s = data["size"]
        return cls(
            (float(o[0]), float(o[1]), float(o[2])), float(data["spacing_mm"]), (s[0], s[1], s[2])
        )


@dataclass(frozen=True)
class Characteristics:
    """The radiologist's four radiological characteristics; None = not known.

    ``edema_index`` is (edema + tumour volume) / tumour volume: 1.0 means no
    edema. The others are present (True) or absent (False).
    """

    edema_index: float | None = None
    necrosis: bool | None = None
    csf_cleft: bool | None = None
    capsular_enhancement: bool | None = None

    def __post_init__(self) -> None:
        e = self.edema_index
        if e is not None and not (math.isfinite(e) and 1.0 <= e <= 50.0):
            raise ModelError(
                f"edema_index must be between 1.0 (no edema) and 50, got {e}; it is "
                "(edema + tumour volume) / tumour volume"
            )

    @property
    def any_known(self) -> bool:
        return any(getattr(self, n) is not None for n in CHARACTERISTICS)

    def known(self) -> dict[str, float | bool]:
        return {n: v for n in CHARACTERISTICS if (v := getattr(self, n)) is not None}

    def encode(self) -> tuple[np.ndarray, np.ndarray]:
        """Model values (log edema index; 1/0 for the signs) and the known flags."""
        values = np.zeros(len(CHARACTERISTICS), dtype=np.float32)
        known = np.zeros(len(CHARACTERISTICS), dtype=bool)
        for i, name in enumerate(CHARACTERISTICS):
            v = getattr(self, name)
            if v is None:
                continue
            known[i] = True
            values[i] = math.log(float(v)) if name == "edema_index" else float(bool(v))
        return values, known

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Characteristics:
        """From CSV-like text or JSON values; empty / "unknown" = None."""
        return cls(
            edema_index=_float_or_none(data.get("edema_index"), "edema_index"),
            necrosis=parse_bool(data.get("necrosis"), "necrosis"),
            csf_cleft=parse_bool(data.get("csf_cleft"), "csf_cleft"),
            capsular_enhancement=parse_bool(
                data.get("capsular_enhancement"), "capsular_enhancement"
            ),
        )


_TRUE = {"1", "true", "yes", "y", "present", "t"}
_FALSE = {"0", "false", "no", "n", "absent", "f"}
_UNKNOWN = {"", "unknown", "na", "n/a", "nan", "none", "?"}


def parse_bool(value: Any, name: str) -> bool | None:
    """``yes/no``, ``present/absent``, ``true/false``, ``1/0``; blank or ``unknown`` = None."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and math.isnan(value):
            return None
        if value in (0, 1):
            return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    if text in _UNKNOWN:
        return None
    raise ModelError(f"{name} must be yes/no (or present/absent, true/false, 1/0), got {value!r}")


def _float_or_none(value: Any, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in _UNKNOWN:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"{name} must be a number, got {value!r}") from None
    return None if math.isnan(out) else out


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """One case as the model reads it; None = modality not available."""

    image: np.ndarray | None  # float32 [2, z, y, x]: T1C / intensity_scale, tumour mask
    characteristics: Characteristics = field(default_factory=Characteristics)
    radiomics: np.ndarray | None = None  # standardised z-scores [F], NaN where a feature failed
    crop: CropGeometry | None = None

    @property
    def present(self) -> tuple[bool, bool, bool]:
        """MRI, radiological characteristics, radiomics."""
        return (
            self.image is not None,
            self.characteristics.any_known,
            self.radiomics is not None and bool(np.isfinite(self.radiomics).any()),
        )


def crop_source(working: Preprocessed, params: CropParams) -> np.ndarray:
    """The working image the crop reads: clipped as usual for ``max_value`` 1 (crops
    of older bundles stay bit-identical), else the image without its upper clip."""
    return working.image if params.max_value <= 1.0 else working.image_unclipped


def tumour_crop(
    image_zyx: np.ndarray,
    mask_zyx: np.ndarray,
    grid: Grid,
    params: CropParams,
) -> tuple[np.ndarray, CropGeometry]:
    """The two-channel crop centred on the tumour's bounding box, and its geometry.

    ``image_zyx``/``mask_zyx`` lie on ``grid`` (the working grid). Outside the
    image the crop is 0. Raises :class:`ModelError` for an empty mask.
    """
    if image_zyx.shape != mask_zyx.shape or tuple(image_zyx.shape) != tuple(grid.shape):
        raise ModelError(
            f"image {image_zyx.shape}, mask {mask_zyx.shape} and grid {grid.shape} must match"
        )
    idx = np.argwhere(mask_zyx > 0)
    if len(idx) == 0:
        raise ModelError("the tumour mask is empty: there is nothing to crop around")
    centre_zyx = (idx.min(axis=0) + idx.max(axis=0)) / 2.0
    affine = grid.affine()
    centre_lps = affine[:3, :3] @ centre_zyx[::-1] + affine[:3, 3]
    size_xyz = np.array(params.size[::-1], dtype=float)
    origin = centre_lps - (size_xyz - 1) / 2.0 * params.spacing_mm
    geometry = CropGeometry(
        (float(origin[0]), float(origin[1]), float(origin[2])), params.spacing_mm, params.size
    )
    reference = geometry.grid().blank(sitk.sitkFloat32)
    src = array_to_sitk(
        image_zyx.astype(np.float32, copy=False), grid.spacing, grid.origin, grid.direction
    )
    msk = array_to_sitk(
        mask_zyx.astype(np.float32, copy=False), grid.spacing, grid.origin, grid.direction
    )
    t1c = sitk.GetArrayFromImage(
        sitk.Resample(src, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    tumour = sitk.GetArrayFromImage(
        sitk.Resample(msk, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    )
    t1c = np.clip(t1c / params.intensity_scale, None, params.max_value)
    crop = np.stack([t1c, (tumour >= 0.5).astype(np.float32)])
    return crop.astype(np.float32), geometry


def crop_to_grid(values_zyx: np.ndarray, geometry: CropGeometry, target: Grid) -> np.ndarray:
    """A map on the crop (e.g. Grad-CAM) resampled onto ``target`` (float32 ``[z, y, x]``, 0 outside)."""
    if tuple(values_zyx.shape) != tuple(geometry.size):
        raise ModelError(f"map shape {values_zyx.shape} does not match the crop {geometry.size}")
    g = geometry.grid()
    img = array_to_sitk(values_zyx.astype(np.float32), g.spacing, g.origin, g.direction)
    out = sitk.Resample(
        img,
        target.blank(sitk.sitkFloat32),
        sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkFloat32,
    )
    return sitk.GetArrayFromImage(out)
