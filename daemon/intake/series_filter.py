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
8. slice thickness and spacing ≤ the limit; enough slices or frames;
9. not lossy compressed (Lossy Image Compression 01, or a lossy transfer
   syntax), unless ``filter.accept_lossy``.

Every check records its evidence in ``details`` (JSON-safe, stored with the
decision); ``reason`` names the first rule that failed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from daemon.intake.filter_rules import CHECKS, SeriesView
from daemon.intake.filter_values import as_text, json_safe, series_geometry
from daemon.settings import FilterSettings

REASON_MAX = 255  # series_decisions.reason column


@dataclass(frozen=True)
class FilterVerdict:
    """Whether a series goes to the pipeline, the rule that decided, and the evidence."""

    qualifies: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


def decide_series(headers: Sequence[Mapping[str, Any]], cfg: FilterSettings) -> FilterVerdict:
    """Decide whether one series is a T1C MP-RAGE; never raises on odd header values."""
    rows = [h if isinstance(h, Mapping) else {} for h in headers]
    if not rows:
        return FilterVerdict(False, "no instances in the series", {"checks": {}, "instances": 0})
    series = SeriesView(rows, rows[0], series_geometry(rows), cfg)
    checks = {name: check(series) for name, check in CHECKS}
    details: dict[str, Any] = {
        "instances": len(rows),
        "manufacturer": as_text(series.first.get("Manufacturer")) or None,
        "checks": {n: {"ok": c.ok, "evidence": json_safe(c.evidence)} for n, c in checks.items()},
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
    lossy = checks["lossless"].evidence
    if isinstance(lossy, dict):
        reason += f", lossy compressed ({lossy['lossy'][0]}; accepted)"
    return FilterVerdict(True, reason[:REASON_MAX], details)
