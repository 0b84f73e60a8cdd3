"""Synthetic studies: anatomy, tumours, vendor tag profiles and DICOM writing for demos and tests.

``generate_cohort`` is imported lazily so that importing the light modules
(e.g. ``lab.synth.vendors``) does not pull in scipy and nibabel.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CohortSummary", "generate_cohort"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lab.synth import cohort

        return getattr(cohort, name)
    raise AttributeError(f"module 'lab.synth' has no attribute {name!r}")
