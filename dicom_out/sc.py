"""The heatmap Secondary Captures: one series in the source study, one
single-frame RGB Secondary Capture Image per axial slice through the tumour
(see :mod:`dicom_out.render` for what is drawn).

Single-frame instances rather than one multi-frame object, because every
PACS viewer scrolls a series of Secondary Capture Image Storage instances,
while the multi-frame SC classes are not displayed by many of them. The
images are screenshots, not a calibrated volume: no Pixel Spacing and no
Frame of Reference are claimed, and each instance names the source images
its slice was reformatted from (Source Image Sequence).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, DT, TM

from ai_core.disclaimer import DISCLAIMER_SENTENCE
from ai_core.model.inputs import CropGeometry
from ai_core.model.predict import Prediction
from ai_core.volume import Volume
from dicom_out.context import (
    ALGORITHM_NAME,
    MANUFACTURER,
    SERIES_NUMBER_SC,
    OutputContext,
    OutputError,
    copy_patient_study,
)
from dicom_out.lossy import source_lossy
from dicom_out.planes import AxialPlane, RenderParams
from dicom_out.render import RenderedSlice, render_heatmaps

log = logging.getLogger(__name__)

SERIES_DESCRIPTION = "Grad-CAM heatmap (research use only)"
DERIVATION_DESCRIPTION = (
    "Axial reformat of the contrast-enhanced T1 series with the ki67node Grad-CAM map "
    "(where the MRI's evidence lies, for the class named in the legend), the tumour outline and the prediction burned in. "
    + DISCLAIMER_SENTENCE
)
# PS3.16 DCM 121322: the reference is to an image this one was computed from.
PURPOSE_SOURCE_FOR_PROCESSING = ("121322", "DCM", "Source image for image processing operation")
# Row direction (+column index) and column direction (+row index) of every image.
PATIENT_ORIENTATION = ("L", "P")
INPUT_NAMES = {"mri": "MRI", "characteristics": "radiological characteristics"}


def build_heatmap_scs(ctx: OutputContext, params: RenderParams | None = None) -> list[Dataset]:
    """The heatmap SC instances for ``ctx``; empty when there is no Grad-CAM map to show.

    The same ``ctx`` always gives the same UIDs and the same pixels.
    """
    prediction = ctx.prediction
    if prediction is None or prediction.gradcam_source is None:
        log.debug("no prediction with a Grad-CAM map; no heatmap SC")
        return []
    mask = ctx.analysis.mask_source
    if mask is None:
        raise OutputError("the analysis has a prediction but no tumour mask; cannot draw it")
    try:
        slices = render_heatmaps(
            ctx.volume,
            mask,
            prediction.gradcam_source,
            legend_lines(prediction),
            head_mask=ctx.analysis.working.head_mask_sitk(),
            heat_box=gradcam_box(prediction.crop),
            params=params,
        )
    except ValueError as exc:
        raise OutputError(f"heatmap SC: {exc}") from exc
    out = [_instance(ctx, item) for item in slices]
    log.info("built %d heatmap SC instance(s)", len(out))
    return out


def legend_lines(prediction: Prediction) -> tuple[str, ...]:
    """The prediction, the inputs and the model as lines of text."""
    verdict = "Ki-67 >= 5 %" if prediction.ki67_high else "Ki-67 < 5 %"
    used = [INPUT_NAMES.get(name, name) for name, flag in prediction.inputs_used.items() if flag]
    radiomics = "with radiomics" if prediction.inputs_used.get("radiomics") else "no radiomics"
    model: tuple[str, ...] = (f"Model: {prediction.model_name} {prediction.model_version}",)
    map_line: tuple[str, ...] = ()
    if prediction.map_towards_high is not None:
        shown = "Ki-67 >= 5 %" if prediction.map_towards_high else "Ki-67 < 5 %"
        map_line = (f"Map: MRI evidence for {shown} (Grad-CAM + tumour size/texture)",)
    if prediction.synthetic_model:
        model = (f"{model[0]},", "trained on synthetic data")
    return (
        f"Ki-67 >= 5 %: probability {prediction.probability_output1:.2f} (Output 1) -> "
        f"{verdict} (threshold {prediction.threshold:.2f})",
        f"Output 2 ({radiomics}): probability {prediction.probability_output2:.2f}",
        _risk_line(prediction),
        f"Inputs: {', '.join(used) if used else 'none'}",
        *map_line,
        *model,
    )


def source_slices_used(volume: Volume, plane: AxialPlane) -> tuple[int, ...]:
    """The source z indices whose voxels the plane's linear interpolation reads."""
    rows, cols = plane.grey.shape
    corners = np.array(
        [
            [plane.x0 + c * plane.pixel_mm, plane.y0 + r * plane.pixel_mm, plane.z_mm]
            for r in (0, rows - 1)
            for c in (0, cols - 1)
        ]
    )
    axis = volume.direction[:, 2]
    continuous = (corners - np.asarray(volume.origin)) @ axis / volume.spacing[2]
    lo, hi = float(continuous.min()), float(continuous.max())
    return tuple(k for k in range(volume.shape[0]) if lo - 1.0 + 1e-6 < k < hi + 1.0 - 1e-6)


def gradcam_box(crop: CropGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The LPS corners (voxel edges) of the model's input crop, where Grad-CAM exists."""
    step = crop.spacing_mm
    size_xyz = np.asarray(crop.size[::-1], dtype=float)
    origin = np.asarray(crop.origin, dtype=float)
    return origin - step / 2, origin + (size_xyz - 0.5) * step


def _instance(ctx: OutputContext, item: RenderedSlice) -> Dataset:
    created = ctx.created
    sc = hd.sc.SCImage(
        pixel_array=item.rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=ctx.study_uid,
        series_instance_uid=ctx.sc_series_uid,
        series_number=SERIES_NUMBER_SC,
        sop_instance_uid=ctx.sc_instance_uid(item.number),
        instance_number=item.number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=ALGORITHM_NAME,
        software_versions=ctx.software_version,
        series_description=SERIES_DESCRIPTION,
        patient_orientation=PATIENT_ORIENTATION,
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    copy_patient_study(ctx.first, sc, names=("SpecificCharacterSet", "BodyPartExamined"))
    sc.InstanceCreationDate = DA(created.date())
    sc.InstanceCreationTime = TM(created.time())
    sc.DateOfSecondaryCapture = DA(created.date())
    sc.TimeOfSecondaryCapture = TM(created.time())
    for equipment in sc.get("ContributingEquipmentSequence", []):  # highdicom stamps "now"
        equipment.ContributionDateTime = DT(created)
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    # Once lossy, always lossy (PS3.3 C.7.6.1.1.5): the heatmap shows the source pixels.
    sc.LossyImageCompression = "01" if source_lossy(ctx.source) else "00"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = DERIVATION_DESCRIPTION
    sc.ImageComments = (
        f"Axial slice {item.number} of {item.count} through the tumour at "
        f"z = {item.plane.z_mm:.1f} mm (patient LPS). {DISCLAIMER_SENTENCE}"
    )
    sc.SourceImageSequence = _source_images(ctx, source_slices_used(ctx.volume, item.plane))
    return sc


def _source_images(ctx: OutputContext, z_indices: Sequence[int]) -> DicomSequence:
    """One item per source instance the slice was computed from (frames listed for multi-frame)."""
    classes = {str(ds.SOPInstanceUID): str(ds.SOPClassUID) for ds in ctx.source}
    frames: dict[str, list[int]] = {}
    for z in z_indices:
        uid = ctx.volume.sop_instance_uids[z]
        frames.setdefault(uid, [])
        if ctx.volume.frame_numbers[z] > 0:
            frames[uid].append(ctx.volume.frame_numbers[z])
    items = []
    for uid, numbers in frames.items():
        if uid not in classes:
            raise OutputError(f"source instance {uid} of the volume is not in ctx.source")
        item = Dataset()
        item.ReferencedSOPClassUID = classes[uid]
        item.ReferencedSOPInstanceUID = uid
        if numbers:
            item.ReferencedFrameNumber = sorted(numbers)
        purpose = Dataset()
        purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = (
            PURPOSE_SOURCE_FOR_PROCESSING
        )
        item.PurposeOfReferenceCodeSequence = [purpose]
        items.append(item)
    return DicomSequence(items)


def _risk_line(prediction: Prediction) -> str:
    """The growth-risk group, with the Output 1 threshold that set it when it is not the class's."""
    group = f"Growth-risk group: {prediction.risk_group}"
    t = prediction.risk_threshold
    if t is None:
        return group
    sign = ">=" if prediction.probability_output1 >= t else "<"
    return f"{group} (Output 1 {sign} {t:.2f})"
