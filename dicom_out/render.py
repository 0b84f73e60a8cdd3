"""The heatmap images: axial reformats through the tumour with the Grad-CAM
overlay, the tumour outline and the legend burned in (pixels only, no DICOM).

Every image is an axial plane in radiological convention (the patient's
right on the image's left, anterior at the top), whatever the plane of the
source series; :mod:`dicom_out.planes` chooses and reformats the planes.

Each image, top to bottom: a warning banner ("RESEARCH USE ONLY - NOT FOR
DIAGNOSTIC USE"), the image with the orientation letters in a black margin
around it (no text on the anatomy), then the colour bar and the prediction.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from ai_core.volume import Volume
from dicom_out.planes import AxialPlane, RenderParams, axial_planes, plane_grid, resample

BANNER_TEXT = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
COLOURBAR_TITLE = "Grad-CAM: MRI evidence for the class named below, low -> high"
OUTLINE_RGB = (0, 255, 255)  # cyan: no heat colour (dark red .. yellow) has blue in it
HALO_RGB = (0, 0, 0)
BOX_RGB = (190, 140, 255)  # violet, dashed: where the map was computed
DASH_PX = 8
BOX_KEY = "map computed inside this box only"
BANNER_RGB = (255, 191, 0)
TEXT_RGB = (235, 235, 235)
LETTER_RGB = (255, 255, 0)
# Heat colour map, value -> RGB: dark red, red, orange, yellow (saturated to the top,
# so the hottest part stays visible on bright, enhancing tissue).
HEAT_STOPS = (
    (0.0, (120, 0, 0)),
    (0.35, (220, 0, 0)),
    (0.65, (255, 120, 0)),
    (1.0, (255, 235, 0)),
)


@dataclass(frozen=True, eq=False)
class RenderedSlice:
    """One finished image and where its parts are."""

    rgb: np.ndarray  # uint8 [height, width, 3]
    plane: AxialPlane
    number: int  # 1-based, inferior to superior
    count: int
    panel: tuple[int, int, int, int]  # (top, left, height, width) of the anatomy in rgb
    lines: tuple[str, ...]  # the text under the colour bar


def render_heatmaps(
    volume: Volume,
    mask_zyx: np.ndarray,
    heat_zyx: np.ndarray,
    legend: tuple[str, ...],
    *,
    head_mask: sitk.Image | None = None,
    heat_box: tuple[np.ndarray, np.ndarray] | None = None,
    params: RenderParams | None = None,
) -> list[RenderedSlice]:
    """The annotated axial images through the tumour, inferior to superior.

    ``mask_zyx`` and ``heat_zyx`` lie on the volume's grid; ``head_mask``
    (any grid) selects the voxels the grey window is taken from; ``legend``
    is the text under the colour bar; the slice position is added to it.
    ``heat_box`` (LPS low and high corners) is where the map was computed
    (the model's input crop): drawn dashed, so its straight edges are not
    mistaken for anatomy, and "no map outside" is not read as "low".
    """
    params = params or RenderParams()
    planes = axial_planes(volume, mask_zyx, heat_zyx, heat_box=heat_box, params=params)
    window = grey_window(planes, head_mask, params)
    out = []
    for number, plane in enumerate(planes, start=1):
        lines = (*legend, f"Axial slice {number} of {len(planes)}, z = {_z_label(plane.z_mm)}")
        rgb, panel = draw_image(plane, window, lines, params)
        out.append(RenderedSlice(rgb, plane, number, len(planes), panel, lines))
    return out


def grey_window(
    planes: list[AxialPlane],
    head_mask: sitk.Image | None,
    params: RenderParams,
) -> tuple[float, float]:
    """(low, high) grey values from percentiles of the head on the shown planes.

    The top is raised to the tumour's own upper percentile when that is
    brighter, so an enhancing tumour is not a flat white (which would also
    hide the pale top of the heat colours).
    """
    head = None if head_mask is None else sitk.Cast(head_mask != 0, sitk.sitkUInt8)
    values = []
    for plane in planes:
        inside = np.ones(plane.grey.shape, bool)
        if head is not None:
            inside = resample(head, plane_grid(plane, plane.z_mm))[0] >= 0.5
        values.append(plane.grey[inside])
    pooled = np.concatenate(values)
    if pooled.size < 100:  # no head mask (or none on these planes): the non-background
        pooled = np.concatenate([p.grey.ravel() for p in planes])
        pooled = pooled[pooled > 0.1 * np.percentile(pooled, 99)]
    lo, hi = (float(v) for v in np.percentile(pooled, params.window_percentiles))
    tumour = np.concatenate([p.grey[p.mask != 0] for p in planes])
    if tumour.size:
        hi = max(hi, float(np.percentile(tumour, params.window_percentiles[1])))
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi


def _z_label(z: float) -> str:
    """LPS z as a viewer shows it: ``S 12.0 mm`` above the origin, ``I 3.5 mm`` below."""
    return f"{'S' if z >= 0 else 'I'} {abs(z):.1f} mm"


# -- drawing ------------------------------------------------------------------
def heat_colours(values: np.ndarray) -> np.ndarray:
    """The heat colour map: float [0, 1] → float RGB [0, 255], shape ``(*values.shape, 3)``."""
    stops = np.array([s for s, _ in HEAT_STOPS])
    colours = np.array([c for _, c in HEAT_STOPS], dtype=float)
    v = np.clip(values, 0.0, 1.0)
    return np.stack([np.interp(v, stops, colours[:, i]) for i in range(3)], axis=-1)


def heat_alpha(values: np.ndarray, params: RenderParams) -> np.ndarray:
    """Overlay opacity: 0 up to ``heat_floor``, rising to ``heat_alpha`` at ``heat_full``."""
    ramp = (np.clip(values, 0.0, 1.0) - params.heat_floor) / (params.heat_full - params.heat_floor)
    alpha: np.ndarray = np.clip(ramp, 0.0, 1.0) * params.heat_alpha
    return alpha


def draw_image(
    plane: AxialPlane,
    window: tuple[float, float],
    lines: tuple[str, ...],
    params: RenderParams,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The finished RGB image of one plane and the (top, left, height, width) of its anatomy."""
    panel, box_shown = anatomy_panel(plane, window, params)
    width, height = panel.size
    body = _font(max(15, round(width / 36)))
    big = _font(max(20, round(width / 26)))
    margin = round(body.size * 1.8)
    canvas_w = width + 2 * margin
    wrapped = [part for line in lines for part in _wrap(line, body, canvas_w - 2 * margin)]
    line_h = round(body.size * 1.35)
    banner_h = round(big.size * 2.0)
    bar_block = round(body.size * 5.4)
    info_h = bar_block + line_h * len(wrapped) + margin // 2
    canvas_h = banner_h + height + 2 * margin + info_h
    canvas = Image.new("RGB", (canvas_w, canvas_h), (0, 0, 0))
    top = banner_h + margin
    canvas.paste(panel, (margin, top))
    draw = ImageDraw.Draw(canvas)

    draw.rectangle((0, 0, canvas_w - 1, banner_h - 1), fill=BANNER_RGB)
    banner_font = _fitting_font(BANNER_TEXT, round(big.size), canvas_w - margin)
    draw.text(
        (canvas_w / 2, banner_h / 2),
        BANNER_TEXT,
        font=banner_font,
        fill=(0, 0, 0),
        anchor="mm",
        stroke_width=1,
        stroke_fill=(0, 0, 0),
    )
    mid_x, mid_y = margin + width / 2, top + height / 2
    for text, xy in (
        ("A", (mid_x, top - margin / 2)),
        ("P", (mid_x, top + height + margin / 2)),
        ("R", (margin / 2, mid_y)),
        ("L", (margin + width + margin / 2, mid_y)),
    ):
        draw.text(xy, text, font=big, fill=LETTER_RGB, anchor="mm")

    y = top + height + margin + round(body.size * 0.4)
    _colour_bar(canvas, draw, (margin, y, canvas_w - margin), body, params, box_key=box_shown)
    y += bar_block
    for line in wrapped:
        draw.text((margin, y), line, font=body, fill=TEXT_RGB)
        y += line_h
    return np.asarray(canvas, dtype=np.uint8).copy(), (top, margin, height, width)


def anatomy_panel(
    plane: AxialPlane, window: tuple[float, float], params: RenderParams
) -> tuple[Image.Image, bool]:
    """The plane upscaled to ``min_panel_px`` wide (grey, heat, tumour outline, map box),
    and whether a side of the map box lies inside it."""
    rows, cols = plane.grey.shape
    scale = max(1.0, params.min_panel_px / cols)
    width, height = round(cols * scale), round(rows * scale)
    grey = _upscale(plane.grey, width, height, Image.Resampling.BICUBIC)
    grey = np.clip((grey - window[0]) / (window[1] - window[0]), 0.0, 1.0) * 255.0
    heat = np.clip(_upscale(plane.heat, width, height, Image.Resampling.BILINEAR), 0.0, 1.0)
    alpha = heat_alpha(heat, params)[..., None]
    panel = grey[..., None] * (1.0 - alpha) + heat_colours(heat) * alpha
    inside = _upscale(plane.mask.astype(np.float32), width, height, Image.Resampling.BILINEAR)
    inside = inside >= 0.5
    ring = inside & ~ndimage.binary_erosion(inside, iterations=params.outline_px)
    halo = ndimage.binary_dilation(inside) & ~inside  # dark edge: contrast on bright tissue
    panel[halo] = HALO_RGB
    panel[ring] = OUTLINE_RGB
    image = Image.fromarray(np.round(panel).astype(np.uint8), "RGB")
    if plane.heat_box is not None:
        # pixel c of the plane is centred at x0 + c·p and covers [c - ½, c + ½]·scale on screen
        x0, y0, x1, y1 = plane.heat_box
        u0, u1 = (((x - plane.x0) / plane.pixel_mm + 0.5) * scale for x in (x0, x1))
        v0, v1 = (((y - plane.y0) / plane.pixel_mm + 0.5) * scale for y in (y0, y1))
        _dashed_box(ImageDraw.Draw(image), (u0, v0, u1, v1), params.outline_px)
        sides = [0 < u < width for u in (u0, u1)] + [0 < v < height for v in (v0, v1)]
        return image, any(sides)
    return image, False


def _dashed_box(draw: ImageDraw.ImageDraw, box: tuple[float, ...], width: int) -> None:
    """A rectangle of dashes (PIL clips what lies outside the image)."""
    u0, v0, u1, v1 = box
    corners = np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1), (u0, v0)], dtype=float)
    for a, b in itertools.pairwise(corners):
        length = float(np.hypot(*(b - a)))
        for start in np.arange(0.0, length, 2 * DASH_PX):
            p, q = a + (b - a) * start / length, a + (b - a) * min(start + DASH_PX, length) / length
            draw.line((*p, *q), fill=BOX_RGB, width=width)


def _colour_bar(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int],
    font: ImageFont.FreeTypeFont,
    params: RenderParams,
    *,
    box_key: bool,
) -> None:
    """Title, the map as it looks over mid-grey with 'low'/'high', then the line keys."""
    left, y, right = box
    draw.text((left, y), COLOURBAR_TITLE, font=font, fill=TEXT_RGB)
    bar_y = y + round(font.size * 1.4)
    bar_h = round(font.size * 0.9)
    label_w = round(draw.textlength("high", font=font)) + 8
    bar_w = max(64, right - left - 2 * label_w)
    bar_x = left + label_w
    values = np.linspace(0.0, 1.0, bar_w)
    alpha = heat_alpha(values, params)[:, None]
    row = 128.0 * (1.0 - alpha) + heat_colours(values) * alpha
    strip = np.repeat(np.round(row).astype(np.uint8)[None], bar_h, axis=0)
    canvas.paste(Image.fromarray(strip, "RGB"), (bar_x, bar_y))
    draw.rectangle((bar_x - 1, bar_y - 1, bar_x + bar_w, bar_y + bar_h), outline=TEXT_RGB)
    mid = bar_y + bar_h / 2
    draw.text((bar_x - 6, mid), "low", font=font, fill=TEXT_RGB, anchor="rm")
    draw.text((bar_x + bar_w + 6, mid), "high", font=font, fill=TEXT_RGB, anchor="lm")
    key_y = bar_y + bar_h + round(font.size * 1.1)
    draw.line((left, key_y, left + 24, key_y), fill=OUTLINE_RGB, width=3)
    draw.text((left + 30, key_y), "tumour outline", font=font, fill=TEXT_RGB, anchor="lm")
    if not box_key:
        return
    box_x = left + 30 + round(draw.textlength("tumour outline", font=font)) + 24
    _dashed_box(draw, (box_x, key_y - 6, box_x + 24, key_y + 6), 2)
    draw.text((box_x + 30, key_y), BOX_KEY, font=font, fill=TEXT_RGB, anchor="lm")


def _upscale(plane: np.ndarray, width: int, height: int, how: Image.Resampling) -> np.ndarray:
    image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), "F")
    return np.asarray(image.resize((width, height), how), dtype=np.float64)


def _font(size: int) -> ImageFont.FreeTypeFont:
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise RuntimeError("Pillow was built without FreeType; install a Pillow wheel with it")
    return font


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if current and font.getlength(candidate) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    lines.append(current)
    return lines


def _fitting_font(text: str, size: int, width: int) -> ImageFont.FreeTypeFont:
    """The default font at ``size``, smaller where ``text`` would be wider than ``width``."""
    font = _font(size)
    while size > 8 and font.getlength(text) > width:
        size -= 1
        font = _font(size)
    return font
