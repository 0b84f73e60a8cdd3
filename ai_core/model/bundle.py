"""A model bundle is a folder, loaded by one function (:func:`load_bundle`).

Layout::

    model.json         what the model is: version, what it was trained on,
                       architecture, preprocessing, crop, radiomics parameter
                       file and standardisation, decision threshold, the
                       metrics measured when it was trained, the disclaimer
    weights.pt         the network's state dict (torch.save, loaded with
                       weights_only=True)
    radiomics.yaml     the PyRadiomics parameter file the features came from
    standardiser.json  training mean / standard deviation of every feature

No torch import at module level: the daemon reads ``model.json`` to stamp
outputs without loading the network.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_core.disclaimer import DISCLAIMER
from ai_core.errors import ModelError
from ai_core.model.inputs import CropParams
from ai_core.preprocess import PreprocessParams
from ai_core.radiomics_features import feature_names
from ai_core.radiomics_standardiser import RadiomicsStandardiser

if TYPE_CHECKING:
    import torch

    from ai_core.model.config import ModelConfig
    from ai_core.model.network import CascadedMixingTransformer

BUNDLE_FORMAT = 1
MODEL_NAME = "ki67node-cmmt"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights" / "ki67"
_FILES = ("model.json", "weights.pt", "radiomics.yaml", "standardiser.json")


@dataclass(frozen=True, eq=False)
class ModelBundle:
    """A loaded bundle (network weights are read by :meth:`build_model`)."""

    path: Path
    meta: dict[str, Any]
    config: ModelConfig
    crop: CropParams
    preprocess: PreprocessParams
    radiomics_params: Path
    standardiser: RadiomicsStandardiser
    threshold: float
    version: str
    name: str = MODEL_NAME
    segmentation: dict[str, Any] = field(default_factory=dict)
    growth_risk: dict[str, Any] = field(default_factory=dict)

    @property
    def risk_threshold(self) -> float:
        """Output 1 at or above which a tumour is in the high growth-risk group.

        model.json's ``growth_risk`` block, when present: a threshold chosen on
        a development cohort of small tumours under surveillance, with its
        provenance (``ki67node growth-analysis --adopt-risk-threshold``,
        docs/model.md). Without it, the Ki-67 class threshold.
        """
        return float(self.growth_risk.get("threshold", self.threshold))

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("trained_on", {}).get("synthetic", False))

    def describe(self) -> str:
        """One line for logs and outputs."""
        origin = "trained on synthetic data" if self.synthetic else "site-trained"
        return f"{self.name} {self.version} ({origin}; {DISCLAIMER})"

    def build_model(self, device: str | torch.device = "cpu") -> CascadedMixingTransformer:
        """The network with the bundle's weights, in eval mode on ``device``."""
        import torch

        from ai_core.model.network import CascadedMixingTransformer

        model = CascadedMixingTransformer(self.config)
        weights = self.path / "weights.pt"
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        except (OSError, RuntimeError, EOFError) as exc:
            raise ModelError(
                f"cannot read {weights}: {exc}; reinstall or retrain the bundle"
            ) from exc
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            raise ModelError(
                f"{weights} does not fit the architecture in model.json: {str(exc)[:300]}"
            ) from exc
        model.to(device)
        model.eval()
        return model


def load_bundle(path: Path | str | None = None) -> ModelBundle:
    """Load the bundle in ``path`` (None or "" = the bundled demo model)."""
    from ai_core.model.config import ModelConfig

    folder = Path(path) if path else BUNDLED_DIR
    for name in _FILES:
        if not (folder / name).is_file():
            raise ModelError(
                f"{folder} is not a model bundle: {name} is missing (a bundle is made by "
                "`ki67node train MANIFEST --out MODEL_DIR`)"
            )
    try:
        meta = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {folder / 'model.json'}: {exc}") from exc
    if meta.get("format") != BUNDLE_FORMAT:
        raise ModelError(
            f"{folder / 'model.json'} has format {meta.get('format')!r}; this ki67node reads "
            f"format {BUNDLE_FORMAT}"
        )
    try:
        config = ModelConfig.from_dict(meta["architecture"])
        crop = CropParams.from_dict(meta["crop"])
        preprocess = PreprocessParams(**meta["preprocessing"])
        threshold = float(meta["threshold"])
        version = str(meta["version"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{folder / 'model.json'} is incomplete or invalid: {exc!r}") from exc
    radiomics_params = folder / "radiomics.yaml"
    expected = meta.get("radiomics", {}).get("params_sha256")
    if expected and _sha256(radiomics_params) != expected:
        raise ModelError(f"{radiomics_params} was changed after training (checksum differs)")
    standardiser = RadiomicsStandardiser.load(folder / "standardiser.json")
    if len(standardiser.names) != config.n_radiomics:
        raise ModelError(
            f"standardiser has {len(standardiser.names)} features, the network expects "
            f"{config.n_radiomics}"
        )
    if tuple(standardiser.names) != feature_names(radiomics_params):
        raise ModelError("standardiser.json and radiomics.yaml disagree on the feature list")
    if tuple(crop.size) != tuple(config.crop_size):
        raise ModelError(f"crop size {crop.size} differs from the network's {config.crop_size}")
    if not 0.0 < threshold < 1.0:
        raise ModelError(f"threshold must be a probability in (0, 1), got {threshold}")
    growth_risk = meta.get("growth_risk") or {}
    risk = growth_risk.get("threshold", threshold) if isinstance(growth_risk, dict) else None
    if not isinstance(risk, int | float) or not 0.0 < float(risk) < 1.0:
        raise ModelError(
            f"{folder / 'model.json'}: growth_risk must hold a threshold in (0, 1), got {risk!r}"
        )
    return ModelBundle(
        path=folder,
        meta=meta,
        config=config,
        crop=crop,
        preprocess=preprocess,
        radiomics_params=radiomics_params,
        standardiser=standardiser,
        threshold=threshold,
        version=version,
        name=str(meta.get("name", MODEL_NAME)),
        segmentation=dict(meta.get("segmentation", {})),
        growth_risk=dict(growth_risk),
    )


def save_bundle(
    out_dir: Path,
    *,
    state_dict: dict[str, Any],
    config: ModelConfig,
    crop: CropParams,
    preprocess: PreprocessParams,
    radiomics_params: Path,
    standardiser: RadiomicsStandardiser,
    threshold: float,
    trained_on: dict[str, Any],
    training: dict[str, Any],
    metrics: dict[str, Any],
    segmentation: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
) -> Path:
    """Write a complete bundle into ``out_dir`` (files replaced atomically); return it.

    The version is derived from the weights' checksum, so two different
    trainings never share a version string.
    """
    import torch

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".bundle-") as tmp_name:
        tmp = Path(tmp_name)
        torch.save(state_dict, tmp / "weights.pt")
        shutil.copyfile(radiomics_params, tmp / "radiomics.yaml")
        standardiser.save(tmp / "standardiser.json")
        weights_sha = _sha256(tmp / "weights.pt")
        tag = "synthetic" if trained_on.get("synthetic") else "site"
        meta = {
            "format": BUNDLE_FORMAT,
            "name": MODEL_NAME,
            "version": f"1.0.0+{tag}.{weights_sha[:10]}",
            "description": "cascaded multi-modal mixing Transformer (MRI -> radiological "
            "characteristics -> radiomics) predicting Ki-67 >= 5 % in meningioma",
            "disclaimer": DISCLAIMER,
            "trained_on": trained_on,
            "architecture": config.to_dict(),
            "crop": crop.to_dict(),
            "preprocessing": _json_safe(asdict(preprocess)),
            "radiomics": {
                "params_file": "radiomics.yaml",
                "params_sha256": _sha256(tmp / "radiomics.yaml"),
                "standardiser": "standardiser.json",
                "features": len(standardiser.names),
            },
            "segmentation": segmentation or {"backend": "unet", "model": "bundled"},
            "threshold": float(threshold),
            "training": training,
            "metrics": metrics,
            "weights": {"file": "weights.pt", "sha256": weights_sha},
        }
        (tmp / "model.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        for name, src in (extra_files or {}).items():
            shutil.copyfile(src, tmp / name)
        for item in sorted(tmp.iterdir()):
            os.replace(item, out_dir / item.name)
    return out_dir


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value
