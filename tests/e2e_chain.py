"""Shared parts of the PACS → node → Orthanc end-to-end tests.

Stable API for the e2e test modules:

- :func:`node_for` — a started ``ki67node serve`` (:class:`DaemonProcess`) whose
  only destination is the given Orthanc, with short stability and retry times.
- :func:`storescu` — send a folder (recursively) with DCMTK, proposing only the
  SOP classes of its files (SEG is not in storescu's default list).
- :func:`wait_for` — poll a condition; on timeout fail with a log tail.
- :func:`download` — one instance from Orthanc's REST API by SOP Instance UID.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom

from tests.conftest import require_tool
from tests.daemon_process import DaemonProcess, clean_env
from tests.orthanc import Orthanc

PROCESS_TIMEOUT_SECONDS = 420.0  # two shared cores: load models, segment, radiomics, build


@contextmanager
def node_for(folder: Path, orthanc: Orthanc) -> Iterator[DaemonProcess]:
    daemon = DaemonProcess(
        folder,
        settings={
            "ingest": {"series_stable_seconds": 2, "sweep_interval_seconds": 0.5},
            "pipeline": {"workers": 1, "device": "cpu"},
            "delivery": {"poll_seconds": 0.5, "retry_initial_seconds": 1, "retry_max_seconds": 2},
            "destinations": [
                {
                    "name": "pacs",
                    "type": "dicom",
                    "ae_title": orthanc.aet,
                    "host": orthanc.host,
                    "port": orthanc.dicom_port,
                }
            ],
        },
    )
    try:
        daemon.start()
        yield daemon
    finally:
        if daemon.running():
            daemon.stop()
        daemon.cleanup()


def storescu(node: DaemonProcess, folder: Path) -> None:
    # -R: propose only the SOP classes of the files (SEG is not in storescu's default list)
    cmd = [require_tool("storescu"), "-R", "-aet", "PACS", "-aec", node.ae_title, "+sd", "+r"]
    cmd += ["127.0.0.1", str(node.dicom_port), str(folder)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr


def wait_for(what: str, check: Callable[[], bool], timeout: float, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what}:\n{log()}")


def download(orthanc: Orthanc, sop_uid: str, folder: Path) -> Path:
    """One instance from Orthanc (lookup by SOP Instance UID, then /file) into ``folder``."""
    request = urllib.request.Request(
        f"{orthanc.url}/tools/lookup", data=sop_uid.encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - loopback
        ids = json.loads(answer.read())
    instance_id = next(x["ID"] for x in ids if x["Type"] == "Instance")
    with urllib.request.urlopen(  # noqa: S310 - loopback
        f"{orthanc.url}/instances/{instance_id}/file", timeout=30
    ) as answer:
        data = answer.read()
    target = folder / f"{sop_uid}.dcm"
    target.write_bytes(data)
    return target


def study_uid_of(folder: Path) -> str:
    first = next(folder.rglob("*.dcm"))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
