"""The Ki-67 model: a cascaded multi-modal Transformer, its bundle and inference.

``__all__`` names the submodules ``daemon`` and ``dicom_out`` may import:
:mod:`~ai_core.model.bundle` (the model folder and the bundled one),
:mod:`~ai_core.model.inputs` (characteristics, crops) and
:mod:`~ai_core.model.predict` (the predictor and its prediction). Its training
is research tooling and lives in :mod:`lab.model`.
"""

__all__ = ["bundle", "inputs", "predict"]
