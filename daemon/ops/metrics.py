"""Prometheus metrics of the main process (listener, scheduler, supervisor).

Counters live in one registry, named here once. Gauges that describe the
database (jobs by state, series by decision, outbox backlog, stage latencies)
are read at scrape time by :class:`DatabaseCollector`, which the HTTP status
server (``daemon.ops.http``) registers in its own registry next to this one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from daemon import __version__
from daemon.errors import NodeError

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)
# process_resident_memory_bytes, process_open_fds, process_cpu_seconds_total...
ProcessCollector(registry=REGISTRY)
BUILD_INFO = Info("ki67node_build", "version of the running daemon", registry=REGISTRY)
BUILD_INFO.info({"version": __version__})

ASSOCIATIONS = Counter(
    "ki67node_associations", "DICOM associations by outcome", ["outcome"], registry=REGISTRY
)
ACTIVE_ASSOCIATIONS = Gauge(
    "ki67node_active_associations", "DICOM associations open now", registry=REGISTRY
)
INSTANCES_RECEIVED = Counter(
    "ki67node_instances_received", "instances stored in the spool", registry=REGISTRY
)
BYTES_RECEIVED = Counter(
    "ki67node_received_bytes", "bytes of instances stored in the spool", registry=REGISTRY
)
REJECTIONS = Counter(
    "ki67node_rejections",
    "C-STORE requests answered with a failure status, and refused connections",
    ["reason"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "ki67node_duplicate_instances", "instances received again", ["kind"], registry=REGISTRY
)
STORE_SECONDS = Histogram(
    "ki67node_store_seconds",
    "time to validate, spool and record one instance",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1, 5),
    registry=REGISTRY,
)


# -- gauges read from the database at scrape time --------------------------------

StatusSource = Callable[[], Mapping[str, Any]]


class DatabaseCollector(Collector):
    """Turns the status report (``daemon.ops.status``) into gauges at scrape time.

    ``source`` returns the report or raises; a failing database never fails
    the scrape, it sets ``ki67node_database_up`` to 0 and yields nothing else
    from the database.
    """

    def __init__(self, source: StatusSource) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        return []  # names depend on the data; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        started = time.perf_counter()
        report: Mapping[str, Any] | None
        try:
            report = self._source()
        except (NodeError, OSError) as exc:
            log.warning("metrics: database unavailable: %s", exc)
            report = None
        ok = report is not None and report.get("database", {}).get("state") == "ok"
        up = GaugeMetricFamily("ki67node_database_up", "1 when the database answered the scrape")
        up.add_metric([], 1.0 if ok else 0.0)
        yield up
        if ok and report is not None:
            yield from _report_metrics(report)
        took = GaugeMetricFamily(
            "ki67node_database_scrape_seconds", "time spent reading the database for this scrape"
        )
        took.add_metric([], time.perf_counter() - started)
        yield took


def _gauge(name: str, doc: str, labels: list[str], samples: Iterable[tuple[Any, ...]]) -> Metric:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for *label_values, value in samples:
        family.add_metric([str(v) for v in label_values], float(value))
    return family


def _report_metrics(report: Mapping[str, Any]) -> Iterator[Metric]:
    yield _gauge(
        "ki67node_series",
        "series by state",
        ["state"],
        report["series"]["by_state"].items(),
    )
    dec = report["decisions"]
    yield _gauge(
        "ki67node_series_by_decision",
        "series by their latest decision (qualifies = T1C MP-RAGE sent to the pipeline)",
        ["decision"],
        [(k, dec[k]) for k in ("qualifies", "rejected", "undecided")],
    )
    yield _gauge(
        "ki67node_series_decision_reasons",
        "latest decision per series, by reason (most frequent reasons only)",
        ["qualifies", "reason"],
        [(str(r["qualifies"]).lower(), r["reason"], r["count"]) for r in dec["top_reasons"]],
    )
    yield _gauge("ki67node_jobs", "jobs by state", ["state"], report["jobs"]["by_state"].items())
    outbox = report["outbox"]
    yield _gauge(
        "ki67node_outbox_items",
        "outbox items by destination and state",
        ["destination", "state"],
        [
            (dest, state, n)
            for dest, states in sorted(outbox["by_destination"].items())
            for state, n in sorted(states.items())
        ],
    )
    yield _gauge(
        "ki67node_outbox_backlog",
        "outbox items waiting for delivery (pending; failed items are counted by state)",
        [],
        [(outbox["backlog"],)],
    )
    storage = report["storage"]
    yield _gauge("ki67node_studies_stored", "studies in the database", [], [(storage["studies"],)])
    yield _gauge(
        "ki67node_instances_stored", "instances in the spool", [], [(storage["instances"],)]
    )
    yield _gauge(
        "ki67node_stored_bytes", "bytes of instances in the spool", [], [(storage["bytes"],)]
    )
    yield _gauge(
        "ki67node_quarantined_instances",
        "second copies of known SOP Instance UIDs with a different data set, kept aside",
        [],
        [(storage["quarantined"],)],
    )
    latency = report["stage_latency_seconds"]
    yield _gauge(
        "ki67node_stage_latency_seconds",
        "per-stage job latency over the most recent finished jobs (quantile 1 = max)",
        ["stage", "quantile"],
        [
            (stage, q, v[key])
            for stage, v in latency.items()
            for q, key in (("0.5", "p50"), ("0.9", "p90"), ("1", "max"))
        ],
    )
    yield _gauge(
        "ki67node_stage_latency_jobs",
        "number of recent finished jobs behind ki67node_stage_latency_seconds",
        ["stage"],
        [(stage, v["jobs"]) for stage, v in latency.items()],
    )
