from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import main


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["no-such-command"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["synth", "/tmp/x", "--cases", "0"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_synth_writes_a_cohort_and_refuses_to_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cohort"
    assert (
        main(["synth", str(out), "--cases", "1", "--seed", "3", "--size", "small", "--no-progress"])
        == 0
    )
    text = capsys.readouterr().out
    assert "synthetic case(s)" in text and "not for diagnostic use" in text
    cohort = json.loads((out / "cohort.json").read_text())
    assert cohort["seed"] == 3
    assert (out / "ground_truth.csv").is_file()
    assert main(["synth", str(out), "--cases", "1"]) == 1
    assert "not empty" in capsys.readouterr().err


def test_errors_have_no_traceback_without_debug(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nport = 'x'\n")
    run = subprocess.run(
        [sys.executable, "-m", "daemon.cli", "status", "--config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 1
    assert "node.port" in run.stderr
    assert "Traceback" not in run.stderr
