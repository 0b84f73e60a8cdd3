"""Prometheus metrics of the main process (listener, scheduler, supervisor).

Counters live in one registry, named here once. Gauges that describe the
database (jobs by state, series by decision, outbox backlog) are collected at
scrape time from the database by the HTTP server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

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
