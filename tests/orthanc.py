"""A real Orthanc PACS for tests: C-STORE SCP, REST API and DICOMweb (STOW-RS).

Stable API for every test module (keep it backwards compatible):

- ``orthanc_fixture(scope="module", **options)`` — a pytest fixture factory::

      from tests.orthanc import Orthanc, orthanc_fixture
      orthanc = orthanc_fixture()          # in the test module: a module-scoped fixture

      def test_x(orthanc: Orthanc) -> None:
          orthanc.clear()                   # start from an empty PACS
          ...                               # C-STORE to (orthanc.aet, "127.0.0.1", orthanc.dicom_port)
          assert orthanc.count() == 3

  It skips with a clear message when ``/usr/sbin/Orthanc`` (or its DICOMweb
  plugin) is missing, or fails when ``KI67NODE_REQUIRE_PEERS=1`` is set.
- :class:`Orthanc` — the server itself (also usable without pytest):

  ================================  ==================================================
  ``Orthanc(root, aet="ORTHANC")``  config and storage under ``root`` (free ports picked once)
  ``start(timeout=30)``             start; returns when ``GET /system`` answers and the
                                    DICOM port accepts connections
  ``stop(timeout=15)``              SIGTERM (SIGKILL after ``timeout``); storage is kept
  ``start()`` after ``stop()``      the SAME storage and ports: simulates a PACS outage
  ``running``                       True while the process lives
  ``aet``, ``host``                 ``"ORTHANC"``, ``"127.0.0.1"``
  ``dicom_port``, ``http_port``     the ports
  ``url``                           ``http://127.0.0.1:<http_port>`` (REST API)
  ``dicomweb_url``                  ``<url>/dicom-web`` (STOW-RS base URL)
  ``instances()``                   every stored instance as :class:`StoredInstance`
                                    (SOP Instance, Series, Study and SOP Class UIDs)
  ``sop_instance_uids()``           the stored SOP Instance UIDs (a list: duplicates show)
  ``count()``                       number of stored instances (``/statistics``)
  ``clear()``                       delete every stored instance
  ``get_json(path)``                any REST ``GET``, decoded
  ``log_tail(lines=40)``            the end of Orthanc's log (for failure messages)
  ``upload(path)``                  store a Part 10 file by REST (``POST /instances``),
                                    bytes as they are; returns its Orthanc ID
  ``add_modality(name, aet, host,   register a C-STORE peer (``PUT /modalities/<name>``)
  port)``
  ``store_to(name, ids,             Orthanc as the C-STORE SCU: send resources to a
  local_aet=None)``                 registered peer, synchronously; the job's answer
  ================================  ==================================================

Orthanc listens for DICOM on all interfaces, but its HTTP API answers only
loopback clients (``RemoteAccessAllowed: false``), without authentication. It
accepts any calling/called AE title and unknown SOP classes, so no
``DicomModalities`` entry is needed for C-STORE.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port, require_tool

ORTHANC_BINARY = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
HOST = "127.0.0.1"


@dataclass(frozen=True)
class StoredInstance:
    """One instance as Orthanc holds it."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str


class OrthancError(RuntimeError):
    """Orthanc did not start, stop or answer as a test expects."""


class Orthanc:
    """One Orthanc process with its configuration and storage under ``root``."""

    def __init__(self, root: Path, *, aet: str = "ORTHANC", binary: str = ORTHANC_BINARY) -> None:
        self.root = Path(root)
        self.binary = binary
        self.aet = aet
        self.host = HOST
        self.dicom_port = free_port()
        self.http_port = free_port()
        while self.http_port == self.dicom_port:
            self.http_port = free_port()
        self.storage_dir = self.root / "storage"
        self.config_path = self.root / "orthanc.json"
        self.log_path = self.root / "orthanc.log"
        self._process: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self.storage_dir.mkdir(exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")

    # -- configuration ---------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """The Orthanc configuration written to ``orthanc.json``."""
        return {
            "Name": f"ki67node-test-{self.aet}",
            "StorageDirectory": str(self.storage_dir),
            "IndexDirectory": str(self.storage_dir),
            "StorageCompression": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "HttpDescribeErrors": True,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "UnknownSopClassAccepted": True,
            "DicomScpTimeout": 30,
            "SaveJobs": False,
            "ConcurrentJobs": 1,
            "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        }

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- life cycle ----------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start Orthanc and wait until both its HTTP API and DICOM port answer."""
        if self.running:
            return
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()/on failure
        try:
            self._process = subprocess.Popen(
                [self.binary, str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.root,
                start_new_session=True,
            )
        finally:
            log.close()  # the child keeps its own descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with code {self._process.returncode} at start-up:\n"
                    + self.log_tail()
                )
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise OrthancError(f"Orthanc did not answer within {timeout:.0f} s:\n" + self.log_tail())

    def _answers(self) -> bool:
        try:
            system = self.get_json("/system", timeout=1.0)
        except (OSError, ValueError):
            return False
        if system.get("DicomPort") != self.dicom_port:
            return False
        try:
            with socket.create_connection((self.host, self.dicom_port), timeout=1.0):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 15.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL); its storage stays for a restart."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)

    def __enter__(self) -> Orthanc:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- REST helpers ------------------------------------------------------------
    def get_json(self, path: str, timeout: float = 10.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())

    def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        request = urllib.request.Request(self.url + path, data=body, method=method)  # noqa: S310
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            data = response.read()
        return json.loads(data) if data else None

    def count(self) -> int:
        """Number of stored instances."""
        return int(self.get_json("/statistics")["CountInstances"])

    def instances(self) -> list[StoredInstance]:
        """Every stored instance with its UIDs (one REST call per instance)."""
        out = []
        for orthanc_id in self.get_json("/instances"):
            tags = self.get_json(f"/instances/{orthanc_id}/simplified-tags")
            out.append(
                StoredInstance(
                    sop_instance_uid=tags["SOPInstanceUID"],
                    series_uid=tags["SeriesInstanceUID"],
                    study_uid=tags["StudyInstanceUID"],
                    sop_class_uid=tags["SOPClassUID"],
                )
            )
        return out

    def sop_instance_uids(self) -> list[str]:
        """The stored SOP Instance UIDs, sorted; a duplicate would appear twice."""
        found = self._request(
            "POST",
            "/tools/find",
            json.dumps({"Level": "Instance", "Query": {}, "Expand": True}).encode(),
        )
        return sorted(item["MainDicomTags"]["SOPInstanceUID"] for item in found)

    def upload(self, path: Path) -> str:
        """Store a Part 10 file through the REST API, bytes as they are; its Orthanc ID."""
        answer = self._request("POST", "/instances", Path(path).read_bytes())
        return str(answer["ID"])

    def add_modality(self, name: str, aet: str, host: str, port: int) -> None:
        """Register (or update) a C-STORE peer under ``name`` (``PUT /modalities/<name>``)."""
        peer = {"AET": aet, "Host": host, "Port": port}
        self._request("PUT", f"/modalities/{name}", json.dumps(peer).encode())

    def store_to(
        self, name: str, resources: list[str], *, local_aet: str | None = None
    ) -> dict[str, Any]:
        """Orthanc as the C-STORE SCU: send ``resources`` (Orthanc IDs) to the peer ``name``.

        Synchronous: returns when the job ended, with its answer (``InstancesCount``,
        ``FailedInstancesCount``...). ``local_aet``: the calling AE title (default: :attr:`aet`).
        """
        body: dict[str, Any] = {"Resources": resources, "Synchronous": True}
        if local_aet is not None:
            body["LocalAet"] = local_aet
        answer: dict[str, Any] = self._request(
            "POST", f"/modalities/{name}/store", json.dumps(body).encode()
        )
        return answer

    def clear(self) -> None:
        """Delete every stored study (a fresh, empty PACS on the same ports)."""
        for study in self.get_json("/studies"):
            self._request("DELETE", f"/studies/{study}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def require_orthanc() -> str:
    """The Orthanc binary; skip (or fail under KI67NODE_REQUIRE_PEERS=1) without it."""
    binary = ORTHANC_BINARY
    if not os.access(binary, os.X_OK):
        binary = require_tool("Orthanc")  # on PATH elsewhere, or skip/fail with the install hint
    if not DICOMWEB_PLUGIN.is_file():
        msg = f"the Orthanc DICOMweb plugin {DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)"
        if os.environ.get("KI67NODE_REQUIRE_PEERS"):
            pytest.fail(msg)
        pytest.skip(msg)
    return binary


def orthanc_fixture(scope: str = "module", aet: str = "ORTHANC") -> Callable[..., Any]:
    """A pytest fixture (assign it to a module-level name) yielding a running :class:`Orthanc`."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
        binary = require_orthanc()
        server = Orthanc(tmp_path_factory.mktemp("orthanc"), aet=aet, binary=binary)
        server.start()
        try:
            yield server
        finally:
            server.stop()

    return orthanc
