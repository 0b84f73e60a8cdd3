"""Vendor tag profiles: what Siemens, GE and Philips scanners write for each series kind.

:func:`series_profile` returns DICOM keyword -> value for the acquisition
attributes of one series, as the vendor's scanner writes them. Writers (the
synthetic cohort, ``tests/factories.py``) set these on every instance; the
geometry, pixel, patient and study modules are theirs.

Sources: the DICOM standard PS3.3 (C.8.3.1 MR Image Module: ScanningSequence,
SequenceVariant, ScanOptions defined terms; C.8.13 Enhanced MR Image, MR Pulse
Sequence, MR Modifier and MR Image Frame Type macros; C.7.6.16 functional
groups), the MR conformance statements of Siemens (syngo MR E11, XA),
GE (SIGNA / DISCOVERY MR750 DV26: ``*_GEMS`` scan options, private block
``GEMS_ACQU_01`` element (0019,xx9C) "Pulse Sequence Name") and Philips
(Ingenia R5: ``M_FFE``/``M_SE``/``M_IR`` image types, private block
``Philips Imaging DD 001`` element (2001,xx20) "Scanning Technique"), and
values as they appear in public brain MR data sets. Parameters (TR/TE/TI/flip)
are typical 3 T vendor defaults, not any one site's protocol.

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

_MANUFACTURER = {
    "siemens": ("SIEMENS", "Prisma_fit", "syngo MR E11"),
    "ge": ("GE MEDICAL SYSTEMS", "DISCOVERY MR750", "DV26.0_R03"),
    "philips": ("Philips Medical Systems", "Ingenia", "5.4.1"),
}
_ORIENTATION_WORD = {
    "siemens": {"sag": "sag", "axial": "tra", "coronal": "cor"},
    "ge": {"sag": "Sag", "axial": "Ax", "coronal": "Cor"},
    "philips": {"sag": "sag", "axial": "tra", "coronal": "cor"},
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
_DEFAULT_EVIDENCE = {"siemens": "both", "ge": "both", "philips": "description"}

# Kind physics shared by all vendors: echo type, IR preparation, Enhanced MR
# AcquisitionContrast / image flavour, acquisition type.
_PHYSICS: dict[str, dict[str, Any]] = {
    "t1c_mprage": {"echo": "GRADIENT", "ir": True, "weight": "T1", "acq": "3D"},
    "t1_mprage_pre": {"echo": "GRADIENT", "ir": True, "weight": "T1", "acq": "3D"},
    "t2_tse": {"echo": "SPIN", "ir": False, "weight": "T2", "acq": "2D"},
    "flair_3d": {"echo": "SPIN", "ir": True, "weight": "FLUID_ATTENUATED", "acq": "3D"},
    "flair_2d": {"echo": "SPIN", "ir": True, "weight": "FLUID_ATTENUATED", "acq": "2D"},
    "dwi": {"echo": "SPIN", "ir": False, "weight": "DIFFUSION", "acq": "2D", "epi": True},
    "localizer": {"echo": "GRADIENT", "ir": False, "weight": "LOCALIZER", "acq": "2D"},
    "mpr_derived": {"echo": "GRADIENT", "ir": True, "weight": "T1", "acq": "3D", "derived": True},
    "t1c_thick_2d": {"echo": "SPIN", "ir": False, "weight": "T1", "acq": "2D"},
}

_SIE_IMG = ["ORIGINAL", "PRIMARY", "M", "ND", "NORM"]
_GE_IMG = ["ORIGINAL", "PRIMARY", "OTHER"]
_GE_OPTS = ["FAST_GEMS", "EDR_GEMS", "FILTERED_GEMS", "ACC_GEMS"]
_GE_OPTS_IR = [*_GE_OPTS, "IR_GEMS"]
_PH_FFE = ["ORIGINAL", "PRIMARY", "M_FFE", "M", "FFE"]
_PH_SE = ["ORIGINAL", "PRIMARY", "M_SE", "M", "SE"]
_PH_IR = ["ORIGINAL", "PRIMARY", "M_IR", "M", "IR"]

# Per vendor and kind: classic MR Image attributes plus
#   desc: SeriesDescription variants ({o}/{O}: orientation word, as is / upper case)
#   neutral: the name a post-contrast series has when only the agent says "contrast"
#   agent: ContrastBolusAgent text;  private: vendor private sequence name
_S_MPRAGE = {
    "ScanningSequence": ["GR", "IR"],
    "SequenceVariant": ["SK", "SP", "MP"],
    "ScanOptions": "IR",
    "SequenceName": "*tfl3d1_16ns",
    "ImageType": _SIE_IMG,
    "RepetitionTime": 2300.0,
    "EchoTime": 2.32,
    "InversionTime": 900.0,
    "FlipAngle": 8.0,
    "SliceThickness": 1.0,
}
_G_BRAVO = {
    "ScanningSequence": "GR",
    "SequenceVariant": ["SS", "SK"],
    "ScanOptions": _GE_OPTS_IR,
    "SequenceName": "efgre3d",
    "ImageType": _GE_IMG,
    "RepetitionTime": 8.2,
    "EchoTime": 3.2,
    "InversionTime": 450.0,
    "FlipAngle": 12.0,
    "SliceThickness": 1.0,
    "SpacingBetweenSlices": 1.0,
    "private": "efgre3d",
}
_P_TFE = {
    "ScanningSequence": "GR",
    "SequenceVariant": ["SK", "MP"],
    "ScanOptions": "OTHER",
    "ImageType": _PH_FFE,
    "RepetitionTime": 8.1,
    "EchoTime": 3.7,
    "FlipAngle": 8.0,
    "SliceThickness": 1.0,
    "SpacingBetweenSlices": 1.0,
    "private": "T1TFE",
}

# fmt: off
_TABLE: dict[str, dict[str, dict[str, Any]]] = {
    "siemens": {
        "t1c_mprage": {
            **_S_MPRAGE,
            "desc": [
                "t1_mprage_{o}_p2_iso_KM", "T1_MPRAGE_{O}_POST",
                "t1_mpr_{o}_iso +C", "MPRAGE_{o}_Gd",
            ],
            "neutral": "t1_mprage_{o}_p2_iso",
            "agent": "Gadovist",
        },
        "t1_mprage_pre": {
            **_S_MPRAGE,
            "desc": ["t1_mprage_{o}_p2_iso", "T1_MPRAGE_{O}_PRE", "t1_mprage_{o}_nativ"],
        },
        "t2_tse": {
            "ScanningSequence": "SE", "SequenceVariant": ["SK", "SP", "OSP"], "ScanOptions": "PFP",
            "SequenceName": "*tse2d1_15", "ImageType": _SIE_IMG, "RepetitionTime": 5000.0,
            "EchoTime": 97.0, "FlipAngle": 150.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.0,
            "desc": ["t2_tse_{o}_p2", "T2_TSE_{O}"],
        },
        "flair_3d": {
            "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "SP", "MP"],
            "ScanOptions": ["IR", "PFP"], "SequenceName": "*spcir_282ns", "ImageType": _SIE_IMG,
            "RepetitionTime": 5000.0, "EchoTime": 387.0, "InversionTime": 1800.0,
            "FlipAngle": 120.0,
            "SliceThickness": 1.0, "desc": ["t2_space_dark-fluid_{o}_p2_iso", "FLAIR_3D_SPACE_{O}"],
        },
        "flair_2d": {
            "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "SP", "MP"],
            "ScanOptions": ["IR", "PFP"], "SequenceName": "*tir2d1_21", "ImageType": _SIE_IMG,
            "RepetitionTime": 9000.0, "EchoTime": 81.0, "InversionTime": 2500.0, "FlipAngle": 150.0,
            "SliceThickness": 5.0, "SpacingBetweenSlices": 6.5,
            "desc": ["t2_tirm_{o}_dark-fluid", "FLAIR_{O}"],
        },
        "dwi": {
            "ScanningSequence": "EP", "SequenceVariant": ["SK", "SP"], "ScanOptions": ["PFP", "FS"],
            "SequenceName": "*ep_b1000t",
            "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE", "ND", "NORM"],
            "RepetitionTime": 6000.0, "EchoTime": 89.0, "FlipAngle": 90.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.5, "desc": ["ep2d_diff_3scan_trace_p2", "DWI_{O}_b1000"],
        },
        "localizer": {
            "ScanningSequence": "GR", "SequenceVariant": ["SP", "OSP"], "SequenceName": "*fl2d1",
            "ImageType": ["ORIGINAL", "PRIMARY", "M", "NORM", "DIS2D"], "RepetitionTime": 8.6,
            "EchoTime": 4.0, "FlipAngle": 20.0, "SliceThickness": 7.0, "SpacingBetweenSlices": 7.0,
            "desc": ["localizer", "AAHead_Scout_32ch-head-coil"],
        },
        "mpr_derived": {
            **_S_MPRAGE, "ImageType": ["DERIVED", "PRIMARY", "MPR", "ND", "NORM"],
            "desc": ["t1_mprage_sag_p2_iso_KM_MPR_{o}", "T1_MPRAGE_POST_MPR_{O}"],
            "neutral": "t1_mprage_sag_p2_iso_MPR_{o}", "agent": "Gadovist",
        },
        "t1c_thick_2d": {
            "ScanningSequence": "SE", "SequenceVariant": ["SK", "SP", "OSP"], "ScanOptions": "SAT1",
            "SequenceName": "*se2d1", "ImageType": _SIE_IMG, "RepetitionTime": 550.0,
            "EchoTime": 8.9,
            "FlipAngle": 90.0, "SliceThickness": 5.0, "SpacingBetweenSlices": 6.0,
            "desc": ["t1_se_{o}_KM", "T1_SE_{O}_POST"], "neutral": "t1_se_{o}", "agent": "Gadovist",
        },
    },
    "ge": {
        "t1c_mprage": {
            **_G_BRAVO,
            "desc": [
                "{o} BRAVO +C", "{O} 3D T1 BRAVO POST",
                "{o} FSPGR BRAVO Gd", "{o} BRAVO post contrast",
            ],
            "neutral": "{o} BRAVO",
            "agent": "DOTAREM",
        },
        "t1_mprage_pre": {**_G_BRAVO, "desc": ["{o} BRAVO", "{O} 3D T1 BRAVO PRE"]},
        "t2_tse": {
            "ScanningSequence": "SE", "SequenceVariant": ["SK", "OSP"], "ScanOptions": _GE_OPTS,
            "SequenceName": "fse-xl", "ImageType": _GE_IMG, "RepetitionTime": 5000.0,
            "EchoTime": 100.0,
            "FlipAngle": 111.0, "SliceThickness": 5.0, "SpacingBetweenSlices": 6.0,
            "private": "fse-xl",
            "desc": ["{o} T2 FSE", "{O} T2 PROPELLER"],
        },
        "flair_3d": {
            "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "SS", "MP"],
            "ScanOptions": _GE_OPTS_IR,
            "SequenceName": "Cube", "ImageType": _GE_IMG, "RepetitionTime": 6000.0,
            "EchoTime": 120.0,
            "InversionTime": 1800.0, "FlipAngle": 90.0, "SliceThickness": 1.2,
            "SpacingBetweenSlices": 0.6,
            "private": "Cube", "desc": ["{o} CUBE FLAIR", "{O} T2 FLAIR CUBE"],
        },
        "flair_2d": {
            "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "SS", "MP"],
            "ScanOptions": _GE_OPTS_IR,
            "SequenceName": "fse-ir", "ImageType": _GE_IMG, "RepetitionTime": 9000.0,
            "EchoTime": 120.0,
            "InversionTime": 2400.0, "FlipAngle": 90.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.0,
            "private": "fse-ir", "desc": ["{o} T2 FLAIR", "{O} FLAIR"],
        },
        "dwi": {
            "ScanningSequence": ["SE", "EP"], "SequenceVariant": ["SK", "SS"],
            "ScanOptions": ["EPI_GEMS", "ACC_GEMS", "FS_GEMS"], "SequenceName": "epi2",
            "ImageType": _GE_IMG,
            "RepetitionTime": 6000.0, "EchoTime": 80.0, "FlipAngle": 90.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.0, "private": "epi2",
            "desc": ["{o} DWI 1000b", "{O} DIFFUSION"],
        },
        "localizer": {
            "ScanningSequence": "GR", "SequenceVariant": "SS", "ScanOptions": "FAST_GEMS",
            "SequenceName": "fgre",
            "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "RepetitionTime": 5.4,
            "EchoTime": 1.6,
            "FlipAngle": 30.0, "SliceThickness": 5.0, "SpacingBetweenSlices": 7.0,
            "private": "fgre",
            "desc": ["3-Plane Loc", "3 PLANE LOC"],
        },
        "mpr_derived": {
            **_G_BRAVO, "ImageType": ["DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"],
            "desc": ["{o} BRAVO +C REFORMAT", "{O} BRAVO POST Reformatted"],
            "neutral": "Reformatted",
            "agent": "DOTAREM",
        },
        "t1c_thick_2d": {
            "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "SS", "MP"],
            "ScanOptions": _GE_OPTS_IR,
            "SequenceName": "fse-ir", "ImageType": _GE_IMG, "RepetitionTime": 2000.0,
            "EchoTime": 24.0,
            "InversionTime": 750.0, "FlipAngle": 90.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.0,
            "private": "fse-ir", "desc": ["{o} T1 FLAIR +C", "{O} T1 FLAIR POST"],
            "neutral": "{o} T1 FLAIR",
            "agent": "DOTAREM",
        },
    },
    "philips": {
        "t1c_mprage": {
            **_P_TFE,
            "desc": ["sT1W_3D_TFE +C", "T1 3D TFE GD", "T1W_3D_TFE_KM", "3D_T1W_TFE_post"],
            "neutral": "sT1W_3D_TFE",
            "agent": "Dotarem",
        },
        "t1_mprage_pre": {**_P_TFE, "desc": ["sT1W_3D_TFE", "T1 3D TFE pre", "T1W_3D_TFE_nativ"]},
        "t2_tse": {
            "ScanningSequence": "SE", "SequenceVariant": "SK", "ScanOptions": "OTHER",
            "ImageType": _PH_SE,
            "RepetitionTime": 3000.0, "EchoTime": 80.0, "FlipAngle": 90.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.0, "private": "TSE", "desc": ["T2W_TSE", "T2W_TSE_{o}"],
        },
        "flair_3d": {
            "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "MP"],
            "ScanOptions": "OTHER",
            "ImageType": _PH_IR, "RepetitionTime": 4800.0, "EchoTime": 310.0,
            "InversionTime": 1650.0,
            "FlipAngle": 90.0, "SliceThickness": 1.12, "SpacingBetweenSlices": 0.56,
            "private": "TSE",
            "desc": ["3D_Brain_VIEW_FLAIR", "VISTA_FLAIR_{o}"],
        },
        "flair_2d": {
            "ScanningSequence": ["SE", "IR"], "SequenceVariant": ["SK", "MP"],
            "ScanOptions": "OTHER",
            "ImageType": _PH_IR, "RepetitionTime": 11000.0, "EchoTime": 125.0,
            "InversionTime": 2800.0,
            "FlipAngle": 90.0, "SliceThickness": 5.0, "SpacingBetweenSlices": 6.0,
            "private": "IRTSE",
            "desc": ["T2W_FLAIR", "FLAIR_{o}"],
        },
        "dwi": {
            "ScanningSequence": "SE", "SequenceVariant": "SK", "ScanOptions": "FS",
            "ImageType": _PH_SE,
            "RepetitionTime": 4000.0, "EchoTime": 90.0, "FlipAngle": 90.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.0, "private": "DwiSE", "desc": ["DWI_SENSE", "dDWI_{o}"],
        },
        "localizer": {
            "ScanningSequence": "GR", "SequenceVariant": "SP", "ScanOptions": "OTHER",
            "ImageType": _PH_FFE,
            "RepetitionTime": 11.0, "EchoTime": 4.6, "FlipAngle": 15.0, "SliceThickness": 10.0,
            "SpacingBetweenSlices": 12.0, "private": "FFE",
            "desc": ["SURVEY", "Survey_32ch_HeadCoil"],
        },
        "mpr_derived": {
            **_P_TFE, "ImageType": ["DERIVED", "SECONDARY", "MPR", "M_FFE", "M", "FFE"],
            "desc": ["sT1W_3D_TFE +C MPR {o}", "T1 3D TFE GD {O} MPR"],
            "neutral": "sT1W_3D_TFE MPR {o}",
            "agent": "Dotarem",
        },
        "t1c_thick_2d": {
            "ScanningSequence": "SE", "SequenceVariant": "SK", "ScanOptions": "OTHER",
            "ImageType": _PH_SE,
            "RepetitionTime": 550.0, "EchoTime": 10.0, "FlipAngle": 90.0, "SliceThickness": 5.0,
            "SpacingBetweenSlices": 6.0, "private": "SE",
            "desc": ["T1W_SE +C", "T1W_SE_KM", "T1_SE_{o}_GD"],
            "neutral": "T1W_SE", "agent": "Dotarem",
        },
    },
}

# fmt: on

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
    if vendor not in _TABLE:
        raise ValueError(f"vendor {vendor!r} is unknown; use one of {', '.join(VENDORS)}")
    if kind not in _TABLE[vendor]:
        raise ValueError(f"series kind {kind!r} is unknown; use one of {', '.join(KINDS)}")
    return _TABLE[vendor][kind]


def _fill(template: str, word: str) -> str:
    return template.replace("{o}", word).replace("{O}", word.upper())


def description_variants(vendor: str, kind: str, orientation: str = "sag") -> tuple[str, ...]:
    """Every SeriesDescription convention the profile knows for this vendor and kind."""
    word = _ORIENTATION_WORD[vendor][normalize_orientation(orientation)] if vendor in _TABLE else ""
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
    evidence = contrast_evidence or _DEFAULT_EVIDENCE[vendor]
    if evidence not in CONTRAST_EVIDENCE:
        raise ValueError(
            f"contrast_evidence {evidence!r} is unknown; use one of {', '.join(CONTRAST_EVIDENCE)}"
        )
    manufacturer, model, software = _MANUFACTURER[vendor]
    physics = _PHYSICS[kind]
    word = _ORIENTATION_WORD[vendor][orient]
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
    physics = _PHYSICS[kind]
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
