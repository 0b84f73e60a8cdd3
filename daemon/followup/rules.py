"""Surveillance rules that need no database: growth between two volumes, calendar
months, the scheduled / due / overdue rule, and the stored form of a comparison.

Pure functions of their arguments (``now`` is passed in), used by
:mod:`daemon.followup.surveillance`, the scheduler and the follow-up queries.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
from dataclasses import asdict
from typing import Any

from daemon.db.states import FollowupStatus
from daemon.errors import NodeError
from dicom_out.context import PriorComparison

DAYS_PER_YEAR = 365.25


class SurveillanceError(NodeError):
    """A finding or a flag cannot be recorded as given."""


# The comparison with the prior finding is dicom_out's PriorComparison (what the SR
# reports). It is stored in meningioma_findings.comparison as JSON without the
# threshold (a setting, not a measurement): these two functions are that format.
def comparison_to_json(c: PriorComparison) -> dict[str, Any]:
    """The stored form: every field but ``threshold_percent``, the date as ISO text."""
    data = asdict(c)
    del data["threshold_percent"]
    data["prior_study_date"] = d.isoformat() if (d := c.prior_study_date) else None
    return data


def comparison_from_json(data: dict[str, Any], threshold_percent: float) -> PriorComparison:
    """Back from the stored form; ``threshold_percent`` is the setting it was judged with."""
    date = data.get("prior_study_date")
    return PriorComparison(
        **{**data, "prior_study_date": dt.date.fromisoformat(date) if date else None},
        threshold_percent=threshold_percent,
    )


def compare_volumes(
    prior_volume_cm3: float,
    volume_cm3: float,
    interval_days: int | None,
    threshold_percent: float,
) -> tuple[float, bool, float | None, float | None]:
    """``(change %, grown, annual growth %, doubling time in years)``.

    The change is rounded to 6 decimals before the threshold test, so 2.0 →
    2.3 cm³ is exactly 15 % (not 14.999999…). The annual rate is compound,
    ``((V1/V0) ** (1/years) - 1) * 100``; the doubling time ``ln 2 * years /
    ln(V1/V0)`` exists only for a growing tumour; both need a positive interval.
    """
    if prior_volume_cm3 <= 0 or volume_cm3 < 0:
        raise SurveillanceError(
            f"cannot compare volumes {prior_volume_cm3} → {volume_cm3} cm³: the prior must be > 0"
        )
    ratio = volume_cm3 / prior_volume_cm3
    change = round((ratio - 1.0) * 100.0, 6)
    annual = doubling = None
    if interval_days is not None and interval_days > 0 and ratio > 0:
        years = interval_days / DAYS_PER_YEAR
        annual = (ratio ** (1.0 / years) - 1.0) * 100.0
        if ratio > 1.0:
            doubling = math.log(2.0) * years / math.log(ratio)
    return change, change >= threshold_percent, annual, doubling


def add_months(day: dt.date, months: int) -> dt.date:
    """``day`` plus calendar months (31 Jan + 1 month = 28/29 Feb)."""
    years, month0 = divmod(day.month - 1 + months, 12)
    year, month = day.year + years, month0 + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def status_at(due_date: dt.date, now: dt.datetime, grace_days: int) -> str:
    """The one rule: scheduled before the due date, due from it, overdue after the grace."""
    today = now.date()
    if today > due_date + dt.timedelta(days=grace_days):
        return FollowupStatus.OVERDUE
    return FollowupStatus.DUE if today >= due_date else FollowupStatus.SCHEDULED
