"""Vendor tag profiles: what Siemens, GE and Philips scanners write for each series kind.

:func:`series_profile` returns DICOM keyword -> value for the acquisition
attributes of one series, as the vendor's scanner writes them. Writers (the
synthetic cohort, ``tests/factories.py``) set these on every instance; the
geometry, pixel, patient and study modules are theirs. The values themselves
(and their sources) are the tables of :mod:`lab.synth.vendor_tables`.

Where contrast is documented: Siemens and GE write ``ContrastBolusAgent`` when
the technologist enters it at registration *and* sites name the series
("_KM" at German sites, "+C", "POST", "Gd"); Philips usually leaves
``ContrastBolusAgent`` empty, so the series name is the only evidence. The
``contrast_evidence`` knob picks which of the two a post-contrast profile
carries ("both", "agent", "description" or "none"); ``None`` means the
vendor's usual habit (Siemens/GE "both", Philips "description").

Private tags have pseudo-keywords (:data:`PRIVATE_TAGS`): they are returned by
:func:`private_profile`, never by :func:`series_profile`, so every key of the
latter is a real DICOM keyword. For Enhanced MR (``enhanced=True``) the classic
ScanningSequence/SequenceVariant/ScanOptions/SequenceName are replaced by the
MR Pulse Sequence module; keys that live inside functional groups are listed in
:data:`ENHANCED_PLACEMENT` (``EchoTime`` -> MREchoSequence.EffectiveEchoTime,
``InversionTime`` -> MRModifierSequence.InversionTimes, ...), and
``ContrastBolusAgent`` is the free text a writer turns into
ContrastBolusAgentSequence + ContrastBolusUsageSequence.
"""

from __future__ import annotations

from typing import Any

from lab.synth.vendor_tables import (
    DEFAULT_EVIDENCE,
    MANUFACTURER,
    ORIENTATION_WORD,
    PHYSICS,
    SERIES_TABLE,
)

VENDORS = ("siemens", "ge", "philips")
KINDS = (
    "t1c_mprage",
    "t1_mprage_pre",
    "t2_tse",
    "flair_3d",
    "flair_2d",
    "dwi",
    "localizer",
    "mpr_derived",
    "t1c_thick_2d",
)
ORIENTATIONS = ("sag", "axial", "coronal")
CONTRAST_EVIDENCE = ("both", "agent", "description", "none")
POST_CONTRAST_KINDS = frozenset({"t1c_mprage", "mpr_derived", "t1c_thick_2d"})

# pseudo-keyword -> (group, private creator, element offset in the block, VR)
PRIVATE_TAGS: dict[str, tuple[int, str, int, str]] = {
    "GEPulseSequenceName": (0x0019, "GEMS_ACQU_01", 0x9C, "LO"),
    "PhilipsScanningTechnique": (0x2001, "Philips Imaging DD 001", 0x20, "LO"),
}

# Enhanced MR: profile key -> (functional group sequence, attribute inside it)
ENHANCED_PLACEMENT: dict[str, tuple[str, str]] = {
    "RepetitionTime": ("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
    "FlipAngle": ("MRTimingAndRelatedParametersSequence", "FlipAngle"),
    "EchoTrainLength": ("MRTimingAndRelatedParametersSequence", "EchoTrainLength"),
    "EchoTime": ("MREchoSequence", "EffectiveEchoTime"),
    "InversionRecovery": ("MRModifierSequence", "InversionRecovery"),
    "InversionTime": ("MRModifierSequence", "InversionTimes"),
    "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
    "SpacingBetweenSlices": ("PixelMeasuresSequence", "SpacingBetweenSlices"),
}

_ORIENTATION_ALIASES = {
    "sag": "sag",
    "sagittal": "sag",
    "axial": "axial",
    "ax": "axial",
    "tra": "axial",
    "transverse": "axial",
    "cor": "coronal",
    "coronal": "coronal",
}
_CLASSIC_ONLY = ("ScanningSequence", "SequenceVariant", "ScanOptions", "SequenceName")
_META = ("desc", "neutral", "agent", "private")


def normalize_orientation(orientation: str) -> str:
    """``"sag"``, ``"axial"`` or ``"coronal"`` for any usual spelling (tra, ax, cor...)."""
    try:
        return _ORIENTATION_ALIASES[orientation.lower()]
    except KeyError:
        raise ValueError(
            f"orientation {orientation!r} is unknown; use one of {', '.join(ORIENTATIONS)}"
        ) from None


def _entry(vendor: str, kind: str) -> dict[str, Any]:
    if vendor not in SERIES_TABLE:
        raise ValueError(f"vendor {vendor!r} is unknown; use one of {', '.join(VENDORS)}")
    if kind not in SERIES_TABLE[vendor]:
        raise ValueError(f"series kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    return SERIES_TABLE[vendor][kind]


def _fill(template: str, word: str) -> str:
    return template.replace("{o}", word).replace("{O}", word.upper())


def description_variants(vendor: str, kind: str, orientation: str = "sag") -> tuple[str, ...]:
    """Every SeriesDescription convention the profile knows for this vendor and kind."""
    word = (
        ORIENTATION_WORD[vendor][normalize_orientation(orientation)]
        if vendor in SERIES_TABLE
        else ""
    )
    return tuple(_fill(t, word) for t in _entry(vendor, kind)["desc"])


def private_profile(vendor: str, kind: str) -> dict[str, str]:
    """Private attributes (pseudo-keywords of :data:`PRIVATE_TAGS`) the vendor writes."""
    private = _entry(vendor, kind).get("private")
    if private is None:
        return {}
    key = "GEPulseSequenceName" if vendor == "ge" else "PhilipsScanningTechnique"
    return {key: private}


def series_profile(
    vendor: str,
    kind: str,
    *,
    orientation: str = "sag",
    enhanced: bool = False,
    variant: int = 0,
    contrast_evidence: str | None = None,
) -> dict[str, object]:
    """Acquisition attributes (DICOM keyword -> value) of one series.

    ``variant`` picks a site's naming convention (and, for Philips, the
    SequenceVariant spelling); it wraps around. ``contrast_evidence`` says
    where a post-contrast series documents the contrast (see the module doc);
    it is ignored for kinds without contrast. Values are plain Python
    (str, float, list of str) so the result is JSON-safe and can be set with
    ``setattr(ds, keyword, value)``.
    """
    entry = _entry(vendor, kind)
    orient = normalize_orientation(orientation)
    evidence = contrast_evidence or DEFAULT_EVIDENCE[vendor]
    if evidence not in CONTRAST_EVIDENCE:
        raise ValueError(
            f"contrast_evidence {evidence!r} is unknown; use one of {', '.join(CONTRAST_EVIDENCE)}"
        )
    manufacturer, model, software = MANUFACTURER[vendor]
    physics = PHYSICS[kind]
    word = ORIENTATION_WORD[vendor][orient]
    descriptions = entry["desc"]
    post = kind in POST_CONTRAST_KINDS
    if post and evidence in ("agent", "none"):
        description = _fill(entry["neutral"], word)
    else:
        description = _fill(descriptions[variant % len(descriptions)], word)
    out: dict[str, object] = {
        "Modality": "MR",
        "Manufacturer": manufacturer,
        "ManufacturerModelName": model,
        "SoftwareVersions": software,
        "MagneticFieldStrength": 3.0,
        "SeriesDescription": description,
        "ProtocolName": _protocol_name(vendor, description),
        "MRAcquisitionType": physics["acq"],
    }
    for key, value in entry.items():
        if key not in _META:
            out[key] = list(value) if isinstance(value, list) else value
    if vendor == "philips" and out.get("SequenceVariant") == ["SK", "MP"] and variant % 2:
        out["SequenceVariant"] = ["MP"]
    if post and evidence in ("both", "agent"):
        out["ContrastBolusAgent"] = entry["agent"]
    if enhanced:
        _to_enhanced(out, vendor, kind, entry)
    return out


def _protocol_name(vendor: str, description: str) -> str:
    if vendor == "ge":
        return "ROUTINE BRAIN"  # GE: the exam protocol, the same for every series
    if vendor == "philips":
        return f"{description} SENSE"
    return description


def _to_enhanced(out: dict[str, object], vendor: str, kind: str, entry: dict[str, Any]) -> None:
    """Replace the classic MR Image attributes by the Enhanced MR equivalents.

    PS3.3 C.8.13.4: the MR Pulse Sequence attributes are present only for
    ORIGINAL images, so a derived (MPR) profile has none; InversionTimes is
    required when InversionRecovery is YES (Philips then writes the TFE
    prepulse delay, which its classic images leave out).
    """
    physics = PHYSICS[kind]
    name = entry.get("private") or entry.get("SequenceName") or "UNKNOWN"
    for key in _CLASSIC_ONLY:
        out.pop(key, None)
    derived = physics.get("derived", False)
    flavour = physics["weight"]
    inversion = physics["ir"] or "InversionTime" in out
    out["ImageType"] = [
        "DERIVED" if derived else "ORIGINAL",
        "PRIMARY",
        flavour,
        "RESAMPLED" if derived else "NONE",
    ]
    out["AcquisitionContrast"] = "UNKNOWN" if flavour == "LOCALIZER" else flavour
    out["InversionRecovery"] = "YES" if inversion else "NO"
    if inversion and "InversionTime" not in out:
        out["InversionTime"] = 1000.0
    if vendor == "siemens":
        out["SoftwareVersions"] = "syngo MR XA30"  # Siemens writes Enhanced MR from XA on
        out["ManufacturerModelName"] = "MAGNETOM Vida"
    if derived:
        out.pop("MRAcquisitionType", None)
        return
    epi = physics.get("epi", False)
    out.update(
        {
            "PulseSequenceName": str(name)[:16],
            "EchoPulseSequence": physics["echo"],
            "MultiPlanarExcitation": "NO",
            "PhaseContrast": "NO",
            "TimeOfFlightContrast": "NO",
            "SteadyStatePulseSequence": "NONE",
            "EchoPlanarPulseSequence": "YES" if epi else "NO",
            "SaturationRecovery": "NO",
            "SpectrallySelectedSuppression": "NONE",
            "OversamplingPhase": "NONE",
            "GeometryOfKSpaceTraversal": "RECTILINEAR",
            "RectilinearPhaseEncodeReordering": "LINEAR",
            "SegmentedKSpaceTraversal": "SINGLE" if epi else "PARTIAL",
            "NumberOfKSpaceTrajectories": 1,
        }
    )
    if physics["acq"] == "3D":
        out["CoverageOfKSpace"] = "FULL"
    if physics["echo"] != "GRADIENT":
        out["MultipleSpinEcho"] = "NO"
