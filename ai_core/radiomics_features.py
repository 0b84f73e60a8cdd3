"""Radiomics: the 1218 PyRadiomics features of the source study.

The parameter file (``ai_core/params/radiomics.yaml`` by default; in production
the copy inside the model bundle) defines the image types, the feature classes
and every feature name; :func:`feature_names` derives the full, ordered name
list from it, and :func:`extract_radiomics` always reports against that list:
a feature is either in ``features`` (a finite float) or in ``failed`` (with the
reason), never silently zero-filled.

Arrays follow :mod:`ai_core.volume`: ``image_zyx`` and ``mask_zyx`` are indexed
``[z, y, x]`` and ``spacing`` is in ``(x, y, z)`` order, in millimetres. The
image is expected preprocessed (1 mm isotropic, N4, scaled to [0, 255]); this
module neither resamples nor normalises. Image and mask are cropped to the
mask's bounding box plus a margin wide enough for the largest LoG sigma before
PyRadiomics sees them, so extraction costs seconds, not minutes.

The features' standardisation for the model lives in :mod:`ai_core.radiomics_standardiser`.

PyRadiomics (``pyradiomics-bhklab``) and SimpleITK are imported lazily, so the
name list costs nothing to import.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import AiCoreError

log = logging.getLogger(__name__)

DEFAULT_PARAMS_PATH = Path(__file__).resolve().parent / "params" / "radiomics.yaml"
EXPECTED_FEATURE_COUNT = 1218  # what the shipped parameter file gives (see the YAML header)
SHAPE_CLASS = "shape"
SUPPORTED_IMAGE_TYPES = ("Original", "LoG", "Wavelet")
# crop margin = 6 × the largest LoG sigma: the recursive filter's edge error stays < 0.01 grey
# levels inside the tumour (measured: features within 2e-5 of an 80 mm margin)
LOG_TAIL_SIGMAS = 6.0
WAVELET_MARGIN_VOXELS = 4  # coif1 has 6 taps; wrap padding must stay out of the tumour
# What PyRadiomics, SimpleITK (RuntimeError) and numpy raise when one class or filter fails
_EXTRACTION_ERRORS: tuple[type[Exception], ...] = (
    ArithmeticError,
    AssertionError,
    LookupError,
    RuntimeError,
    TypeError,
)
_EXTRACTION_ERRORS += (ValueError, AttributeError)


class RadiomicsError(AiCoreError):
    """The radiomics configuration or inputs are unusable (not: a feature failed)."""


@dataclass(frozen=True)
class RadiomicsParams:
    """A parsed parameter file: what PyRadiomics needs and the names it must produce."""

    path: Path
    sha256: str
    image_types: dict[str, dict[str, Any]]
    feature_classes: dict[str, tuple[str, ...]]
    settings: dict[str, Any]
    names: tuple[str, ...]
    margin_mm: float


@dataclass(frozen=True)
class RadiomicsResult:
    """Features of one tumour; every name of ``names`` is in exactly one of the two dicts."""

    features: dict[str, float]  # finite values, in the order of ``names``
    failed: dict[str, str]  # name → why it has no value, in the order of ``names``
    names: tuple[str, ...]  # the full list the parameter file defines
    seconds: float
    params_sha256: str

    def vector(self) -> np.ndarray:
        """All features in ``names`` order, ``NaN`` where one failed."""
        return np.array([self.features.get(n, math.nan) for n in self.names], dtype=np.float64)


def load_params(params_path: Path | str | None = None) -> RadiomicsParams:
    """Parse and check a PyRadiomics parameter file (the shipped one when ``None``)."""
    path = Path(params_path) if params_path is not None else DEFAULT_PARAMS_PATH
    return _load_params_cached(path.resolve())


@lru_cache(maxsize=8)
def _load_params_cached(path: Path) -> RadiomicsParams:
    if not path.is_file():
        raise RadiomicsError(
            f"radiomics parameter file {path} does not exist; "
            "point the model bundle at a PyRadiomics YAML file"
        )
    data = path.read_bytes()
    extractor = _new_extractor(path)
    image_types = {k: dict(v or {}) for k, v in extractor.enabledImagetypes.items()}
    unsupported = sorted(set(image_types) - set(SUPPORTED_IMAGE_TYPES))
    if unsupported:
        raise RadiomicsError(
            f"radiomics parameter file {path}: image types {unsupported} are not supported; "
            f"use only {list(SUPPORTED_IMAGE_TYPES)}"
        )
    classes: dict[str, tuple[str, ...]] = {}
    for cls, feats in extractor.enabledFeatures.items():
        if not feats:
            raise RadiomicsError(
                f"radiomics parameter file {path}: feature class {cls!r} must list its "
                "features explicitly, so that names and count do not change with the "
                "PyRadiomics version"
            )
        classes[cls] = tuple(feats)
    settings = dict(extractor.settings)
    sigmas = [float(s) for s in image_types.get("LoG", {}).get("sigma", [])]
    margin_mm = LOG_TAIL_SIGMAS * max(sigmas, default=0.0)
    names = _names(image_types, classes)
    if len(set(names)) != len(names):
        raise RadiomicsError(f"radiomics parameter file {path} lists a feature twice")
    return RadiomicsParams(
        path=path,
        sha256=hashlib.sha256(data).hexdigest(),
        image_types=image_types,
        feature_classes=classes,
        settings=settings,
        names=names,
        margin_mm=margin_mm,
    )


def feature_names(params_path: Path | str | None = None) -> tuple[str, ...]:
    """Every feature name the parameter file defines, in the canonical order."""
    return load_params(params_path).names


def _image_type_names(image_types: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """PyRadiomics' names of the derived images, in a fixed order (original, LoG, wavelet)."""
    out: list[str] = []
    if "Original" in image_types:
        out.append("original")
    for sigma in image_types.get("LoG", {}).get("sigma", []):
        out.append(f"log-sigma-{str(sigma).replace('.', '-')}-mm-3D")
    if "Wavelet" in image_types:
        wav = image_types["Wavelet"]
        levels = int(wav.get("level", 1))
        bands = ["".join(p) for p in product("LH", repeat=3)][1:]  # LLH ... HHH (pywt order)
        for idx in range(1, levels + 1):
            prefix = "wavelet-" if idx == 1 else f"wavelet{idx}-"
            out.extend(prefix + band for band in bands)
        out.append(("wavelet-" if levels == 1 else f"wavelet{levels}-") + "LLL")
    return out


def _names(
    image_types: Mapping[str, Mapping[str, Any]], classes: Mapping[str, Sequence[str]]
) -> tuple[str, ...]:
    names: list[str] = []
    if SHAPE_CLASS in classes and "Original" in image_types:
        names.extend(f"original_{SHAPE_CLASS}_{f}" for f in classes[SHAPE_CLASS])
    for image_name in _image_type_names(image_types):
        for cls, feats in classes.items():
            if not cls.startswith(SHAPE_CLASS):
                names.extend(f"{image_name}_{cls}_{f}" for f in feats)
    return tuple(names)


def _radiomics() -> Any:
    """Import PyRadiomics once; route its log records through ours (no own stderr handler)."""
    import radiomics

    if radiomics.handler in radiomics.logger.handlers:
        # its own stderr handler goes; a NullHandler stays first because PyRadiomics
        # hands ``handlers[0]`` to pykwalify when it reads a parameter file
        radiomics.logger.removeHandler(radiomics.handler)
        radiomics.logger.handlers.insert(0, logging.NullHandler())
        radiomics.logger.setLevel(logging.WARNING)  # it logs every feature class at INFO
    return radiomics


def _new_extractor(path: Path) -> Any:
    _radiomics()
    from radiomics import featureextractor

    try:
        return featureextractor.RadiomicsFeatureExtractor(str(path))
    except Exception as exc:  # pykwalify's SchemaError and friends
        raise RadiomicsError(
            f"radiomics parameter file {path} is not a valid PyRadiomics parameter file: {exc}"
        ) from exc


def _check_inputs(
    image_zyx: np.ndarray, mask_zyx: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float, float]:
    if image_zyx.ndim != 3 or mask_zyx.shape != image_zyx.shape:
        raise RadiomicsError(
            f"image_zyx and mask_zyx must be 3D arrays of one shape, got {image_zyx.shape} "
            f"and {mask_zyx.shape}; resample the mask onto the image grid first"
        )
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
        raise RadiomicsError(f"spacing must be three positive (x, y, z) millimetres, got {spacing}")
    return sp[0], sp[1], sp[2]


def crop_box(
    mask_zyx: np.ndarray, spacing: Sequence[float], margin_mm: float
) -> tuple[slice, slice, slice] | None:
    """The mask's bounding box grown by ``margin_mm`` (+ wavelet taps), clipped; None if empty."""
    nz = np.nonzero(mask_zyx)
    if nz[0].size == 0:
        return None
    spacing_zyx = (spacing[2], spacing[1], spacing[0])
    out = []
    for idx, size, step in zip(nz, mask_zyx.shape, spacing_zyx, strict=True):
        pad = math.ceil(margin_mm / step) + WAVELET_MARGIN_VOXELS
        out.append(slice(max(int(idx.min()) - pad, 0), min(int(idx.max()) + pad + 1, size)))
    return out[0], out[1], out[2]


def extract_radiomics(
    image_zyx: np.ndarray,
    mask_zyx: np.ndarray,
    spacing: Sequence[float],
    params_path: Path | str | None = None,
) -> RadiomicsResult:
    """PyRadiomics features of the tumour ``mask_zyx != 0`` in ``image_zyx``.

    A mask PyRadiomics refuses (empty, one voxel, flat in two axes) is no error:
    every feature is reported in ``failed`` with PyRadiomics' reason. Errors are
    raised only for unusable inputs (shapes, spacing, parameter file).
    """
    start = time.perf_counter()
    params = load_params(params_path)
    sp = _check_inputs(image_zyx, mask_zyx, spacing)
    box = crop_box(mask_zyx, sp, params.margin_mm)
    raw: dict[str, float] = {}
    reasons: dict[str, str] = {}
    if box is None:
        reasons = {n: "mask is empty" for n in params.names}
    else:
        raw, reasons = _run_pyradiomics(image_zyx[box], mask_zyx[box], sp, params)
    unexpected = sorted(set(raw) - set(params.names))
    if unexpected:
        raise RadiomicsError(
            f"PyRadiomics produced features the parameter file does not list "
            f"({unexpected[:3]}...); the installed pyradiomics does not match the "
            "parameter file's naming, install pyradiomics-bhklab 3.1"
        )
    features: dict[str, float] = {}
    failed: dict[str, str] = {}
    for name in params.names:
        if name in raw:
            value = raw[name]
            if math.isfinite(value):
                features[name] = value
            else:
                failed[name] = f"value is {value}"
        else:
            failed[name] = _reason_for(name, reasons)
    seconds = time.perf_counter() - start
    if failed:
        log.info("radiomics: %d of %d features failed", len(failed), len(params.names))
    log.debug("radiomics: %d features in %.1f s", len(features), seconds)
    return RadiomicsResult(features, failed, params.names, seconds, params.sha256)


def _reason_for(name: str, reasons: Mapping[str, str]) -> str:
    if name in reasons:
        return reasons[name]
    image_type = name.split("_", 1)[0]
    return reasons.get(image_type, "not computed by PyRadiomics (see its log)")


def _run_pyradiomics(
    image: np.ndarray,
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    params: RadiomicsParams,
) -> tuple[dict[str, float], dict[str, str]]:
    """Raw values by name, and reasons keyed by feature name or image-type name."""
    _radiomics()
    import SimpleITK as sitk
    from radiomics import imageoperations

    sitk_image = sitk.GetImageFromArray(np.ascontiguousarray(image, dtype=np.float64))
    sitk_mask = sitk.GetImageFromArray(np.ascontiguousarray(mask != 0, dtype=np.uint8))
    for img in (sitk_image, sitk_mask):
        img.SetSpacing(spacing)
    extractor = _new_extractor(params.path)
    settings = dict(extractor.settings)
    try:
        bbox, corrected = imageoperations.checkMask(sitk_image, sitk_mask, **settings)
    except ValueError as exc:
        return {}, {n: f"mask refused: {exc}" for n in params.names}
    if corrected is not None:
        sitk_mask = corrected
    raw: dict[str, float] = {}
    reasons: dict[str, str] = {}
    try:
        raw.update(_floats(extractor.computeShape(sitk_image, sitk_mask, bbox, **settings)))
    except _EXTRACTION_ERRORS as exc:  # one failing class must not cost the other 1204
        log.warning("radiomics: shape features failed: %s", exc)
        reasons.update({n: f"shape failed: {exc}" for n in params.names if "_shape_" in n})
    for image_type, custom in params.image_types.items():
        args = {**settings, **custom}
        generator = getattr(imageoperations, f"get{image_type}Image")(sitk_image, sitk_mask, **args)
        for derived, type_name, kwargs in _guarded(generator, image_type, reasons):
            cropped, cropped_mask = imageoperations.cropToTumorMask(derived, sitk_mask, bbox)
            try:
                computed = extractor.computeFeatures(cropped, cropped_mask, type_name, **kwargs)
            except _EXTRACTION_ERRORS as exc:
                log.warning("radiomics: %s features failed: %s", type_name, exc)
                reasons[type_name] = f"{type_name} failed: {exc}"
                continue
            raw.update(_floats(computed))
    return raw, reasons


def _guarded(generator: Iterator[Any], image_type: str, reasons: dict[str, str]) -> Iterator[Any]:
    """Yield derived images until the filter itself raises; record why the rest is missing."""
    try:
        yield from generator
    except _EXTRACTION_ERRORS as exc:
        log.warning("radiomics: %s filter failed: %s", image_type, exc)
        reasons[image_type] = f"{image_type} filter failed: {exc}"


def _floats(values: Mapping[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, value in values.items():
        try:
            out[name] = float(value)
        except (TypeError, ValueError):
            out[name] = math.nan
    return out
