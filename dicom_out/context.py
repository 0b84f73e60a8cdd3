"""What every builder reads: the source series, the image-pipeline result,
the prediction, and the job key every output UID is derived from.

A retry of the same job builds objects with the same UIDs (the key is the
same), so the PACS never sees a duplicate series; a new revision of the
inputs (late instances, the radiologist's characteristics, a corrected SEG)
has a new key, new UIDs, and its SR names its predecessor.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset

from ai_core.analysis import ImageAnalysis
from ai_core.model.predict import Prediction
from ai_core.volume import Volume

ALGORITHM_NAME = "ki67node"
MANUFACTURER = "ki67node (open source research software)"
# Series numbers of what we add to a study: high, so they sort after the scanner's.
SERIES_NUMBER_SEG = 9901
SERIES_NUMBER_SC = 9902
SERIES_NUMBER_SR = 9903


# Our namespace for name-based (version 5) UUIDs; the UID is 2.25.<the UUID as an integer>
# (PS3.5 B.2), so no organisation root is needed and the same name gives the same UID.
UID_NAMESPACE = uuid.UUID("5c1f3a1e-6b0e-4d44-9a0b-6b69363736f6")


def derived_uid(*parts: str) -> str:
    """A UID derived from ``parts`` alone: the same parts always give the same UID."""
    if not parts or not all(parts):
        raise OutputError("derived_uid: needs at least one non-empty part")
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"


class OutputError(ValueError):
    """A DICOM output cannot be built from what was given; the message says why."""


@dataclass(frozen=True)
class Predecessor:
    """An earlier SR of the same series this one amends."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


@dataclass(frozen=True)
class PriorComparison:
    """The same patient's meningioma on an earlier study (surveillance): what the SR reports."""

    prior_study_uid: str
    prior_study_date: dt.date | None
    prior_volume_cm3: float
    volume_cm3: float
    interval_days: int | None
    change_percent: float
    grown: bool
    threshold_percent: float  # growth = a volume increase of at least this much
    annual_growth_percent: float | None = None
    doubling_time_years: float | None = None


@dataclass(frozen=True, eq=False)
class OutputContext:
    """Everything the SEG, SC and SR builders need for one analysed series.

    ``source`` holds the source series' instances as read (pixel data may be
    absent): one dataset per slice for a classic series, one multi-frame
    dataset for Enhanced MR. ``volume`` and ``analysis`` come from
    :func:`ai_core.analysis.analyse_series` on that series; ``prediction`` is
    None when the analysis was not assessable.
    """

    source: tuple[Dataset, ...]
    volume: Volume
    analysis: ImageAnalysis
    prediction: Prediction | None
    job_key: str  # e.g. "<series uid>/r<revision>": the same for every retry of a job
    software_version: str
    created: dt.datetime = field(default_factory=lambda: dt.datetime.now().replace(microsecond=0))
    characteristics_source: str = "not provided"  # who gave the characteristics
    predecessor: Predecessor | None = None
    prior: PriorComparison | None = None  # growth against the patient's earlier study

    def __post_init__(self) -> None:
        if not self.source:
            raise OutputError("source: the source series has no instances")
        if not self.job_key:
            raise OutputError("job_key: must not be empty (output UIDs derive from it)")
        studies = {str(ds.get("StudyInstanceUID", "")) for ds in self.source}
        if len(studies) != 1 or "" in studies:
            raise OutputError("source: every instance must carry the same StudyInstanceUID")
        for ds in self.source:
            add_missing_type2(ds)

    @property
    def first(self) -> Dataset:
        return self.source[0]

    @property
    def study_uid(self) -> str:
        return str(self.first.StudyInstanceUID)

    @property
    def source_series_uid(self) -> str:
        return str(self.first.SeriesInstanceUID)

    def uid(self, *parts: str) -> str:
        """A UID (2.25 form) derived from the job key and ``parts``: stable across retries."""
        return derived_uid(self.job_key, *parts)

    @functools.cached_property
    def seg_key(self) -> str:
        """The SEG's UIDs derive from the source series and the mask itself, not the job:
        a re-run that finds the same mask (new characteristics, late duplicate) names the
        same SEG, which the outbox then does not send again; a changed mask is a new SEG."""
        mask = self.analysis.mask_source
        if mask is None:
            raise OutputError("seg_key: the analysis has no mask (not assessable)")
        digest = hashlib.sha256(np.ascontiguousarray(mask != 0).tobytes())
        digest.update(repr(mask.shape).encode())
        seg = self.analysis.segmentation
        return derived_uid(
            self.source_series_uid, "seg", digest.hexdigest(), seg.backend, seg.version
        )

    @property
    def seg_series_uid(self) -> str:
        return derived_uid(self.seg_key, "series")

    @property
    def seg_instance_uid(self) -> str:
        return derived_uid(self.seg_key, "instance")

    @property
    def sc_series_uid(self) -> str:
        return self.uid("sc", "series")

    def sc_instance_uid(self, index: int) -> str:
        return self.uid("sc", "instance", str(index))

    @property
    def sr_series_uid(self) -> str:
        return self.uid("sr", "series")

    @property
    def sr_instance_uid(self) -> str:
        return self.uid("sr", "instance")


def copy_patient_study(source: Dataset, target: Dataset, names: Sequence[str] = ()) -> None:
    """Copy the Patient, General Study and Patient Study attributes (plus ``names``)."""
    for keyword in (*PATIENT_STUDY_KEYWORDS, *names):
        if keyword in source:
            target[keyword] = source[keyword]


# Type 2 attributes of the Patient and General Study modules: a scanner or PACS may
# leave them out; our objects must carry them (empty), and the builders may read them.
TYPE2_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)


def add_missing_type2(ds: Dataset) -> None:
    """Give ``ds`` an empty value for each absent Type 2 patient/study attribute."""
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, None)


PATIENT_STUDY_KEYWORDS = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "OtherPatientIDsSequence",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDescription",
)
