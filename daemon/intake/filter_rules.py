"""The series filter's rules, one small function each (DESIGN §4), in the
order that decides the reason (:data:`CHECKS`). Each returns a :class:`Check`:
passed, failed with a reason, or undecidable (``ok`` None, never blocks), with
the evidence it looked at. :mod:`daemon.intake.series_filter` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import UID

from daemon.intake.filter_values import as_number, as_text, cs_values, word_tokens
from daemon.settings import FilterSettings
from dicom_out.lossy import lossy_marker

MR_STORAGE_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
        "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
    }
)
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
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class Check:
    ok: bool | None  # None: not decidable, does not block
    evidence: Any
    reason: str = ""


def passed(evidence: Any) -> Check:
    return Check(True, evidence)


def failed(evidence: Any, reason: str) -> Check:
    return Check(False, evidence, reason)


@dataclass
class SeriesView:
    """The merged view of one series' header summaries."""

    headers: list[Mapping[str, Any]]
    first: Mapping[str, Any]
    geometry: dict[str, Any]
    cfg: FilterSettings


def check_storage(s: SeriesView) -> Check:
    unreadable = [str(h["unreadable"]) for h in s.headers if "unreadable" in h]
    if unreadable:  # daemon.intake.decisions marks headers it could not read this way
        return failed(unreadable, f"unreadable instance header ({unreadable[0][:80]})")
    classes = sorted({str(h.get("SOPClassUID")) for h in s.headers if h.get("SOPClassUID")})
    others = [c for c in classes if c not in MR_STORAGE_CLASSES]
    if others:
        name = UID(others[0]).name if _UID.fullmatch(others[0]) else others[0][:64]
        return failed(classes, f"not MR image storage ({name})")
    return Check(True if classes else None, classes or "SOPClassUID missing")


def check_modality(s: SeriesView) -> Check:
    modalities = sorted({str(h.get("Modality")) for h in s.headers if h.get("Modality")})
    if modalities and modalities != ["MR"]:
        return failed(modalities, f"not MR (Modality {', '.join(modalities)})")
    return Check(True if modalities else None, modalities or "Modality missing")


def check_consistency(s: SeriesView) -> Check:
    differing = []
    for key in CONSISTENT_KEYS:
        values = {
            repr(as_number(v) if as_number(v) is not None else v)
            for v in (h.get(key) for h in s.headers)
        }
        if len(values) > 1:
            differing.append(key)
    if differing:
        return failed(
            differing,
            f"inconsistent headers ({', '.join(differing)} differs between instances)",
        )
    return passed(f"{len(s.headers)} instance(s) agree")


def check_original(s: SeriesView) -> Check:
    for h in s.headers:
        for key in ("ImageType", "FrameType"):
            found = sorted(set(cs_values(h.get(key))) & DERIVED_TERMS)
            if found:
                return failed(
                    {key: h.get(key)},
                    f"derived image ({key} {as_text(h.get(key))})",
                )
    return passed(s.first.get("ImageType", "ImageType missing"))


def check_localizer(s: SeriesView) -> Check:
    for h in s.headers:
        if "LOCALIZER" in cs_values(h.get("ImageType")) + cs_values(h.get("FrameType")):
            return failed("ImageType LOCALIZER", "localizer (ImageType LOCALIZER)")
    description = as_text(s.first.get("SeriesDescription"))
    hits = sorted(set(word_tokens(description)) & LOCALIZER_TOKENS)
    if hits:
        return failed(
            {"SeriesDescription": description},
            f"localizer (SeriesDescription '{description}')",
        )
    return passed("no localizer marker")


def check_geometry(s: SeriesView) -> Check:
    g = s.geometry
    orientations = g.get("orientations") or []
    if not orientations:
        return failed(g, "no image orientation (ImageOrientationPatient missing)")
    if len(orientations) > 1:
        return failed(
            g,
            f"mixed orientations ({len(orientations)} different ImageOrientationPatient)",
        )
    positions, distinct = int(g.get("positions") or 0), g.get("distinct_positions")
    if g.get("invalid") or distinct is None:
        return failed(g, "slice positions missing or unreadable (ImagePositionPatient)")
    if distinct < positions:
        return failed(
            g,
            f"repeated slice positions ({positions} slices at {distinct} positions)",
        )
    return passed(g)


def check_3d(s: SeriesView) -> Check:
    acquisition = as_text(s.first.get("MRAcquisitionType")).strip().upper()
    if acquisition == "3D":
        return passed("MRAcquisitionType 3D")
    if not acquisition:
        names = [str(s.first.get(k)) for k in SEQUENCE_NAME_KEYS if s.first.get(k)]
        if any(THREE_D_NAME.search(n) for n in names):
            return passed(f"3D sequence name {names}")
        return failed(
            "MRAcquisitionType missing",
            "not 3D (MRAcquisitionType missing)",
        )
    return failed(
        f"MRAcquisitionType {acquisition}",
        f"not 3D (MRAcquisitionType {acquisition})",
    )


def check_gradient_echo(s: SeriesView) -> Check:
    h = s.first
    scanning = cs_values(h.get("ScanningSequence"))
    shown = as_text(h.get("ScanningSequence"))
    if scanning:
        if "EP" in scanning:
            return failed(
                shown,
                f"echo planar, not MP-RAGE (ScanningSequence {shown})",
            )
        if "SE" in scanning:
            return failed(
                shown,
                f"spin echo, not gradient echo (ScanningSequence {shown})",
            )
        if "GR" in scanning:
            return passed(f"ScanningSequence {shown}")
    echo = as_text(h.get("EchoPulseSequence")).upper()
    if as_text(h.get("EchoPlanarPulseSequence")).upper() == "YES":
        return failed(
            "EchoPlanarPulseSequence YES",
            "echo planar, not MP-RAGE (EchoPlanarPulseSequence YES)",
        )
    if echo == "GRADIENT":
        return passed("EchoPulseSequence GRADIENT")
    if echo in ("SPIN", "BOTH"):
        return failed(echo, f"spin echo, not gradient echo (EchoPulseSequence {echo})")
    evidence = shown or "ScanningSequence and EchoPulseSequence missing"
    return failed(evidence, f"sequence type unknown ({evidence})")


def check_inversion(s: SeriesView) -> Check:
    h = s.first
    evidence = []
    if "IR" in cs_values(h.get("ScanningSequence")):
        evidence.append("ScanningSequence IR")
    if "MP" in cs_values(h.get("SequenceVariant")):
        evidence.append("SequenceVariant MP")
    options = cs_values(h.get("ScanOptions"))
    if "IR" in options or "IR_GEMS" in options:
        evidence.append(f"ScanOptions {as_text(h.get('ScanOptions'))}")
    recovery = as_text(h.get("InversionRecovery")).upper()
    if recovery == "YES":
        evidence.append("InversionRecovery YES")
    ti = as_number(h.get("InversionTime"))
    if ti is not None and ti > 0:
        evidence.append(f"InversionTime {ti:g} ms")
    for key in SEQUENCE_NAME_KEYS:
        if h.get(key) and INVERSION_NAME.search(str(h.get(key))):
            evidence.append(f"{key} {h.get(key)}")
    if recovery == "NO" and not (ti and ti > 0):
        return failed(
            "InversionRecovery NO",
            "no inversion preparation (InversionRecovery NO)",
        )
    if not evidence:
        return failed(
            "none",
            "no inversion preparation (plain gradient echo, not MP-RAGE)",
        )
    return passed(evidence)


def check_t1(s: SeriesView) -> Check:
    h = s.first
    contrast = as_text(h.get("AcquisitionContrast")).upper()
    if contrast and contrast not in T1_CONTRASTS:
        return failed(contrast, f"not T1-weighted (AcquisitionContrast {contrast})")
    te, ti = as_number(h.get("EchoTime")), as_number(h.get("InversionTime"))
    if te is not None and te > MAX_ECHO_TIME_MS:
        return failed(f"EchoTime {te:g} ms", f"not T1-weighted (EchoTime {te:g} ms)")
    if ti is not None and ti > MAX_INVERSION_TIME_MS:
        return failed(
            f"InversionTime {ti:g} ms",
            f"not T1-weighted (InversionTime {ti:g} ms)",
        )
    evidence = {"EchoTime": te, "InversionTime": ti, "AcquisitionContrast": contrast or None}
    return Check(True if te is not None or contrast else None, evidence)


def keyword_hits(text: str, keywords: Sequence[str]) -> tuple[list[str], list[str]]:
    """(keywords found as whole tokens, negated or pre-contrast words found)."""
    words = word_tokens(text)
    hits, against = [], sorted(set(words) & PRE_CONTRAST_TOKENS)
    for keyword in keywords:
        target = word_tokens(keyword)
        if not target:
            continue
        for i in range(len(words) - len(target) + 1):
            if words[i : i + len(target)] == target:
                if i > 0 and words[i - 1] in NEGATION_TOKENS:
                    against.append(f"{words[i - 1]} {keyword}")
                elif keyword not in hits:
                    hits.append(keyword)
    return hits, against


def check_contrast(s: SeriesView) -> Check:
    evidence: dict[str, Any] = {}
    agents = {as_text(h.get("ContrastBolusAgent")).strip() for h in s.headers}
    agents = {a for a in agents if a.upper() not in NO_AGENT_VALUES}
    if agents:
        evidence["ContrastBolusAgent"] = sorted(agents)
    administered = {as_text(h.get("ContrastBolusAdministered")).upper() for h in s.headers} - {""}
    if administered:
        evidence["ContrastBolusAgentAdministered"] = sorted(administered)
    # GE's ProtocolName names the whole exam ("BRAIN PRE/POST"): it only counts
    # when the series has no description of its own.
    key = "SeriesDescription" if s.first.get("SeriesDescription") else "ProtocolName"
    hits, against = keyword_hits(as_text(s.first.get(key)), s.cfg.contrast_keywords)
    if hits:
        evidence[key] = hits
    if not s.cfg.require_contrast:
        return passed({"required": False, **evidence})
    if against:
        evidence["pre_contrast_words"] = against
        return failed(evidence, f"pre-contrast series ({key} says '{against[0]}')")
    if administered == {"NO"} and not agents:
        return failed(evidence, "no contrast (ContrastBolusAgentAdministered NO)")
    if agents or "YES" in administered or hits:
        return passed(evidence)
    return failed(
        "none",
        f"no contrast documented (no ContrastBolusAgent, no contrast keyword in {key})",
    )


def check_thickness(s: SeriesView) -> Check:
    limit = s.cfg.max_slice_thickness_mm
    thickness = as_number(s.first.get("SliceThickness"))
    source = "SliceThickness"
    if thickness is None or thickness <= 0:
        thickness, source = as_number(s.first.get("SpacingBetweenSlices")), "SpacingBetweenSlices"
    spacing = as_number(s.geometry.get("spacing_max"))
    if thickness is None or thickness <= 0:
        thickness, source = spacing, "slice positions"
    if thickness is None:
        return failed("unknown", "slice thickness unknown (SliceThickness missing)")
    evidence = {
        "thickness_mm": thickness,
        "source": source,
        "spacing_max_mm": spacing,
        "limit_mm": limit,
    }
    if thickness > limit + 1e-6:
        return failed(
            evidence,
            f"slices too thick ({thickness:g} mm > {limit:g} mm)",
        )
    if spacing is not None and spacing > limit + 0.01:
        return failed(
            evidence,
            f"slice spacing too large ({spacing:g} mm > {limit:g} mm)",
        )
    return passed(evidence)


def check_lossless(s: SeriesView) -> Check:
    reasons = sorted(
        {
            reason
            for h in s.headers
            if (reason := lossy_marker(h.get("LossyImageCompression"), h.get("TransferSyntaxUID")))
        }
    )
    if not reasons:
        return passed("no lossy compression recorded")
    evidence = {"lossy": reasons, "accepted": s.cfg.accept_lossy}
    if s.cfg.accept_lossy:
        return passed(evidence)
    return failed(evidence, f"lossy compressed ({reasons[0]}; filter.accept_lossy is false)")


def check_slices(s: SeriesView) -> Check:
    count = s.geometry.get("distinct_positions")
    if not isinstance(count, int):
        frames = [int(as_number(h.get("NumberOfFrames")) or 1) for h in s.headers]
        count = sum(frames)
    if count < s.cfg.min_slices:
        return failed(count, f"too few slices ({count} < {s.cfg.min_slices})")
    return passed(count)


# (name in details, check), in the order that decides the reason
CHECKS: tuple[tuple[str, Callable[[SeriesView], Check]], ...] = (
    ("storage_class", check_storage),
    ("modality", check_modality),
    ("consistency", check_consistency),
    ("original", check_original),
    ("localizer", check_localizer),
    ("geometry", check_geometry),
    ("acquisition_3d", check_3d),
    ("gradient_echo", check_gradient_echo),
    ("inversion_prep", check_inversion),
    ("t1_weighting", check_t1),
    ("contrast", check_contrast),
    ("slice_thickness", check_thickness),
    ("slice_count", check_slices),
    ("lossless", check_lossless),
)
