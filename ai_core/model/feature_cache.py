"""The per-case feature cache: the image pipeline's result for each manifest case.

Running the image pipeline is the slow part (load, N4, segmentation,
radiomics: ~10 s per study on a CPU), so each case's result — the crop, the
raw radiomics, the measurements — is cached as one ``.npz`` keyed by the
inputs and every parameter that changes it (:class:`FeatureParams`).
Training and the repeated evaluation runs then read the cache
(:func:`extract_features`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ai_core.errors import AiCoreError, EvaluationError
from ai_core.model.cases import ManifestCase
from ai_core.model.inputs import CropGeometry, CropParams
from ai_core.preprocess import PreprocessParams

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class FeatureParams:
    """Everything that changes a cached case (part of the cache key)."""

    preprocess: PreprocessParams
    crop: CropParams
    radiomics_params: Path  # the YAML file
    segmentation: str = "unet"  # backend for cases without a mask
    segmentation_model: Path | None = None

    def key_material(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {
            "format": CACHE_FORMAT,
            "preprocess": asdict(self.preprocess),
            "crop": self.crop.to_dict(),
            "radiomics": hashlib.sha256(self.radiomics_params.read_bytes()).hexdigest(),
            "segmentation": self.segmentation,
            "segmentation_model": str(self.segmentation_model or ""),
            "segmentation_fingerprint": model_fingerprint(self.segmentation_model),
        }


def model_fingerprint(folder: Path | None) -> str:
    """What the segmentation model folder holds (the bundled weights when None).

    Cases without a mask are segmented: new weights or post-processing rules
    in the same folder must not reuse their cached features. Small files are
    hashed whole; large ones (nnU-Net checkpoints) by name, size and mtime.
    """
    from ai_core.segmentation.unet import BUNDLED_MODEL_DIR

    root = Path(folder) if folder is not None else BUNDLED_MODEL_DIR
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return _fingerprint(tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))


@functools.lru_cache(maxsize=16)
def _fingerprint(files: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, size, mtime in files:
        digest.update(f"{Path(name).name}\0{size}\0".encode())
        if size <= 8 * 1024 * 1024:
            digest.update(Path(name).read_bytes())
        else:
            digest.update(str(mtime).encode())
    return digest.hexdigest()[:20]


@dataclass(frozen=True, eq=False)
class CaseFeatures:
    """The image pipeline's result for one case, as the model trainer needs it."""

    case_id: str
    status: str  # "ok" or "not_assessable"
    reason: str
    crop: np.ndarray | None  # float32 [2, z, y, x]
    crop_geometry: CropGeometry | None
    radiomics: np.ndarray | None  # raw values in the parameter file's name order, NaN = failed
    radiomics_names: tuple[str, ...]
    volume_cm3: float | None
    max_diameter_mm: float | None
    location: str | None
    segmentation: str  # which backend made the mask

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def cache_path(cache_dir: Path, case: ManifestCase, params: FeatureParams) -> Path:
    files = sorted(p for p in case.series.rglob("*") if p.is_file())
    material = {
        "params": params.key_material(),
        "series": str(case.series),
        "series_uid": case.series_uid,
        "files": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files],
        "mask": None
        if case.mask is None
        else (str(case.mask), case.mask.stat().st_size, case.mask.stat().st_mtime_ns),
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]
    return cache_dir / f"{_SAFE.sub('_', case.case_id)[:60]}-{key}.npz"


def extract_features(
    cases: Sequence[ManifestCase],
    params: FeatureParams,
    cache_dir: Path,
    *,
    workers: int = 1,
    progress: bool = True,
    device: str = "cpu",
) -> list[CaseFeatures]:
    """Features of every case, from the cache when present, else by running the pipeline.

    ``workers`` > 1 runs cases in parallel processes. A case that cannot be
    analysed comes back ``not_assessable`` with its reason (logged), never
    silently dropped.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = [cache_path(cache_dir, c, params) for c in cases]
    todo = [(c, p) for c, p in zip(cases, paths, strict=True) if not p.exists()]
    if todo:
        log.info(
            "image pipeline on %d of %d cases (%d cached)",
            len(todo),
            len(cases),
            len(cases) - len(todo),
        )
        bar = _bar(len(todo), progress, "features")
        try:
            if workers <= 1:
                for case, path in todo:
                    _extract_to(case, params, path, device)
                    if bar is not None:
                        bar.update(1)
            else:
                ctx = get_context("spawn")
                with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker) as pool:
                    futures = [pool.submit(_extract_to, c, params, p, device) for c, p in todo]
                    for future in futures:
                        future.result()
                        if bar is not None:
                            bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    out = [load_cached(p, c.case_id) for c, p in zip(cases, paths, strict=True)]
    bad = [f for f in out if not f.ok]
    for f in bad:
        log.warning("case %s not assessable: %s", f.case_id, f.reason)
    return out


def _bar(total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="case")


def _init_worker() -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


_BACKENDS: dict[tuple[str, str, str], Any] = {}


def _backend(params: FeatureParams, device: str) -> Any:
    from ai_core.segmentation import make_backend

    key = (params.segmentation, str(params.segmentation_model or ""), device)
    if key not in _BACKENDS:
        _BACKENDS[key] = make_backend(params.segmentation, params.segmentation_model, device=device)
    return _BACKENDS[key]


def series_files(case: ManifestCase) -> list[Path]:
    """The files of the case's series folder (only those of ``series_uid`` when it is set)."""
    files = sorted(p for p in case.series.rglob("*") if p.is_file() and not p.name.startswith("."))
    if case.series_uid is None:
        return files
    import pydicom

    keep = []
    for p in files:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - non-DICOM files in the folder are skipped
            continue
        if str(ds.get("SeriesInstanceUID", "")) == case.series_uid:
            keep.append(p)
    return keep


def _extract_to(case: ManifestCase, params: FeatureParams, path: Path, device: str) -> None:
    from ai_core.analysis import AnalysisOptions, analyse_series
    from ai_core.model.inputs import crop_source, tumour_crop
    from ai_core.radiomics_features import feature_names

    names = feature_names(params.radiomics_params)
    record: dict[str, Any] = {"case_id": case.case_id, "names": json.dumps(list(names))}
    try:
        files = series_files(case)
        if not files:
            raise EvaluationError(f"no files of the series in {case.series}")
        backend = None if case.mask is not None else _backend(params, device)
        analysis = analyse_series(
            files,
            backend,  # type: ignore[arg-type]  # unused when a reference mask is given
            options=AnalysisOptions(
                preprocess=params.preprocess,
                radiomics=True,
                radiomics_params=params.radiomics_params,
            ),
            reference_mask=case.mask,
        )
    except AiCoreError as exc:
        record.update(status="not_assessable", reason=str(exc), segmentation="")
        _save(path, record)
        return
    record["segmentation"] = analysis.segmentation.backend
    if not analysis.ok or analysis.measurements is None or analysis.radiomics is None:
        record.update(status="not_assessable", reason=analysis.reason)
        _save(path, record)
        return
    crop, geometry = tumour_crop(
        crop_source(analysis.working, params.crop),
        analysis.segmentation.mask_zyx,
        analysis.working.grid,
        params.crop,
    )
    m = analysis.measurements
    record.update(
        status="ok",
        reason=analysis.reason,
        crop=crop.astype(np.float16),
        geometry=json.dumps(geometry.to_dict()),
        radiomics=analysis.radiomics.vector(),
        volume_cm3=m.volume_cm3,
        max_diameter_mm=m.max_diameter_mm,
        location=m.location,
    )
    _save(path, record)


def _save(path: Path, record: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **{k: np.asarray(v) for k, v in record.items()})  # type: ignore[arg-type]
    os.replace(tmp, path)


def load_cached(path: Path, case_id: str) -> CaseFeatures:
    with np.load(path, allow_pickle=False) as data:
        status = str(data["status"])
        names = tuple(json.loads(str(data["names"])))
        if status != "ok":
            return CaseFeatures(
                case_id,
                status,
                str(data["reason"]),
                None,
                None,
                None,
                names,
                None,
                None,
                None,
                str(data["segmentation"]),
            )
        return CaseFeatures(
            case_id=case_id,
            status=status,
            reason=str(data["reason"]),
            crop=data["crop"].astype(np.float32),
            crop_geometry=CropGeometry.from_dict(json.loads(str(data["geometry"]))),
            radiomics=data["radiomics"].astype(np.float64),
            radiomics_names=names,
            volume_cm3=float(data["volume_cm3"]),
            max_diameter_mm=float(data["max_diameter_mm"]),
            location=str(data["location"]),
            segmentation=str(data["segmentation"]),
        )
