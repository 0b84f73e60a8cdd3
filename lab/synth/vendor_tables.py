"""Vendor tag tables: what each scanner writes per series kind, as data.

:data:`SERIES_TABLE` holds, per vendor and series kind, the classic MR Image
attributes with the vendor's SeriesDescription conventions, contrast agent
and private sequence name; :data:`PHYSICS` the kind's physics shared by all
vendors; :data:`MANUFACTURER`, :data:`ORIENTATION_WORD` and
:data:`DEFAULT_EVIDENCE` the vendor's identity, orientation words and
contrast-documentation habit. :mod:`lab.synth.vendors` turns these into
series profiles.

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
"""

from __future__ import annotations

from typing import Any

MANUFACTURER = {
    "siemens": ("SIEMENS", "Prisma_fit", "syngo MR E11"),
    "ge": ("GE MEDICAL SYSTEMS", "DISCOVERY MR750", "DV26.0_R03"),
    "philips": ("Philips Medical Systems", "Ingenia", "5.4.1"),
}
ORIENTATION_WORD = {
    "siemens": {"sag": "sag", "axial": "tra", "coronal": "cor"},
    "ge": {"sag": "Sag", "axial": "Ax", "coronal": "Cor"},
    "philips": {"sag": "sag", "axial": "tra", "coronal": "cor"},
}

DEFAULT_EVIDENCE = {"siemens": "both", "ge": "both", "philips": "description"}

# Kind physics shared by all vendors: echo type, IR preparation, Enhanced MR
# AcquisitionContrast / image flavour, acquisition type.
PHYSICS: dict[str, dict[str, Any]] = {
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
SERIES_TABLE: dict[str, dict[str, dict[str, Any]]] = {
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
