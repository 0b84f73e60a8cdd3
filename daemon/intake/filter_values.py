"""Reading header values the way the series filter needs them: tolerant of
lists, backslash strings, commas as decimal points and missing values, and
the slice geometry merged over classic instances or multi-frame frames.
Every function here returns something sensible for odd input; none raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from daemon.intake.headers import slice_geometry

_TOKEN = re.compile(r"\+?[a-z0-9]+")


def cs_values(value: Any) -> list[str]:
    """Upper-case values of a CS attribute given as a list or a backslash string."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else re.split(r"[\\\s,/]+", str(value))
    return [str(v).strip().upper() for v in items if str(v).strip()]


def as_text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def as_number(value: Any) -> float | None:
    """A finite number from a number, a numeric string or the first of a list."""
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if value is None or isinstance(value, bool):
        return None
    try:
        number = (
            float(str(value).strip().replace(",", ".")) if isinstance(value, str) else float(value)
        )
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def word_tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("w/o", " without "))


def series_geometry(headers: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Slice geometry of the series: classic instances, or the frames of multi-frames."""
    frames = [h["FrameGeometry"] for h in headers if isinstance(h.get("FrameGeometry"), Mapping)]
    if not frames:
        return slice_geometry(
            (h.get("ImageOrientationPatient") for h in headers),
            (h.get("ImagePositionPatient") for h in headers),
        )
    merged: dict[str, Any] = {"orientations": [], "positions": 0, "invalid": 0}
    for g in frames:
        for o in g.get("orientations") or []:
            if o not in merged["orientations"]:
                merged["orientations"].append(o)
        for key in ("positions", "invalid", "distinct_positions"):
            merged[key] = merged.get(key, 0) + int(as_number(g.get(key)) or 0)
        for key, pick in (("spacing_min", min), ("spacing_max", max)):
            value = as_number(g.get(key))
            if value is not None:
                merged[key] = pick(value, merged.get(key, value))
    return merged


def json_safe(value: Any) -> Any:
    """JSON-safe copy of evidence (non-finite numbers become None)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [json_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
