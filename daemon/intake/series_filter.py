"""The series filter: is this series a contrast-enhanced 3D MP-RAGE (T1C)?

Decided from the header summaries (:func:`daemon.intake.headers.extract_header`) of
all instances of one series, not from the SeriesDescription alone (DESIGN §4):

1. MR image storage (MR, Enhanced MR, Legacy Converted Enhanced MR), Modality MR;
2. consistent headers, one orientation, no repeated slice positions;
3. an original acquisition: not DERIVED/SECONDARY/MPR/REFORMATTED/PROJECTION,
   not a localizer;
4. MRAcquisitionType 3D;
5. gradient echo (not spin echo: SPACE/CUBE/VISTA FLAIR are 3D spin echo;
   not echo planar) with inversion preparation — Siemens ``['GR','IR']`` +
   ``MP`` (tfl), GE ``IR_GEMS`` + InversionTime (BRAVO/efgre3d), Philips
   ``MP`` (T1TFE), Enhanced MR ``InversionRecovery YES``;
6. T1 weighting (short TE, AcquisitionContrast T1 when given);
7. contrast given: ContrastBolusAgent, ContrastBolusAgentAdministered YES, or a
   configured keyword as a whole token of SeriesDescription/ProtocolName
   ("+C", "KM", "Gd"...); a description that says pre-contrast ("pre",
   "nativ", "ohne KM") overrides an exam-wide agent entry;
8. slice thickness and spacing ≤ the limit; enough slices or frames.

Every check records its evidence in ``details`` (JSON-safe, stored with the
decision); ``reason`` names the first rule that failed.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.uid import UID

from daemon.intake.headers import slice_geometry
from daemon.settings import FilterSettings

MR_STORAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)
REASON_MAX = 255  # series_decisions.reason column
MAX_ECHO_TIME_MS = 10.0  # T1-weighted gradient echo; T2*/SWI are longer
MAX_INVERSION_TIME_MS = 1500.0  # T1 preparation; FLAIR nulls fluid at ~1800-2800 ms
T1_CONTRASTS = frozenset({"T1", "MIXED", "UNKNOWN"})
DERIVED_TERMS = frozenset(
    {"DERIVED", "SECONDARY", "MPR", "REFORMATTED", "PROJECTION IMAGE", "PROJECTION", "MIP"}
    | {"MNIP", "RESAMPLED", "SUBTRACTION", "CPR", "CURVED"}
)
LOCALIZER_TOKENS = frozenset({"localizer", "localiser", "scout", "survey", "loc", "tripilot"})
PRE_CONTRAST_TOKENS = frozenset({"pre", "precontrast", "nativ", "native", "unenhanced"})
NEGATION_TOKENS = frozenset({"ohne", "without", "no", "non", "sans", "senza", "sin"})
NO_AGENT_VALUES = frozenset({"", "NONE", "NO", "N", "NEIN", "0", "-", "N/A", "NA", "NULL"})
INVERSION_NAME = re.compile(r"tfl|mp-?rage|bravo|t1tfe|ir-?fspgr", re.IGNORECASE)
THREE_D_NAME = re.compile(r"3d", re.IGNORECASE)
SEQUENCE_NAME_KEYS = tuple(
    "SequenceName PulseSequenceName GEPulseSequenceName PhilipsScanningTechnique".split()
)
# attributes that must agree between the instances of one series
CONSISTENT_KEYS = tuple(
    "Modality SOPClassUID SeriesDescription MRAcquisitionType ScanningSequence SequenceVariant"
    " SequenceName Rows Columns PixelSpacing SliceThickness EchoTime FrameOfReferenceUID".split()
)
_TOKEN = re.compile(r"\+?[a-z0-9]+")
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class FilterVerdict:
    """Whether a series goes to the pipeline, the rule that decided, and the evidence."""

    qualifies: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Check:
    ok: bool | None  # None: not decidable, does not block
    evidence: Any
    reason: str = ""


def _pass(evidence: Any) -> _Check:
    return _Check(True, evidence)


def _fail(evidence: Any, reason: str) -> _Check:
    return _Check(False, evidence, reason)


@dataclass
class _Series:
    """The merged view of one series' header summaries."""

    headers: list[Mapping[str, Any]]
    first: Mapping[str, Any]
    geometry: dict[str, Any]
    cfg: FilterSettings


def _tokens(value: Any) -> list[str]:
    """Upper-case values of a CS attribute given as a list or a backslash string."""
    if value is None:
        return []
    items = value if isinstance(value, list | tuple) else re.split(r"[\\\s,/]+", str(value))
    return [str(v).strip().upper() for v in items if str(v).strip()]


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value)


def _float(value: Any) -> float | None:
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


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.lower().replace("w/o", " without "))


def _geometry(headers: list[Mapping[str, Any]]) -> dict[str, Any]:
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
            merged[key] = merged.get(key, 0) + int(_float(g.get(key)) or 0)
        for key, pick in (("spacing_min", min), ("spacing_max", max)):
            value = _float(g.get(key))
            if value is not None:
                merged[key] = pick(value, merged.get(key, value))
    return merged


def _check_storage(s: _Series) -> _Check:
    unreadable = [str(h["unreadable"]) for h in s.headers if "unreadable" in h]
    if unreadable:  # daemon.intake.decisions marks headers it could not read this way
        return _fail(unreadable, f"unreadable instance header ({unreadable[0][:80]})")
    classes = sorted({str(h.get("SOPClassUID")) for h in s.headers if h.get("SOPClassUID")})
    others = [c for c in classes if c not in MR_STORAGE_CLASSES]
    if others:
        name = UID(others[0]).name if _UID.fullmatch(others[0]) else others[0][:64]
        return _fail(classes, f"not MR image storage ({name})")
    return _Check(True if classes else None, classes or "SOPClassUID missing")


def _check_modality(s: _Series) -> _Check:
    modalities = sorted({str(h.get("Modality")) for h in s.headers if h.get("Modality")})
    if modalities and modalities != ["MR"]:
        return _fail(modalities, f"not MR (Modality {', '.join(modalities)})")
    return _Check(True if modalities else None, modalities or "Modality missing")


def _check_consistency(s: _Series) -> _Check:
    differing = []
    for key in CONSISTENT_KEYS:
        values = {
            repr(_float(v) if _float(v) is not None else v) for v in (h.get(key) for h in s.headers)
        }
        if len(values) > 1:
            differing.append(key)
    if differing:
        return _fail(
            differing,
            f"inconsistent headers ({', '.join(differing)} differs between instances)",
        )
    return _pass(f"{len(s.headers)} instance(s) agree")


def _check_original(s: _Series) -> _Check:
    for h in s.headers:
        for key in ("ImageType", "FrameType"):
            found = sorted(set(_tokens(h.get(key))) & DERIVED_TERMS)
            if found:
                return _fail(
                    {key: h.get(key)},
                    f"derived image ({key} {_text(h.get(key))})",
                )
    return _pass(s.first.get("ImageType", "ImageType missing"))


def _check_localizer(s: _Series) -> _Check:
    for h in s.headers:
        if "LOCALIZER" in _tokens(h.get("ImageType")) + _tokens(h.get("FrameType")):
            return _fail("ImageType LOCALIZER", "localizer (ImageType LOCALIZER)")
    description = _text(s.first.get("SeriesDescription"))
    hits = sorted(set(_words(description)) & LOCALIZER_TOKENS)
    if hits:
        return _fail(
            {"SeriesDescription": description},
            f"localizer (SeriesDescription '{description}')",
        )
    return _pass("no localizer marker")


def _check_geometry(s: _Series) -> _Check:
    g = s.geometry
    orientations = g.get("orientations") or []
    if not orientations:
        return _fail(g, "no image orientation (ImageOrientationPatient missing)")
    if len(orientations) > 1:
        return _fail(
            g,
            f"mixed orientations ({len(orientations)} different ImageOrientationPatient)",
        )
    positions, distinct = int(g.get("positions") or 0), g.get("distinct_positions")
    if g.get("invalid") or distinct is None:
        return _fail(g, "slice positions missing or unreadable (ImagePositionPatient)")
    if distinct < positions:
        return _fail(
            g,
            f"repeated slice positions ({positions} slices at {distinct} positions)",
        )
    return _pass(g)


def _check_3d(s: _Series) -> _Check:
    acquisition = _text(s.first.get("MRAcquisitionType")).strip().upper()
    if acquisition == "3D":
        return _pass("MRAcquisitionType 3D")
    if not acquisition:
        names = [str(s.first.get(k)) for k in SEQUENCE_NAME_KEYS if s.first.get(k)]
        if any(THREE_D_NAME.search(n) for n in names):
            return _pass(f"3D sequence name {names}")
        return _fail(
            "MRAcquisitionType missing",
            "not 3D (MRAcquisitionType missing)",
        )
    return _fail(
        f"MRAcquisitionType {acquisition}",
        f"not 3D (MRAcquisitionType {acquisition})",
    )


def _check_gradient_echo(s: _Series) -> _Check:
    h = s.first
    scanning = _tokens(h.get("ScanningSequence"))
    shown = _text(h.get("ScanningSequence"))
    if scanning:
        if "EP" in scanning:
            return _fail(
                shown,
                f"echo planar, not MP-RAGE (ScanningSequence {shown})",
            )
        if "SE" in scanning:
            return _fail(
                shown,
                f"spin echo, not gradient echo (ScanningSequence {shown})",
            )
        if "GR" in scanning:
            return _pass(f"ScanningSequence {shown}")
    echo = _text(h.get("EchoPulseSequence")).upper()
    if _text(h.get("EchoPlanarPulseSequence")).upper() == "YES":
        return _fail(
            "EchoPlanarPulseSequence YES",
            "echo planar, not MP-RAGE (EchoPlanarPulseSequence YES)",
        )
    if echo == "GRADIENT":
        return _pass("EchoPulseSequence GRADIENT")
    if echo in ("SPIN", "BOTH"):
        return _fail(echo, f"spin echo, not gradient echo (EchoPulseSequence {echo})")
    evidence = shown or "ScanningSequence and EchoPulseSequence missing"
    return _fail(evidence, f"sequence type unknown ({evidence})")


def _check_inversion(s: _Series) -> _Check:
    h = s.first
    evidence = []
    if "IR" in _tokens(h.get("ScanningSequence")):
        evidence.append("ScanningSequence IR")
    if "MP" in _tokens(h.get("SequenceVariant")):
        evidence.append("SequenceVariant MP")
    options = _tokens(h.get("ScanOptions"))
    if "IR" in options or "IR_GEMS" in options:
        evidence.append(f"ScanOptions {_text(h.get('ScanOptions'))}")
    recovery = _text(h.get("InversionRecovery")).upper()
    if recovery == "YES":
        evidence.append("InversionRecovery YES")
    ti = _float(h.get("InversionTime"))
    if ti is not None and ti > 0:
        evidence.append(f"InversionTime {ti:g} ms")
    for key in SEQUENCE_NAME_KEYS:
        if h.get(key) and INVERSION_NAME.search(str(h.get(key))):
            evidence.append(f"{key} {h.get(key)}")
    if recovery == "NO" and not (ti and ti > 0):
        return _fail(
            "InversionRecovery NO",
            "no inversion preparation (InversionRecovery NO)",
        )
    if not evidence:
        return _fail(
            "none",
            "no inversion preparation (plain gradient echo, not MP-RAGE)",
        )
    return _pass(evidence)


def _check_t1(s: _Series) -> _Check:
    h = s.first
    contrast = _text(h.get("AcquisitionContrast")).upper()
    if contrast and contrast not in T1_CONTRASTS:
        return _fail(contrast, f"not T1-weighted (AcquisitionContrast {contrast})")
    te, ti = _float(h.get("EchoTime")), _float(h.get("InversionTime"))
    if te is not None and te > MAX_ECHO_TIME_MS:
        return _fail(f"EchoTime {te:g} ms", f"not T1-weighted (EchoTime {te:g} ms)")
    if ti is not None and ti > MAX_INVERSION_TIME_MS:
        return _fail(
            f"InversionTime {ti:g} ms",
            f"not T1-weighted (InversionTime {ti:g} ms)",
        )
    evidence = {"EchoTime": te, "InversionTime": ti, "AcquisitionContrast": contrast or None}
    return _Check(True if te is not None or contrast else None, evidence)


def _keyword_hits(text: str, keywords: Sequence[str]) -> tuple[list[str], list[str]]:
    """(keywords found as whole tokens, negated or pre-contrast words found)."""
    words = _words(text)
    hits, against = [], sorted(set(words) & PRE_CONTRAST_TOKENS)
    for keyword in keywords:
        target = _words(keyword)
        if not target:
            continue
        for i in range(len(words) - len(target) + 1):
            if words[i : i + len(target)] == target:
                if i > 0 and words[i - 1] in NEGATION_TOKENS:
                    against.append(f"{words[i - 1]} {keyword}")
                elif keyword not in hits:
                    hits.append(keyword)
    return hits, against


def _check_contrast(s: _Series) -> _Check:
    evidence: dict[str, Any] = {}
    agents = {_text(h.get("ContrastBolusAgent")).strip() for h in s.headers}
    agents = {a for a in agents if a.upper() not in NO_AGENT_VALUES}
    if agents:
        evidence["ContrastBolusAgent"] = sorted(agents)
    administered = {_text(h.get("ContrastBolusAdministered")).upper() for h in s.headers} - {""}
    if administered:
        evidence["ContrastBolusAgentAdministered"] = sorted(administered)
    # GE's ProtocolName names the whole exam ("BRAIN PRE/POST"): it only counts
    # when the series has no description of its own.
    key = "SeriesDescription" if s.first.get("SeriesDescription") else "ProtocolName"
    hits, against = _keyword_hits(_text(s.first.get(key)), s.cfg.contrast_keywords)
    if hits:
        evidence[key] = hits
    if not s.cfg.require_contrast:
        return _pass({"required": False, **evidence})
    if against:
        evidence["pre_contrast_words"] = against
        return _fail(evidence, f"pre-contrast series ({key} says '{against[0]}')")
    if administered == {"NO"} and not agents:
        return _fail(evidence, "no contrast (ContrastBolusAgentAdministered NO)")
    if agents or "YES" in administered or hits:
        return _pass(evidence)
    return _fail(
        "none",
        f"no contrast documented (no ContrastBolusAgent, no contrast keyword in {key})",
    )


def _check_thickness(s: _Series) -> _Check:
    limit = s.cfg.max_slice_thickness_mm
    thickness = _float(s.first.get("SliceThickness"))
    source = "SliceThickness"
    if thickness is None or thickness <= 0:
        thickness, source = _float(s.first.get("SpacingBetweenSlices")), "SpacingBetweenSlices"
    spacing = _float(s.geometry.get("spacing_max"))
    if thickness is None or thickness <= 0:
        thickness, source = spacing, "slice positions"
    if thickness is None:
        return _fail("unknown", "slice thickness unknown (SliceThickness missing)")
    evidence = {
        "thickness_mm": thickness,
        "source": source,
        "spacing_max_mm": spacing,
        "limit_mm": limit,
    }
    if thickness > limit + 1e-6:
        return _fail(
            evidence,
            f"slices too thick ({thickness:g} mm > {limit:g} mm)",
        )
    if spacing is not None and spacing > limit + 0.01:
        return _fail(
            evidence,
            f"slice spacing too large ({spacing:g} mm > {limit:g} mm)",
        )
    return _pass(evidence)


def _check_slices(s: _Series) -> _Check:
    count = s.geometry.get("distinct_positions")
    if not isinstance(count, int):
        frames = [int(_float(h.get("NumberOfFrames")) or 1) for h in s.headers]
        count = sum(frames)
    if count < s.cfg.min_slices:
        return _fail(count, f"too few slices ({count} < {s.cfg.min_slices})")
    return _pass(count)


# (name in details, check), in the order that decides the reason
CHECKS: tuple[tuple[str, Callable[[_Series], _Check]], ...] = (
    ("storage_class", _check_storage),
    ("modality", _check_modality),
    ("consistency", _check_consistency),
    ("original", _check_original),
    ("localizer", _check_localizer),
    ("geometry", _check_geometry),
    ("acquisition_3d", _check_3d),
    ("gradient_echo", _check_gradient_echo),
    ("inversion_prep", _check_inversion),
    ("t1_weighting", _check_t1),
    ("contrast", _check_contrast),
    ("slice_thickness", _check_thickness),
    ("slice_count", _check_slices),
)


def decide_series(headers: Sequence[Mapping[str, Any]], cfg: FilterSettings) -> FilterVerdict:
    """Decide whether one series is a T1C MP-RAGE; never raises on odd header values."""
    rows = [h if isinstance(h, Mapping) else {} for h in headers]
    if not rows:
        return FilterVerdict(False, "no instances in the series", {"checks": {}, "instances": 0})
    series = _Series(rows, rows[0], _geometry(rows), cfg)
    checks = {name: check(series) for name, check in CHECKS}
    details: dict[str, Any] = {
        "instances": len(rows),
        "manufacturer": _text(series.first.get("Manufacturer")) or None,
        "checks": {n: {"ok": c.ok, "evidence": _safe(c.evidence)} for n, c in checks.items()},
    }
    failed = next((n for n, c in checks.items() if c.ok is False), None)
    if failed is not None:
        details["decided_by"] = failed
        return FilterVerdict(False, checks[failed].reason[:REASON_MAX], details)
    details["decided_by"] = "all"
    thickness = checks["slice_thickness"].evidence["thickness_mm"]
    source = ", ".join(k for k in checks["contrast"].evidence if k != "required")
    reason = (
        f"T1C MP-RAGE: 3D inversion-prepared gradient echo, contrast ({source or 'not required'}), "
        f"{checks['slice_count'].evidence} slices of {thickness:g} mm"
    )
    return FilterVerdict(True, reason[:REASON_MAX], details)


def _safe(value: Any) -> Any:
    """JSON-safe copy of evidence (non-finite numbers become None)."""
    if isinstance(value, Mapping):
        return {str(k): _safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_safe(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    return str(value)
