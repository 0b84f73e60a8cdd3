"""All objects for one analysed series, in the order the PACS should receive them.

SEG first (the SR references it), then the heatmap Secondary Captures, then
the SR. When the radiologist's own SEG was used, we send no SEG of ours: the
SR references theirs, which is already in the PACS.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from dicom_out.context import OutputContext
from dicom_out.sc import build_heatmap_scs
from dicom_out.seg import build_seg
from dicom_out.sr import build_sr


def build_outputs(ctx: OutputContext, received_seg: Dataset | None = None) -> list[Dataset]:
    """SEG (unless ``received_seg`` was used), SCs and the SR for ``ctx``."""
    if not ctx.analysis.ok:
        return [build_sr(ctx, None)]
    seg = received_seg if received_seg is not None else build_seg(ctx)
    out: list[Dataset] = [] if received_seg is not None else [seg]
    out += build_heatmap_scs(ctx)
    out.append(build_sr(ctx, seg))
    return out


def kind_of(ds: Dataset) -> str:
    """``seg``, ``sc`` or ``sr`` for an object we built (by its SOP class)."""
    from pydicom.uid import (
        Comprehensive3DSRStorage,
        SecondaryCaptureImageStorage,
        SegmentationStorage,
    )

    kinds: dict[str, str] = {
        SegmentationStorage: "seg",
        SecondaryCaptureImageStorage: "sc",
        Comprehensive3DSRStorage: "sr",
    }
    return kinds.get(str(ds.SOPClassUID), "other")
