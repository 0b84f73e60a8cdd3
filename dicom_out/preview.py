"""Look at a SEG the way a viewer would: read it back, place it, draw it.

:func:`seg_mask_on_volume` reads the SEG with highdicom and puts every frame
on the source volume by the frame's own geometry (ImagePositionPatient,
ImageOrientationPatient, PixelSpacing), never by trusting frame order or the
in-memory mask: a SEG that a viewer would misplace is misplaced here too.

:func:`seg_overlay_png` renders three orthogonal planes (axial, coronal,
sagittal) through the segment's centroid in radiological convention (patient
right on the image left; superior/anterior up), the T1C in grey with the SEG
outline in the SEG's recommended display colour, orientation letters on
every edge and a "research use only" footer. For developers and tests, not
for the PACS. An oblique series is shown along its nearest patient axes; the
caption says so.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from scipy import ndimage as ndi

from ai_core.volume import Volume
from dicom_out.context import OutputError

log = logging.getLogger(__name__)

FOOTER_TEXT = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
LETTER_RGB = (255, 255, 0)
TEXT_RGB = (235, 235, 235)
FALLBACK_OUTLINE_RGB = (255, 128, 0)
SEPARATOR_RGB = (90, 90, 90)
GRID_TOLERANCE = 0.05  # voxels: farther off the source grid is logged as a misfit


@dataclass(frozen=True)
class PreviewParams:
    """Layout of the preview PNG (pixels) and the grey window (percentiles)."""

    panel_px: int = 360
    header_px: int = 34
    footer_px: int = 40
    outline_px: int = 2
    window_percentiles: tuple[float, float] = (1.0, 99.5)

    def __post_init__(self) -> None:
        if self.panel_px < 64 or self.header_px < 0 or self.footer_px < 16:
            raise ValueError("PreviewParams: panel_px >= 64, header_px >= 0, footer_px >= 16")
        if not 1 <= self.outline_px <= 8:
            raise ValueError(f"PreviewParams.outline_px must be 1..8, got {self.outline_px}")
        low, high = self.window_percentiles
        if not 0.0 <= low < high <= 100.0:
            raise ValueError("PreviewParams.window_percentiles must be 0 <= low < high <= 100")

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the PNG."""
        return 3 * self.panel_px, self.header_px + self.panel_px + self.footer_px


def read_back(seg: Dataset) -> hd.seg.Segmentation:
    """``seg`` written to bytes and read again with highdicom (what a receiver sees)."""
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    return hd.seg.segread(buffer)


def seg_mask_on_volume(
    seg: Dataset, volume: Volume, segment_number: int | None = None
) -> np.ndarray:
    """The segment (default: the first) as uint8 ``[z, y, x]`` on ``volume``, placed by geometry."""
    segmentation = seg if isinstance(seg, hd.seg.Segmentation) else read_back(seg)
    numbers = list(segmentation.segment_numbers)
    number = numbers[0] if segment_number is None else segment_number
    if number not in numbers:
        raise OutputError(f"segment {number} is not in the SEG (it has {numbers})")
    seg_for = str(segmentation.get("FrameOfReferenceUID", ""))
    if volume.frame_of_reference_uid and seg_for and seg_for != volume.frame_of_reference_uid:
        raise OutputError("the SEG's Frame of Reference is not the volume's; it cannot be placed")
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    to_index = np.linalg.inv(volume.affine())
    out = np.zeros(volume.shape, dtype=np.uint8)
    worst = 0.0
    for i, group in enumerate(segmentation.PerFrameFunctionalGroupsSequence):
        if (
            int(_functional(group, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber)
            != number
        ):
            continue
        frame = np.asarray(segmentation.get_stored_frame(i + 1)) != 0
        rows, cols = np.nonzero(frame)
        if rows.size == 0:
            continue
        position = np.asarray(
            _functional(group, shared, "PlanePositionSequence").ImagePositionPatient, float
        )
        cosines = np.asarray(
            _functional(group, shared, "PlaneOrientationSequence").ImageOrientationPatient, float
        )
        d_row, d_col = (
            float(v) for v in _functional(group, shared, "PixelMeasuresSequence").PixelSpacing
        )
        points = (
            position + np.outer(cols * d_col, cosines[:3]) + np.outer(rows * d_row, cosines[3:])
        )
        index = points @ to_index[:3, :3].T + to_index[:3, 3]  # (x, y, z), continuous
        rounded = np.rint(index).astype(int)
        worst = max(worst, float(np.abs(index - rounded).max()))
        zyx = rounded[:, ::-1]
        inside = np.all((zyx >= 0) & (zyx < np.asarray(volume.shape)), axis=1)
        out[tuple(zyx[inside].T)] = 1
    if worst > GRID_TOLERANCE:
        log.warning("SEG frames lie up to %.2f voxels off the volume grid (nearest used)", worst)
    return out


def outline_rgb(seg: Dataset, segment_number: int = 1) -> tuple[int, int, int]:
    """The segment's recommended display colour as RGB (a fallback colour if it has none)."""
    for item in seg.get("SegmentSequence") or []:
        value = item.get("RecommendedDisplayCIELabValue")
        if int(item.SegmentNumber) == segment_number and value:
            return hd.color.CIELabColor.from_dicom_value([int(v) for v in value]).to_rgb(clip=True)
    return FALLBACK_OUTLINE_RGB


def seg_overlay_png(
    seg: Dataset, volume: Volume, out: Path, params: PreviewParams | None = None
) -> Path:
    """Write the three-plane overlay of ``seg`` on ``volume`` to ``out`` (a PNG); return ``out``."""
    params = params or PreviewParams()
    segmentation = read_back(seg)
    number = int(segmentation.segment_numbers[0])
    mask = seg_mask_on_volume(segmentation, volume, number)
    if not mask.any():
        raise OutputError("the SEG's segment lands on no voxel of the volume; nothing to show")
    image, mask_p, spacing, flips = _to_patient_axes(volume, mask)
    centre = np.rint(np.argwhere(mask_p).mean(axis=0)).astype(int)
    low, high = np.percentile(image, params.window_percentiles)
    grey = np.clip((image - low) / max(high - low, 1e-6), 0.0, 1.0)
    colour = outline_rgb(segmentation, number)
    canvas = Image.new("RGB", params.size, (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    world = _centre_mm(volume, mask)
    for k, (name, plane, plane_mask, size_mm, letters, where) in enumerate(
        _planes(grey, mask_p, spacing, centre, world)
    ):
        x0 = k * params.panel_px
        panel = _panel(plane, plane_mask, size_mm, colour, params)
        canvas.paste(panel, (x0, params.header_px))
        _letters(draw, letters, x0, params)
        caption = f"{name} at {where}"
        draw.text((x0 + 6, params.header_px + 4), caption, fill=TEXT_RGB, font=_font(14))
        if k:
            draw.line(
                [(x0, params.header_px), (x0, params.header_px + params.panel_px)],
                fill=SEPARATOR_RGB,
                width=2,
            )
    label = str(segmentation.SegmentSequence[0].get("SegmentLabel", "segment"))
    oblique = " (oblique series: nearest patient axes)" if volume.plane() == "oblique" else ""
    title = f"SEG '{label}' placed by its own geometry on the source series{oblique}"
    draw.text((8, 8), title, fill=TEXT_RGB, font=_font(16))
    _footer(draw, f"SEG segment {number} '{label}'", colour, params)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    log.debug("SEG preview written to %s (flips %s)", out, flips)
    return out


# -- helpers ------------------------------------------------------------------------
def _functional(group: Dataset, shared: Dataset, keyword: str) -> Dataset:
    for source in (group, shared):
        items = source.get(keyword)
        if items:
            item: Dataset = items[0]
            return item
    raise OutputError(f"the SEG frame has no {keyword} (per-frame or shared); it cannot be placed")


def _to_patient_axes(
    volume: Volume, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[bool, bool, bool]]:
    """Image and mask as ``[x, y, z]`` along LPS (index grows to L, P, S), with spacing."""
    image = np.asarray(volume.array, dtype=np.float32).transpose(2, 1, 0)  # [x, y, z] of index
    data = mask.transpose(2, 1, 0)
    axes = [int(np.argmax(np.abs(volume.direction[:, i]))) for i in range(3)]
    if sorted(axes) != [0, 1, 2]:
        raise OutputError("the series' axes do not map to distinct patient axes; cannot preview")
    order = [axes.index(a) for a in range(3)]  # index axis showing patient axis a
    image, data = image.transpose(order), data.transpose(order)
    spacing = np.asarray(volume.spacing, float)[order]
    flips = tuple(bool(volume.direction[a, order[a]] < 0) for a in range(3))
    for a, flip in enumerate(flips):
        if flip:
            image, data = np.flip(image, a), np.flip(data, a)
    return image, data, spacing, (flips[0], flips[1], flips[2])


def _centre_mm(volume: Volume, mask: np.ndarray) -> np.ndarray:
    zyx = np.argwhere(mask).mean(axis=0)
    centre: np.ndarray = (volume.affine() @ np.array([zyx[2], zyx[1], zyx[0], 1.0]))[:3]
    return centre


_Plane = tuple[str, np.ndarray, np.ndarray, tuple[float, float], tuple[str, ...], str]


def _planes(
    grey: np.ndarray, mask: np.ndarray, spacing: np.ndarray, centre: np.ndarray, world: np.ndarray
) -> list[_Plane]:
    """(name, plane, mask, (width mm, height mm), letters T/B/L/R, position) per panel."""
    cx, cy, cz = centre
    sx, sy, sz = spacing
    # Radiological display: rows top→bottom, columns left→right as named by the letters.
    nx, ny, nz = grey.shape
    return [
        (
            "Axial",
            grey[:, :, cz].T,
            mask[:, :, cz].T,
            (nx * sx, ny * sy),
            ("A", "P", "R", "L"),
            _mm("S", "I", world[2]),
        ),
        (
            "Coronal",
            grey[:, cy, :].T[::-1],
            mask[:, cy, :].T[::-1],
            (nx * sx, nz * sz),
            ("S", "I", "R", "L"),
            _mm("P", "A", world[1]),
        ),
        (
            "Sagittal",
            grey[cx, :, :].T[::-1],
            mask[cx, :, :].T[::-1],
            (ny * sy, nz * sz),
            ("S", "I", "A", "P"),
            _mm("L", "R", world[0]),
        ),
    ]


def _mm(positive: str, negative: str, value: float) -> str:
    return f"{positive if value >= 0 else negative} {abs(value):.1f} mm"


def _panel(
    plane: np.ndarray,
    plane_mask: np.ndarray,
    size_mm: tuple[float, float],
    colour: tuple[int, int, int],
    params: PreviewParams,
) -> Image.Image:
    """One panel: the plane scaled to fit with true mm aspect, outline painted exactly."""
    side = params.panel_px
    scale = side / max(size_mm)
    width = max(1, round(size_mm[0] * scale))
    height = max(1, round(size_mm[1] * scale))
    grey = Image.fromarray(np.ascontiguousarray(plane * 255.0).astype(np.uint8), "L")
    grey = grey.resize((width, height), Image.Resampling.BILINEAR)
    inside = Image.fromarray(np.ascontiguousarray(plane_mask, dtype=np.uint8) * 255, "L")
    inside_up = np.asarray(inside.resize((width, height), Image.Resampling.NEAREST)) > 0
    rgb = np.repeat(np.asarray(grey)[:, :, None], 3, axis=2)
    edge = inside_up & ~ndi.binary_erosion(inside_up, iterations=params.outline_px)
    rgb[edge] = colour
    panel = Image.new("RGB", (side, side), (0, 0, 0))
    panel.paste(Image.fromarray(rgb, "RGB"), ((side - width) // 2, (side - height) // 2))
    return panel


def _letters(
    draw: ImageDraw.ImageDraw, letters: tuple[str, ...], x0: int, p: PreviewParams
) -> None:
    top, bottom, left, right = letters
    font = _font(18)
    y0, side = p.header_px, p.panel_px
    draw.text((x0 + side / 2, y0 + 14), top, fill=LETTER_RGB, font=font, anchor="mm")
    draw.text((x0 + side / 2, y0 + side - 14), bottom, fill=LETTER_RGB, font=font, anchor="mm")
    draw.text((x0 + 12, y0 + side / 2), left, fill=LETTER_RGB, font=font, anchor="mm")
    draw.text((x0 + side - 12, y0 + side / 2), right, fill=LETTER_RGB, font=font, anchor="mm")


def _footer(
    draw: ImageDraw.ImageDraw, what: str, colour: tuple[int, int, int], p: PreviewParams
) -> None:
    """The disclaimer, then a swatch of the outline colour and what it shows."""
    y = p.size[1] - p.footer_px + 10
    font = _font(16)
    draw.text((8, y), FOOTER_TEXT, fill=TEXT_RGB, font=font)
    x = 8 + int(font.getlength(FOOTER_TEXT)) + 24
    draw.rectangle([(x, y + 2), (x + 22, y + 16)], outline=colour, width=p.outline_px)
    draw.text((x + 30, y), f"outline = {what}", fill=TEXT_RGB, font=font)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)
