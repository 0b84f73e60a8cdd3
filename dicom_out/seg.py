"""The tumour mask as a DICOM Segmentation (BINARY, one "Meningioma" segment).

The mask (``analysis.mask_source``) lies on the source series' own slices,
indexed like ``volume.array``: z index ``k`` is source instance
``volume.sop_instance_uids[k]`` (classic series) or source frame
``volume.frame_numbers[k]`` (Enhanced MR). highdicom derives each SEG frame's
position, orientation and DerivationImageSequence from the source image it is
paired with, so the pairing below is what makes the geometry exact:

- classic single-frame series: the source images are passed in volume z order,
  one mask slice per image;
- Enhanced MR (one multi-frame image): the mask is laid out in the source's
  frame order (frame ``n`` at index ``n - 1``), whatever order the volume
  sorted the frames in.

Empty frames are omitted; the SEG references the source series and its Frame
of Reference; patient and study come from the source.
"""

from __future__ import annotations

import copy
import datetime as dt
import logging

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from ai_core.disclaimer import DISCLAIMER_SENTENCE
from ai_core.volume import Volume
from dicom_out import codes
from dicom_out.context import (
    ALGORITHM_NAME,
    MANUFACTURER,
    SERIES_NUMBER_SEG,
    OutputContext,
    OutputError,
    copy_patient_study,
    derived_uid,
)

log = logging.getLogger(__name__)

SEGMENT_NUMBER = 1
SEGMENT_LABEL = "Meningioma"
CONTENT_LABEL = "MENINGIOMA"  # CS, at most 16 characters
SERIES_DESCRIPTION = "Meningioma SEG (AI) - research use only"
CONTENT_DESCRIPTION = "Automatic meningioma segmentation; research use only"
DISPLAY_RGB = (255, 128, 0)  # orange: stands out on grey MR in any viewer
INSTANCE_NUMBER = 1


def tracking_uid(ctx: OutputContext) -> str:
    """The tumour's tracking UID: the same for every revision of the series' analysis.

    SEG segment and SR measurement group carry it, so a viewer can follow the
    one meningioma of a series across amended reports.
    """
    return derived_uid("tracking", ctx.source_series_uid, SEGMENT_LABEL)


def segment_description(ctx: OutputContext) -> hd.seg.SegmentDescription:
    """The one segment: a neoplasm of the meninges found by the segmentation backend."""
    seg = ctx.analysis.segmentation
    algorithm = hd.AlgorithmIdentificationSequence(
        name=seg.backend or ALGORITHM_NAME,
        family=codes.ARTIFICIAL_INTELLIGENCE,
        version=seg.version or "unknown",
        source=MANUFACTURER,
    )
    return hd.seg.SegmentDescription(
        segment_number=SEGMENT_NUMBER,
        segment_label=SEGMENT_LABEL,
        segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
        segmented_property_type=codes.NEOPLASM,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=tracking_uid(ctx),
        tracking_id=SEGMENT_LABEL,
        anatomic_regions=[codes.MENINGES],
        display_color=hd.color.CIELabColor.from_rgb(*DISPLAY_RGB),
    )


def build_seg(ctx: OutputContext) -> Dataset:
    """The SEG of ``ctx``'s tumour mask (a highdicom Segmentation).

    Raises :class:`OutputError` when the analysis found no tumour (send the SR
    alone then) or when the mask does not fit the source series.
    """
    mask = _mask(ctx)
    source_images, pixels = _arrange(ctx, mask)
    created = ctx.created
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(ctx)],
        series_instance_uid=ctx.seg_series_uid,
        series_number=SERIES_NUMBER_SEG,
        sop_instance_uid=ctx.seg_instance_uid,
        instance_number=INSTANCE_NUMBER,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=ctx.software_version,
        device_serial_number=ctx.software_version,
        content_description=CONTENT_DESCRIPTION,
        content_label=CONTENT_LABEL,
        omit_empty_frames=True,
        series_description=SERIES_DESCRIPTION,
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    copy_patient_study(ctx.first, seg)
    _pin_dimension_organization(seg, ctx.uid("seg", "dimension-organization"))
    pin_creation_times(seg, created)
    log.info(
        "SEG built: %d frames of %d source slices (%s)",
        int(seg.NumberOfFrames),
        mask.shape[0],
        DISCLAIMER_SENTENCE,
    )
    return seg


def pin_creation_times(ds: Dataset, created: dt.datetime) -> None:
    """Stamp the job's time where highdicom used the clock, so a retry gives the same bytes."""
    ds.InstanceCreationDate = created.strftime("%Y%m%d")
    ds.InstanceCreationTime = created.strftime("%H%M%S")
    for item in ds.get("ContributingEquipmentSequence") or []:
        if "ContributionDateTime" in item and item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = created.strftime("%Y%m%d%H%M%S")


def _pin_dimension_organization(seg: Dataset, uid: str) -> None:
    """highdicom draws a random Dimension Organization UID; ours derives from the job."""
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in seg.get(keyword) or []:
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = uid


def _mask(ctx: OutputContext) -> np.ndarray:
    analysis = ctx.analysis
    if not analysis.ok or analysis.mask_source is None:
        raise OutputError(
            f"no SEG: the analysis is not assessable ({analysis.reason or 'no tumour mask'}); "
            "send the SR alone, it says why"
        )
    mask: np.ndarray = np.asarray(analysis.mask_source) != 0
    if mask.shape != ctx.volume.shape:
        raise OutputError(
            f"no SEG: the mask has shape {mask.shape} but the source volume {ctx.volume.shape}; "
            "mask_source must lie on the source series' slices"
        )
    if not mask.any():
        raise OutputError("no SEG: the tumour mask is empty; the analysis should be not assessable")
    return mask.astype(np.uint8)


def _arrange(ctx: OutputContext, mask: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    """Source images and the mask frames paired with them (see the module docstring)."""
    volume = ctx.volume
    rows, cols = mask.shape[1:]
    for ds in ctx.source:
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise OutputError(
                f"no SEG: source instance {ds.SOPInstanceUID} is {ds.Rows}x{ds.Columns} "
                f"but the mask slices are {rows}x{cols}"
            )
    if any(volume.frame_numbers):
        return _arrange_multiframe(ctx, mask)
    by_uid = {str(ds.SOPInstanceUID): ds for ds in ctx.source}
    missing = [uid for uid in volume.sop_instance_uids if uid not in by_uid]
    if missing:
        raise OutputError(
            f"no SEG: {len(missing)} slices of the volume are not among the source instances "
            f"(first: {missing[0]}); pass the same instances the volume was loaded from"
        )
    return [_with_slice_thickness(by_uid[uid], volume) for uid in volume.sop_instance_uids], mask


def _with_slice_thickness(ds: Dataset, volume: Volume) -> Dataset:
    """SliceThickness is Type 2 (may be absent or empty) but highdicom needs it for the
    SEG's Pixel Measures: a copy with the slice step of the loaded volume fills the gap."""
    if ds.get("SliceThickness") not in (None, ""):
        return ds
    filled = copy.deepcopy(ds)  # the caller's dataset stays as it was (headers only: small)
    filled.SliceThickness = round(float(volume.spacing[2]), 6)
    return filled


def _arrange_multiframe(ctx: OutputContext, mask: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    volume = ctx.volume
    uids = set(volume.sop_instance_uids)
    if len(uids) != 1 or 0 in volume.frame_numbers:
        raise OutputError(
            "no SEG: the volume mixes instances or single- and multi-frame images; a SEG can "
            "reference one multi-frame image or a set of single-frame images"
        )
    (uid,) = uids
    sources = [ds for ds in ctx.source if str(ds.SOPInstanceUID) == uid]
    if not sources:
        raise OutputError(f"no SEG: the multi-frame source instance {uid} is not in ctx.source")
    source = sources[0]
    n_frames = int(source.get("NumberOfFrames", 1) or 1)
    frames = np.zeros((n_frames, *mask.shape[1:]), dtype=np.uint8)
    for z, number in enumerate(volume.frame_numbers):
        if not 1 <= number <= n_frames:
            raise OutputError(
                f"no SEG: volume slice {z} is frame {number} but the source has {n_frames} frames"
            )
        frames[number - 1] = mask[z]
    return [source], frames
