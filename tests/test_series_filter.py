"""The T1C MP-RAGE series filter over Siemens, GE and Philips variants and distractors."""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import random
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from daemon.intake.headers import extract_header
from daemon.intake.series_filter import CHECKS, FilterVerdict, decide_series
from daemon.settings import FilterSettings
from lab.synth.vendors import VENDORS, description_variants
from tests.factories import make_mr_series, make_study

N_SLICES = 10
CFG = FilterSettings(min_slices=N_SLICES)
CHECK_NAMES = {
    "storage_class",
    "modality",
    "consistency",
    "original",
    "localizer",
    "geometry",
    "acquisition_3d",
    "gradient_echo",
    "inversion_prep",
    "t1_weighting",
    "contrast",
    "slice_thickness",
    "slice_count",
    "lossless",
}


def headers_of(datasets: list[Dataset]) -> list[dict[str, Any]]:
    """Header summaries as the listener makes them: from the encoded bytes."""
    out = []
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out.append(extract_header(dcmread(io.BytesIO(buf.getvalue()))))
    return out


def series_headers(vendor: str = "siemens", kind: str = "t1c_mprage", **kw: Any) -> list[dict]:
    kw.setdefault("n_slices", N_SLICES)
    return headers_of(make_mr_series(vendor, kind, **kw))


def decide(headers: list[Any], cfg: FilterSettings = CFG) -> FilterVerdict:
    decision = decide_series(headers, cfg)
    json.dumps(decision.details, allow_nan=False)  # stored in the database as JSON
    assert len(decision.reason) <= 255
    return decision


@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
@pytest.mark.parametrize("orientation", ["sag", "axial"], ids=["sag", "axial"])
@pytest.mark.parametrize("vendor", VENDORS, ids=VENDORS)
def test_t1c_mprage_qualifies(vendor: str, orientation: str, enhanced: bool) -> None:
    headers = series_headers(vendor, orientation=orientation, enhanced=enhanced)
    decision = decide(headers)
    assert decision.qualifies, decision.reason
    assert decision.reason.startswith("T1C MP-RAGE")
    assert set(decision.details["checks"]) == CHECK_NAMES
    assert all(c["ok"] is not False for c in decision.details["checks"].values())
    assert decision.details["checks"]["slice_count"]["evidence"] == N_SLICES


DISTRACTORS = [
    ("t1_mprage_pre", "contrast", "no contrast documented"),
    ("t2_tse", "acquisition_3d", "not 3D (MRAcquisitionType 2D)"),
    ("flair_3d", "gradient_echo", "spin echo, not gradient echo"),
    ("flair_2d", "acquisition_3d", "not 3D (MRAcquisitionType 2D)"),
    ("dwi", "acquisition_3d", "not 3D (MRAcquisitionType 2D)"),
    ("localizer", "localizer", "localizer"),
    ("mpr_derived", "original", "derived image"),
    ("t1c_thick_2d", "acquisition_3d", "not 3D (MRAcquisitionType 2D)"),
]


@pytest.mark.parametrize("enhanced", [False, True], ids=["classic", "enhanced"])
@pytest.mark.parametrize(("kind", "rule", "reason"), DISTRACTORS, ids=[d[0] for d in DISTRACTORS])
@pytest.mark.parametrize("vendor", VENDORS, ids=VENDORS)
def test_distractors_are_rejected_with_their_rule(
    vendor: str, kind: str, rule: str, reason: str, enhanced: bool
) -> None:
    decision = decide(series_headers(vendor, kind, enhanced=enhanced))
    assert not decision.qualifies
    assert decision.reason.startswith(reason), decision.reason
    assert decision.details["decided_by"] == rule


def test_3d_flair_is_rejected_even_with_contrast_and_thin_slices() -> None:
    """SPACE/CUBE/VISTA FLAIR are 3D, thin and IR-prepared, but spin echo."""
    for vendor in VENDORS:
        headers = series_headers(vendor, "flair_3d", overrides={"SeriesDescription": "FLAIR +C"})
        decision = decide(headers)
        assert decision.reason.startswith("spin echo, not gradient echo (ScanningSequence SE")
        assert decision.details["checks"]["contrast"]["ok"] is True


@pytest.mark.parametrize(
    ("sop_class", "modality", "name"),
    [
        ("1.2.840.10008.5.1.4.1.1.66.4", "SEG", "Segmentation Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.33", "SR", "Comprehensive SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.2", "CT", "CT Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.7", "MR", "Secondary Capture Image Storage"),
    ],
    ids=["seg", "sr", "ct", "secondary-capture"],
)
def test_non_mr_storage_is_rejected(sop_class: str, modality: str, name: str) -> None:
    headers = series_headers()
    for h in headers:
        h["SOPClassUID"], h["Modality"] = sop_class, modality
    decision = decide(headers)
    assert decision.reason == f"not MR image storage ({name})"


def test_mr_storage_with_another_modality_is_rejected() -> None:
    headers = series_headers()
    for h in headers:
        h["Modality"] = "OT"
    assert decide(headers).reason == "not MR (Modality OT)"


@pytest.mark.parametrize("vendor", VENDORS, ids=VENDORS)
def test_every_site_naming_convention_carries_contrast(vendor: str) -> None:
    for variant, description in enumerate(description_variants(vendor, "t1c_mprage")):
        headers = series_headers(vendor, variant=variant, contrast_evidence="description")
        decision = decide(headers)
        assert decision.qualifies, (description, decision.reason)
        evidence = decision.details["checks"]["contrast"]["evidence"]
        assert "ContrastBolusAgent" not in evidence and evidence["SeriesDescription"]


@pytest.mark.parametrize(
    ("evidence", "qualifies", "found"),
    [
        ("description", True, {"SeriesDescription"}),
        ("agent", True, {"ContrastBolusAgent"}),
        ("both", True, {"SeriesDescription", "ContrastBolusAgent"}),
        ("none", False, set()),
    ],
    ids=["description-only", "agent-only", "both", "none"],
)
def test_where_contrast_is_documented(evidence: str, qualifies: bool, found: set[str]) -> None:
    decision = decide(series_headers("siemens", contrast_evidence=evidence))
    assert decision.qualifies is qualifies
    check = decision.details["checks"]["contrast"]
    if qualifies:
        assert set(check["evidence"]) == found
    else:
        assert decision.reason.startswith("no contrast documented")


@pytest.mark.parametrize(
    ("description", "agent", "expected"),
    [
        ("T1_MPRAGE_SAG_POSTOP", None, "no contrast documented"),  # post-operative, not "post"
        ("t1_mprage_sag_space", None, "no contrast documented"),  # "ce" inside a word
        ("T1 MPRAGE GDPR", None, "no contrast documented"),
        ("t1_mprage_sag_nativ", "Gadovist", "pre-contrast series"),  # exam-wide agent entry
        ("T1 MPRAGE ohne KM", "Gadovist", "pre-contrast series"),
        ("T1 MPRAGE w/o contrast", None, "pre-contrast series"),
        ("t1_mprage_sag", "NONE", "no contrast documented"),
        ("T1+C MPRAGE", None, "T1C MP-RAGE"),
        ("mprage post-contrast", None, "T1C MP-RAGE"),
        ("MPRAGE KONTRAST", None, "T1C MP-RAGE"),
    ],
    ids=[
        "postop",
        "ce-in-word",
        "gd-in-word",
        "nativ-beats-agent",
        "ohne-km",
        "w/o-contrast",
        "agent-NONE",
        "glued-plus-c",
        "hyphenated",
        "german",
    ],
)
def test_contrast_keywords_match_whole_tokens(
    description: str, agent: str | None, expected: str
) -> None:
    headers = series_headers("siemens", contrast_evidence="none")
    for h in headers:
        h["SeriesDescription"] = h["ProtocolName"] = description
        if agent is not None:
            h["ContrastBolusAgent"] = agent
    assert decide(headers).reason.startswith(expected)


def test_ge_exam_protocol_name_does_not_decide_contrast() -> None:
    """GE's ProtocolName names the exam ("BRAIN PRE/POST"), not the series."""
    headers = series_headers("ge", "t1_mprage_pre")
    for h in headers:
        h["ProtocolName"] = "BRAIN MENINGIOMA POST GD"
    assert decide(headers).reason.startswith("no contrast documented")
    for h in headers:
        del h["SeriesDescription"]
    assert decide(headers).qualifies  # no description: the protocol is all there is


def test_enhanced_contrast_administered_no_rejects() -> None:
    headers = series_headers("siemens", enhanced=True, contrast_evidence="none")
    headers[0]["ContrastBolusAdministered"] = "NO"
    assert decide(headers).reason == "no contrast (ContrastBolusAgentAdministered NO)"


def test_require_contrast_false_accepts_pre_contrast_mprage() -> None:
    cfg = FilterSettings(min_slices=N_SLICES, require_contrast=False)
    decision = decide(series_headers("ge", "t1_mprage_pre"), cfg)
    assert decision.qualifies
    assert decision.details["checks"]["contrast"]["evidence"]["required"] is False


def test_slice_thickness_limit() -> None:
    headers = series_headers("philips")
    decision = decide(headers, FilterSettings(min_slices=N_SLICES, max_slice_thickness_mm=0.8))
    assert decision.reason == "slices too thick (1 mm > 0.8 mm)"
    assert decide(
        headers, FilterSettings(min_slices=N_SLICES, max_slice_thickness_mm=1.0)
    ).qualifies


def test_gaps_between_thin_slices_are_rejected() -> None:
    headers = series_headers("siemens", spacing=(1.0, 1.0, 3.0))
    for h in headers:
        h["SliceThickness"] = 1.0
    assert decide(headers).reason == "slice spacing too large (3 mm > 1.5 mm)"


def test_min_slices_default_rejects_a_short_series() -> None:
    decision = decide(series_headers(n_slices=16), FilterSettings())
    assert decision.reason == "too few slices (16 < 64)"


def test_mixed_orientations_are_rejected() -> None:
    frame = "1.2.3.4"
    same = {"SeriesDescription": "t1_mprage_p2_iso_KM", "ProtocolName": "t1_mprage_p2_iso_KM"}
    sag = series_headers(n_slices=5, frame_of_reference_uid=frame, overrides=same)
    axial = series_headers(
        orientation="axial", n_slices=5, frame_of_reference_uid=frame, overrides=same
    )
    assert decide(sag + axial).reason == "mixed orientations (2 different ImageOrientationPatient)"


def test_inconsistent_headers_are_rejected() -> None:
    headers = series_headers()
    headers[3]["SeriesDescription"] = "something else"
    headers[4]["Rows"] = 64
    assert decide(headers).reason == (
        "inconsistent headers (SeriesDescription, Rows differs between instances)"
    )


def test_repeated_positions_are_rejected() -> None:
    headers = series_headers()
    assert decide(headers + copy.deepcopy(headers[:3])).reason.startswith(
        "repeated slice positions (13 slices at 10 positions)"
    )


def test_plain_gradient_echo_without_inversion_is_rejected() -> None:
    """GE FSPGR without IR prep, Siemens VIBE-like fl3d: T1 3D GRE but not MP-RAGE."""
    ge = series_headers("ge")
    for h in ge:
        h["ScanOptions"] = ["FAST_GEMS", "EDR_GEMS"]
        h.pop("InversionTime")
    assert decide(ge).reason.startswith("no inversion preparation")
    vibe = series_headers("siemens")
    for h in vibe:
        h.update(SequenceVariant=["SK", "SP", "OSP"], ScanningSequence="GR", SequenceName="*fl3d1")
        h.pop("ScanOptions")
        h.pop("InversionTime")
    assert decide(vibe).reason.startswith("no inversion preparation")


def test_long_echo_time_is_not_t1() -> None:
    headers = series_headers()
    for h in headers:
        h["EchoTime"] = 20.0
    assert decide(headers).reason == "not T1-weighted (EchoTime 20 ms)"


@pytest.mark.parametrize(
    ("vendor", "change", "expected"),
    [
        ("siemens", {"MRAcquisitionType": None}, "T1C MP-RAGE"),  # '*tfl3d1_16ns' says 3D
        ("philips", {"MRAcquisitionType": None}, "not 3D (MRAcquisitionType missing)"),
        ("siemens", {"SliceThickness": "abc"}, "T1C MP-RAGE"),  # measured from positions
        ("siemens", {"SliceThickness": "1,0"}, "T1C MP-RAGE"),
        ("siemens", {"EchoTime": "n/a"}, "T1C MP-RAGE"),
        ("siemens", {"ImageType": "ORIGINAL\\PRIMARY\\M\\ND"}, "T1C MP-RAGE"),
        ("siemens", {"ScanningSequence": "GR\\IR"}, "T1C MP-RAGE"),
        ("siemens", {"ScanningSequence": []}, "sequence type unknown"),
        ("siemens", {"ImageOrientationPatient": [1, 0]}, "no image orientation"),
        ("siemens", {"ImagePositionPatient": None}, "slice positions missing"),
        ("siemens", {"Rows": "32"}, "T1C MP-RAGE"),
        ("siemens", {"SOPClassUID": None, "Modality": None}, "T1C MP-RAGE"),
        ("ge", {"InversionTime": float("nan"), "ScanOptions": "FAST_GEMS"}, "no inversion prep"),
        ("siemens", {"NumberOfFrames": "many"}, "T1C MP-RAGE"),
    ],
    ids=[
        "no-acq-type-siemens",
        "no-acq-type-philips",
        "thickness-text",
        "thickness-comma",
        "te-text",
        "imagetype-string",
        "scanseq-string",
        "scanseq-empty",
        "iop-short",
        "no-ipp",
        "rows-string",
        "no-sop-class",
        "ti-nan",
        "frames-text",
    ],
)
def test_missing_and_odd_values(vendor: str, change: dict[str, Any], expected: str) -> None:
    headers = series_headers(vendor)
    for h in headers:
        for key, value in change.items():
            if value is None:
                h.pop(key, None)
            else:
                h[key] = value
    assert decide(headers).reason.startswith(expected)


def test_unreadable_instance_header_is_named() -> None:
    headers = series_headers()
    headers[2] = {"unreadable": "InvalidDicomError"}
    decision = decide(headers)
    assert decision.reason == "unreadable instance header (InvalidDicomError)"


def test_empty_and_garbage_input_never_raises() -> None:
    assert decide([]).reason == "no instances in the series"
    assert not decide([{}]).qualifies
    assert not decide([None, 3, "x"]).qualifies
    rng = random.Random(1234)
    odd: list[Any] = [
        None,
        "",
        [],
        {},
        "abc",
        -1,
        0,
        1e308,
        float("inf"),
        ["x", None],
        "\\\\",
        True,
    ]
    base = series_headers("ge", enhanced=False)
    keys = sorted({k for h in base for k in h})
    for _ in range(300):
        headers = copy.deepcopy(base)
        for _ in range(rng.randint(1, 5)):
            target = headers if rng.random() < 0.5 else [rng.choice(headers)]
            key, value = rng.choice(keys), rng.choice(odd)
            for h in target:
                h[key] = copy.deepcopy(value)
        decision = decide(headers)
        assert isinstance(decision.qualifies, bool) and decision.reason


def test_details_list_every_check_with_evidence() -> None:
    decision = decide(series_headers("philips"))
    checks = decision.details["checks"]
    assert [name for name, _ in CHECKS] == list(checks)
    assert checks["inversion_prep"]["evidence"] == [
        "SequenceVariant MP",
        "PhilipsScanningTechnique T1TFE",
    ]
    assert checks["gradient_echo"]["evidence"] == "ScanningSequence GR"
    assert checks["contrast"]["evidence"] == {"SeriesDescription": ["+c"]}
    assert checks["slice_thickness"]["evidence"]["thickness_mm"] == 1.0
    assert decision.details["manufacturer"] == "Philips Medical Systems"


def test_study_has_exactly_one_qualifying_series() -> None:
    study = make_study("siemens", n_slices=N_SLICES)
    qualifying = [kind for kind, s in study.items() if decide(headers_of(s)).qualifies]
    assert qualifying == ["t1c_mprage"]


@pytest.mark.parametrize(
    ("lossy_flag", "syntax", "lossy"),
    [
        (None, "1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1) transfer syntax"),
        ("01", "1.2.840.10008.1.2.1", "Lossy Image Compression 01"),  # lossy once, lossy always
        ("00", "1.2.840.10008.1.2.4.91", None),  # JPEG 2000 used losslessly, and it says so
        (None, "1.2.840.10008.1.2.4.90", None),  # JPEG 2000 lossless only
    ],
    ids=["jpeg-baseline", "flag-01", "j2k-flag-00", "j2k-lossless"],
)
def test_lossy_series_is_refused_unless_accepted(
    lossy_flag: str | None, syntax: str, lossy: str | None
) -> None:
    headers = series_headers()
    for h in headers:
        h["TransferSyntaxUID"] = syntax
        if lossy_flag is not None:
            h["LossyImageCompression"] = lossy_flag
    refused = decide(headers)
    accepted = decide(headers, dataclasses.replace(CFG, accept_lossy=True))
    assert accepted.qualifies, accepted.reason
    if lossy is None:
        assert refused.qualifies and "lossy" not in refused.reason
        return
    assert not refused.qualifies and refused.details["decided_by"] == "lossless"
    assert refused.reason == f"lossy compressed ({lossy}; filter.accept_lossy is false)"
    assert accepted.reason.endswith(f"lossy compressed ({lossy}; accepted)")


def test_header_summary_records_the_transfer_syntax() -> None:
    (header,) = headers_of(make_mr_series(n_slices=1))
    assert header["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
