"""Run a real ``ki67node serve`` as a child process (end-to-end tests, bench).

:class:`DaemonProcess` writes a TOML config into its folder (free DICOM and
HTTP ports on 127.0.0.1, ``data_dir`` inside the folder), starts the daemon
with stdout and stderr captured to a log file, waits until a C-ECHO is
answered and ``/healthz`` says 200, and stops it with SIGTERM (asserting exit
code 0 within the stop timeout) or ``kill -9``. The daemon runs in its own
session so a test can signal it (or its whole process group) alone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECONDS = 60.0
UNIT_FILE = REPO_ROOT / "systemd" / "ki67node.service"
DEFAULT_STOP_TIMEOUT_SECONDS = 90.0
HTTP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.1
ECHO_TIMEOUT_SECONDS = 5.0
EXIT_OK = 0
HTTP_OK = 200
LOG_TAIL_CHARS = 4000
SCU_AET = "E2ESCU"
# One line of a storescu ``-v`` log: a file being sent, or the status of its answer. DCMTK
# writes "(Success)", pynetdicom's app "(Status: 0x0000 - Success)".
_STORE_LOG_RE = re.compile(
    r"Sending file: (?P<file>\S+)"
    r"|Received Store Response \((?:Status: 0x0000 - )?(?P<status>[^)]*)\)"
)


def unit_stop_timeout(unit: Path = UNIT_FILE) -> float:
    """``TimeoutStopSec`` of the shipped systemd unit (seconds): SIGTERM must finish in it."""
    match = re.search(r"^TimeoutStopSec=(\d+)s?\s*$", _read(unit), re.MULTILINE)
    return float(match.group(1)) if match else DEFAULT_STOP_TIMEOUT_SECONDS


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


STOP_TIMEOUT_SECONDS = unit_stop_timeout()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(value: Any) -> str:
    """A Python value as a TOML literal (bool, number, string, list of those)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Path):
        value = str(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, sections: dict[str, Any]) -> Path:
    """Write ``{section: {key: value}}`` as a TOML file; a list of dicts becomes ``[[section]]``."""
    lines: list[str] = []
    for section, values in sections.items():
        if isinstance(values, list):
            for table in values:
                lines.append(f"[[{section}]]")
                lines.extend(f"{key} = {toml_value(value)}" for key, value in table.items())
                lines.append("")
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def ki67node_command() -> list[str]:
    """The installed entry point next to this interpreter, else ``python -m daemon.cli``."""
    script = Path(sys.executable).parent / "ki67node"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "daemon.cli"]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child: no inherited ``KI67NODE_*``, Nagle off for DCMTK."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KI67NODE_")}
    env["TCP_NODELAY"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def system_which(name: str) -> str | None:
    """``shutil.which`` without the virtual environment's bin folder.

    pynetdicom installs Python scripts named ``storescu`` and ``echoscu``
    there, which would stand in for DCMTK's when the venv is activated.
    """
    venv_bin = Path(sys.prefix, "bin").resolve()
    folders = os.environ.get("PATH", "").split(os.pathsep)
    search = os.pathsep.join(d for d in folders if d and Path(d).resolve() != venv_bin)
    return shutil.which(name, path=search)


def c_echo(port: int, called_aet: str = "KI67NODE", timeout: float = ECHO_TIMEOUT_SECONDS) -> bool:
    """True when a C-ECHO on 127.0.0.1:``port`` is answered with Success."""
    echoscu = system_which("echoscu")
    if echoscu is not None:
        try:
            cmd = [echoscu, "-aet", SCU_AET, "-aec", called_aet, "-to", str(max(int(timeout), 1))]
            done = subprocess.run(
                [*cmd, "127.0.0.1", str(port)],
                capture_output=True,
                timeout=timeout + 5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0
    from pynetdicom import AE  # fallback without DCMTK

    ae = AE(ae_title=SCU_AET)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title=called_aet)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def store_successes(output: str) -> set[str]:
    """Files a storescu (DCMTK's or pynetdicom's) saw answered with Success, from its ``-v`` log."""
    done: set[str] = set()
    current = ""
    for match in _STORE_LOG_RE.finditer(output):
        if match.group("file"):
            current = match.group("file")
        elif match.group("status") == "Success" and current:
            done.add(current)
    return done


def http_get(port: int, path: str, timeout: float = HTTP_TIMEOUT_SECONDS) -> tuple[int, bytes]:
    """``(status, body)`` of GET http://127.0.0.1:port/path; (0, b"") when unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError):
        return 0, b""


@dataclass
class DaemonProcess:
    """One ``ki67node serve`` child process rooted in ``folder``.

    ``settings`` are extra TOML sections (``{"ingest": {"series_stable_seconds": 1}}``);
    ports and ``data_dir`` are filled in. The same object can be started
    again after a stop or a kill: same config, same data, same ports.
    """

    folder: Path
    settings: dict[str, Any] = field(default_factory=dict)
    ae_title: str = "KI67NODE"
    dicom_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.folder / "data"
        sections: dict[str, Any] = {
            "node": {
                "ae_title": self.ae_title,
                "bind": "127.0.0.1",
                "port": self.dicom_port,
                "data_dir": self.data_dir,
            },
            "http": {"bind": "127.0.0.1", "port": self.http_port},
        }
        for section, values in self.settings.items():
            if isinstance(values, list):  # an array of tables ([[destinations]])
                sections[section] = values
            else:
                sections.setdefault(section, {}).update(values)
        self.config_path = write_config(self.folder / "ki67node.toml", sections)

    # -- lifecycle ---------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        """The log of the current (or last) start; one file per start."""
        return self.folder / f"serve-{self.starts}.log"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the daemon is not running; call start() first")
        return self.proc.pid

    def start(self, timeout: float = START_TIMEOUT_SECONDS, *, wait: bool = True) -> None:
        if self.running():
            raise RuntimeError("the daemon is already running")
        self.starts += 1
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [*ki67node_command(), "serve", "--config", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                env=clean_env(),
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Until C-ECHO is answered and /healthz is 200; fails with the log tail."""
        deadline = time.monotonic() + timeout
        echoed = False
        health: tuple[int, bytes] = (0, b"")
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise AssertionError(f"ki67node serve exited ({code}) at start:\n{self.log_tail()}")
            echoed = echoed or c_echo(self.dicom_port, self.ae_title, timeout=2.0)
            if echoed:
                health = http_get(self.http_port, "/healthz", timeout=2.0)
                if health[0] == HTTP_OK:
                    return
            time.sleep(POLL_SECONDS)
        raise AssertionError(
            f"ki67node serve not ready in {timeout:.0f} s (echo={echoed}, healthz={health}):\n"
            f"{self.log_tail()}"
        )

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> float:
        """SIGTERM; assert exit 0 within ``timeout``; return the seconds it took."""
        if self.proc is None:
            raise RuntimeError("the daemon was never started")
        started = time.monotonic()
        self.signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"ki67node serve did not exit within {timeout:.0f} s of SIGTERM:\n{self.log_tail()}"
            ) from None
        took = time.monotonic() - started
        if code != EXIT_OK:
            raise AssertionError(
                f"ki67node serve exited {code} after SIGTERM (expected 0):\n{self.log_tail()}"
            )
        return took

    def kill(self) -> None:
        """``kill -9`` the daemon and everything in its session (its workers)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a kernel problem
            pass

    def cleanup(self) -> None:
        """Kill whatever is left (test teardown); never raises."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.kill()
            else:
                try:  # workers of an exited daemon, if any remain
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass

    # -- looking at it -------------------------------------------------------------
    def log_text(self, start: int | None = None) -> str:
        """The captured log of one start (default: the current one)."""
        path = self.folder / f"serve-{start or self.starts}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def all_logs(self) -> str:
        return "\n".join(self.log_text(n) for n in range(1, self.starts + 1))

    def log_tail(self) -> str:
        return self.log_text()[-LOG_TAIL_CHARS:]

    def echo(self) -> bool:
        return c_echo(self.dicom_port, self.ae_title)

    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.http_port, path)

    def api_status(self) -> dict[str, Any]:
        code, body = self.get("/api/status")
        if code != HTTP_OK:
            raise AssertionError(f"/api/status answered {code}: {body[:500]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``ki67node ARGS --config <this config>`` (e.g. ``status --json``)."""
        return subprocess.run(
            [*ki67node_command(), *args, "--config", str(self.config_path)],
            capture_output=True,
            text=True,
            cwd=self.folder,
            env=clean_env(),
            timeout=timeout,
            check=False,
        )

    def peak_rss_bytes(self) -> int:
        """VmHWM of the daemon's main process (Linux), 0 when unknown."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except (OSError, RuntimeError):
            return 0
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0


# -- reading what it stored ----------------------------------------------------------
def dataset_bytes(path: Path) -> bytes:
    """The bytes after the File Meta Information (what went over the wire)."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    with open(path, "rb") as fp:
        read_preamble(fp, False)
        _read_file_meta_info(fp)
        return fp.read()


def query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` from the daemon's SQLite database, opened read-only."""
    import sqlite3

    db = Path(data_dir) / "ki67node.db"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return list(conn.execute(sql, params))
    finally:
        conn.close()


def temp_files(data_dir: Path) -> list[Path]:
    """Half-written files anywhere under ``data_dir`` (spool temp folder, ``*.part``)."""
    spool_tmp = Path(data_dir) / "spool" / ".tmp"
    leftovers = [p for p in Path(data_dir).rglob("*.part")]
    if spool_tmp.is_dir():
        leftovers += [p for p in spool_tmp.iterdir() if p not in leftovers]
    return leftovers


def published_files(data_dir: Path) -> list[Path]:
    """Files published in the spool (``spool/<day>/*.dcm``), not temp, not quarantine."""
    spool = Path(data_dir) / "spool"
    return [p for p in spool.glob("*/*.dcm") if p.parent.name not in (".tmp", "quarantine")]


def stored_instances(data_dir: Path) -> dict[str, tuple[str, str, str]]:
    """SOP Instance UID -> (spool relpath, sha256, transfer syntax)."""
    rows = query(
        data_dir, "SELECT sop_instance_uid, path, sha256, transfer_syntax_uid FROM instances"
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def decisions(data_dir: Path) -> dict[str, list[tuple[int, str]]]:
    """Series UID -> [(qualifies, reason)] of every decision row."""
    rows = query(
        data_dir,
        "SELECT s.series_uid, d.qualifies, d.reason FROM series s "
        "LEFT JOIN series_decisions d ON d.series_id = s.id ORDER BY d.id",
    )
    out: dict[str, list[tuple[int, str]]] = {}
    for uid, qualifies, reason in rows:
        out.setdefault(uid, [])
        if reason is not None:
            out[uid].append((qualifies, reason))
    return out


def jobs(data_dir: Path) -> list[tuple[str, str, int, str | None]]:
    """(series UID, state, attempts, result JSON) of every job."""
    return query(
        data_dir,
        "SELECT s.series_uid, j.state, j.attempts, j.result FROM jobs j "
        "JOIN series s ON s.id = j.series_id ORDER BY j.id",
    )
