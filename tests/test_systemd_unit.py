"""The systemd unit, sysusers.d and tmpfiles.d files: required keys, and systemd's own checks."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEMD = REPO / "systemd"
UNIT = SYSTEMD / "ki67node.service"
EXEC = "/opt/ki67node/.venv/bin/ki67node"

Unit = dict[str, dict[str, list[str]]]


def parse_unit(text: str) -> Unit:
    """Sections → key → every value (systemd allows repeated keys)."""
    unit: Unit = {}
    section: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        assert section is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        section.setdefault(key.strip(), []).append(value.strip())
    return unit


@pytest.fixture(scope="module")
def unit() -> Unit:
    return parse_unit(UNIT.read_text(encoding="utf-8"))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("ExecStart", f"{EXEC} serve --config /etc/ki67node/ki67node.toml"),
        ("WatchdogSec", "60"),
        ("Restart", "on-failure"),
        ("RestartSec", "5"),
        ("TimeoutStopSec", "90"),
        ("KillMode", "mixed"),
        ("OOMPolicy", "continue"),
        ("User", "ki67node"),
        ("StateDirectory", "ki67node"),
        ("LogsDirectory", "ki67node"),
        ("WorkingDirectory", "/var/lib/ki67node"),
        ("UMask", "0027"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "no"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("CapabilityBoundingSet", ""),
        ("LockPersonality", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("SystemCallArchitectures", "native"),
        ("LimitNOFILE", "65536"),
    ],
    ids=lambda v: str(v) if str(v) and "/" not in str(v) else None,
)
def test_service_has_required_setting(unit: Unit, key: str, value: str) -> None:
    assert value in unit["Service"].get(key, []), f"{key}={value} missing from {UNIT.name}"


def test_data_dir_is_the_state_directory(unit: Unit) -> None:
    env = " ".join(unit["Service"]["Environment"])
    assert "KI67NODE_NODE__DATA_DIR=/var/lib/ki67node" in env.split()


def test_options_that_break_gpu_workers_stay_off(unit: Unit) -> None:
    service = unit["Service"]
    for key in ("MemoryDenyWriteExecute", "ProtectClock", "DeviceAllow", "ProcSubset"):
        assert key not in service, f"{key} breaks torch/CUDA workers (see systemd/README.md)"
    assert "AmbientCapabilities" not in service or service["AmbientCapabilities"] == [""]


def test_graceful_stop_fits_in_the_stop_timeout(unit: Unit) -> None:
    # the daemon's own graceful stop must finish before systemd's SIGKILL
    assert int(unit["Service"]["TimeoutStopSec"][0]) >= 60
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_sysusers_creates_the_service_user() -> None:
    lines = [
        line.split()
        for line in (SYSTEMD / "ki67node.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0][:3] == ["u", "ki67node", "-"]
    assert lines[0][-2:] == ["/var/lib/ki67node", "/usr/sbin/nologin"]


def test_tmpfiles_lines_have_owner_and_mode() -> None:
    entries = {
        fields[1]: fields
        for fields in (
            line.split()
            for line in (SYSTEMD / "ki67node.tmpfiles.conf").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        )
    }
    assert entries["/var/lib/ki67node"][:5] == [
        "d",
        "/var/lib/ki67node",
        "0750",
        "ki67node",
        "ki67node",
    ]
    assert entries["/etc/ki67node"][2:5] == ["0750", "root", "ki67node"]
    assert entries["/etc/ki67node/ki67node.toml"][2:5] == ["0640", "root", "ki67node"]


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (the unit is still checked by the tests above)")
    return path


def _unit_with_existing_exec(tmp_path: Path, extra: str = "") -> Path:
    """A copy whose ExecStart points at a binary that exists here (verify checks it)."""
    copy = tmp_path / UNIT.name
    text = UNIT.read_text().replace(EXEC, shutil.which("true") or "/bin/true")
    copy.write_text(text.replace("[Install]", extra + "\n[Install]"))
    return copy


@pytest.mark.parametrize(
    ("extra", "clean"),
    [("", True), ("UMask=0o27", False), ("WatchdogSeconds=60", False)],
    ids=["shipped-unit", "bad-value-is-caught", "unknown-key-is-caught"],
)
def test_systemd_analyze_verify(tmp_path: Path, extra: str, clean: bool) -> None:
    tool = _tool("systemd-analyze")
    proc = subprocess.run(
        [tool, "verify", str(_unit_with_existing_exec(tmp_path, extra))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on ignored lines; any message at all is a problem
    problems = (proc.stdout + proc.stderr).strip()
    assert (proc.returncode == 0 and not problems) is clean, problems


def test_security_exposure_is_low(tmp_path: Path) -> None:
    tool = _tool("systemd-analyze")
    proc = subprocess.run(
        [
            tool,
            "security",
            "--offline=true",
            "--threshold=25",
            str(_unit_with_existing_exec(tmp_path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "--offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze is older than v250 (no --offline)")
    # threshold is in tenths: exposure <= 2.5 of 10 ("OK")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="chown in an alternate root needs root")
def test_sysusers_and_tmpfiles_apply_in_an_alternate_root(tmp_path: Path) -> None:
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for cmd in (
        [sysusers, f"--root={root}", str(SYSTEMD / "ki67node.sysusers.conf")],
        [tmpfiles, f"--root={root}", "--create", str(SYSTEMD / "ki67node.tmpfiles.conf")],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    passwd = (root / "etc/passwd").read_text()
    user = next(line for line in passwd.splitlines() if line.startswith("ki67node:"))
    uid = int(user.split(":")[2])
    state = (root / "var/lib/ki67node").stat()
    assert state.st_uid == uid
    assert oct(state.st_mode & 0o777) == "0o750"
    assert oct((root / "etc/ki67node").stat().st_mode & 0o777) == "0o750"


@pytest.mark.parametrize(
    ("key", "command"), [("ExecStartPre", "check-config"), ("ExecStart", "serve")], ids=str
)
def test_exec_lines_parse_with_the_real_cli(unit: Unit, key: str, command: str) -> None:
    from daemon.cli import build_parser

    program, *argv = unit["Service"][key][0].split()
    assert program == EXEC
    args = build_parser().parse_args(argv)
    assert args.command == command
    assert args.config == "/etc/ki67node/ki67node.toml"
