"""Every coded concept the SEG and the SR use, in one place.

Standard concepts come from DICOM PS3.16 (DCM), SNOMED CT (SCT), UCUM and
IBSI; each constant names where it was looked up. Only where no standard code
exists (the Ki-67 prediction, its class, the growth-risk group, which inputs
were used, three of the radiologist's characteristics, the geometric location
heuristic, the analysis status) do we use our private coding scheme
:data:`PRIVATE_SCHEME` ("99KI67"), which every SR declares in its Coding
Scheme Identification Sequence (:data:`PRIVATE_SCHEME_IDENTIFICATION`).

Code meanings are LO (at most 64 characters); private code values are SH (at
most 16). A test checks both.
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept

# -- the private coding scheme ------------------------------------------------------
PRIVATE_SCHEME = "99KI67"  # PS3.16 §8.2: designators beginning with "99" are private
PRIVATE_SCHEME_NAME = "ki67node private codes"
PRIVATE_SCHEME_VERSION = "1"
PRIVATE_SCHEME_ORGANISATION = "ki67node project (open source research software)"


def _private(value: str, meaning: str) -> CodedConcept:
    # No Coding Scheme Version on the items: the version is declared once in the
    # Coding Scheme Identification Sequence, and highdicom's content search
    # (find_content_items) ignores versions, so versioned names would never match.
    return CodedConcept(value, PRIVATE_SCHEME, meaning)


def _sct(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "SCT", meaning)


def _dcm(value: str, meaning: str) -> CodedConcept:
    return CodedConcept(value, "DCM", meaning)


PRIVATE_SCHEME_IDENTIFICATION = CodingSchemeIdentificationItem(
    designator=PRIVATE_SCHEME,
    name=PRIVATE_SCHEME_NAME,
    version=PRIVATE_SCHEME_VERSION,
    responsible_organization=PRIVATE_SCHEME_ORGANISATION,
)

# -- SEG: segment description -------------------------------------------------------
# CID 7150 "Segmentation Property Category" (pydicom codes.cid7150).
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = _sct("49755003", "Morphologically Abnormal Structure")
# CID 7194 "Morphologically Abnormal Structure Segmentation Property Type", included in
# CID 7151. CID 7151/7153/7159/7194 hold no meningioma code; SNOMED CT added
# 1373614004 |Meningioma (morphologic abnormality)| only in its October 2025 release,
# too new for PACS terminology servers, so the segment is a "Neoplasm" labelled
# "Meningioma" (segment label, tracking identifier, SR tracking identifier).
NEOPLASM = _sct("108369006", "Neoplasm")
# CID 7153 "CNS Segmentation Type" (also CID 7151/7192): where meningiomas arise.
MENINGES = _sct("1231004", "Meninges")
# CID 7162 "Surface Processing Algorithm Family" (highdicom's algorithm family list).
ARTIFICIAL_INTELLIGENCE = _dcm("123110", "Artificial Intelligence")

# -- SR: document, observer, procedure ----------------------------------------------
# CID 7021 "Measurement Report Document Title".
IMAGING_MEASUREMENT_REPORT = _dcm("126000", "Imaging Measurement Report")
# CID 270 "Observer Type".
DEVICE = _dcm("121007", "Device")
# SNOMED CT procedure 241601008 |Magnetic resonance imaging of head (procedure)|
# (looked up in public SNOMED CT usages; CID 100 has no MR head/brain procedure).
MRI_OF_HEAD = _sct("241601008", "Magnetic resonance imaging of head")

# -- SR: the finding (TID 1411 / 1501 rows "Finding category", "Finding", "Finding site")
FINDING_CATEGORY = MORPHOLOGICALLY_ABNORMAL_STRUCTURE  # CID 7150 via highdicom's row
FINDING_TYPE = NEOPLASM  # CID 7194, the same concept as the SEG segment
FINDING_SITE = MENINGES  # CID 7153
# CID 245 "Laterality with Median".
LEFT = _sct("7771000", "Left")
RIGHT = _sct("24028007", "Right")
MEDIAN = _dcm("130290", "Median")
LATERALITY = {"left": LEFT, "right": RIGHT, "midline": MEDIAN}

# -- SR: measurements (TID 300 concept names and UCUM units) ---------------------------
# CID 7472 "Volume Measurement": the generic SNOMED CT volume (voxel count × voxel volume).
VOLUME = _sct("118565006", "Volume")
# CID 7470 "Linear Measurement" (IBSI L0JK): the Feret diameter of the surface that
# marching cubes would put on the mask, which is what ai_core.measure computes.
MAXIMUM_3D_DIAMETER = CodedConcept("L0JK", "IBSI", "Maximum 3D Diameter of a Mesh")
# DCM 122411 "Threshold Value" (PS3.16 Annex D): the model's decision threshold.
THRESHOLD_VALUE = _dcm("122411", "Threshold Value")
# UCUM units, as in CID 7181 "Abstract Multi-dimensional Image Model Component Unit".
CUBIC_CENTIMETER = CodedConcept("cm3", "UCUM", "cubic centimeter")
MILLIMETER = CodedConcept("mm", "UCUM", "millimeter")
NO_UNITS = CodedConcept("1", "UCUM", "no units")
RATIO = CodedConcept("{ratio}", "UCUM", "ratio")

# Private: no standard code for a predicted Ki-67 labelling index.
PROBABILITY_OUTPUT1 = _private(
    "KI67-P-OUT1", "Probability of Ki-67 labelling index >= 5 % (Output 1)"
)
PROBABILITY_OUTPUT2 = _private(
    "KI67-P-OUT2", "Probability of Ki-67 labelling index >= 5 % (Output 2)"
)

# -- SR: qualitative evaluations -----------------------------------------------------
PREDICTED_CLASS = _private("KI67-CLASS", "Predicted Ki-67 labelling index class")
KI67_HIGH = _private("KI67-GE5", "Ki-67 labelling index >= 5 %")
KI67_LOW = _private("KI67-LT5", "Ki-67 labelling index < 5 %")

GROWTH_RISK_GROUP = _private("GROWTH-RISK", "Growth-risk group")
# CID 3118 "Level of Risk".
HIGH_RISK = _sct("15508007", "High risk")
LOW_RISK = _sct("75976002", "Low risk")
RISK_GROUPS = {"high": HIGH_RISK, "low": LOW_RISK}

INPUT_MRI = _private("INPUT-MRI", "MRI input used")
INPUT_CHARACTERISTICS = _private("INPUT-CHAR", "Radiological characteristics input used")
INPUT_RADIOMICS = _private("INPUT-RADIOMICS", "Radiomics input used")
INPUTS = {"mri": INPUT_MRI, "characteristics": INPUT_CHARACTERISTICS, "radiomics": INPUT_RADIOMICS}
# CID 230 "Yes-No".
YES = _sct("373066001", "Yes")
NO = _sct("373067005", "No")

# The radiologist's characteristics. Necrosis has a standard code (CID 7159/7168/7194);
# the others do not. CID 240 "Present-Absent" values.
EDEMA_INDEX = _private("EDEMA-INDEX", "Edema index ((edema + tumour) / tumour volume)")
NECROSIS = _sct("6574001", "Necrosis")
CSF_CLEFT = _private("CSF-CLEFT", "CSF cleft sign")
CAPSULAR_ENHANCEMENT = _private("CAPSULAR-ENH", "Capsular enhancement")
CHARACTERISTIC_SIGNS = {
    "necrosis": NECROSIS,
    "csf_cleft": CSF_CLEFT,
    "capsular_enhancement": CAPSULAR_ENHANCEMENT,
}
PRESENT = _sct("52101004", "Present")
ABSENT = _sct("272519000", "Absent")
CHARACTERISTICS_SOURCE = _private("CHAR-SOURCE", "Radiological characteristics provided by")

# ai_core.measure's location is a geometric heuristic, not anatomy: private on purpose.
LOCATION = _private("LOCATION", "Tumour location (geometric heuristic)")
LOCATIONS = {
    "convexity": _private("LOC-CONVEXITY", "Convexity"),
    "falx": _private("LOC-FALX", "Falx"),
    "skull_base": _private("LOC-SKULL-BASE", "Skull base"),
}

ANALYSIS_STATUS = _private("ANALYSIS-STATUS", "Ki-67 analysis status")
ASSESSABLE = _private("ASSESSABLE", "Assessable")
NOT_ASSESSABLE = _private("NOT-ASSESSABLE", "Not assessable")
NOT_ASSESSABLE_REASON = _private("NA-REASON", "Reason not assessable")
# Lossy Image Compression is an image attribute (PS3.3 C.7.6.1.1.5); no DCM or
# SNOMED CT concept for stating it in an SR was found: private on purpose.
LOSSY_SOURCE = _private("LOSSY-SOURCE", "Source images lossy compressed")

# Growth against the patient's prior study (surveillance). No DICOM (CID 7xxx, PS3.16
# "DCM") or SNOMED CT concept for a volume change, annualised growth rate, volume
# doubling time or a growth endpoint was found: private on purpose.
PRIOR_VOLUME = _private("PRIOR-VOLUME", "Tumour volume on the prior study")
VOLUME_CHANGE = _private("VOLUME-CHANGE", "Tumour volume change since the prior study")
ANNUAL_GROWTH = _private("ANNUAL-GROWTH", "Annualised tumour volume growth rate")
DOUBLING_TIME = _private("DOUBLING-TIME", "Tumour volume doubling time")
INTERVAL = _private("PRIOR-INTERVAL", "Interval since the prior study")
GROWTH = _private("GROWTH", "Tumour growth (volume increase at or above the threshold)")
PRIOR_STUDY = _private("PRIOR-STUDY", "Prior study compared with")
PERCENT = CodedConcept("%", "UCUM", "percent")
PERCENT_PER_YEAR = CodedConcept("%/a", "UCUM", "percent per year")
YEAR = CodedConcept("a", "UCUM", "year")
DAY = CodedConcept("d", "UCUM", "day")

# TID 1500 row "Qualitative Evaluations" container (UMLS C0034375) and its TEXT item.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
COMMENT = _dcm("121106", "Comment")  # CID 12101 / TID 1500 free-text comment


def all_private() -> list[CodedConcept]:
    """Every private concept defined here (for checks and documentation)."""
    found: dict[str, CodedConcept] = {}
    for value in list(globals().values()):
        items = value.values() if isinstance(value, dict) else [value]
        for item in items:
            if _is_private(item):
                found[item.value] = item
    return list(found.values())


def _is_private(value: object) -> bool:
    return isinstance(value, CodedConcept) and value.scheme_designator == PRIVATE_SCHEME
