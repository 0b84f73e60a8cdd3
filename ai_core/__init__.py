"""ai_core: images in, numbers and arrays out. Imports neither daemon, dicom_out nor lab.

``__all__`` is the public face: the submodules ``daemon`` and ``dicom_out``
may import. A subpackage listed here names its own public part in its
``__all__`` (:mod:`ai_core.model`: ``bundle``, ``inputs``, ``predict``;
:mod:`ai_core.segmentation`: the backend interface and ``received_seg``).
Everything else (``preprocess``, ``measure``, the radiomics modules, the
network and its blocks) serves the modules above and the research tooling in
``lab``. tests/test_architecture.py enforces both. Importing ``ai_core``
imports none of its submodules (no torch, SimpleITK or pydicom).
"""

__all__ = ["analysis", "disclaimer", "errors", "image", "model", "segmentation", "volume"]
