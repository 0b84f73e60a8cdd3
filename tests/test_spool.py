from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from daemon.errors import SpoolError
from daemon.intake.spool import Spool


def test_write_publishes_complete_file_under_server_made_name(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    stored = spool.write([b"abc", b"def"])
    path = spool.path_of(stored.relpath)
    assert path.read_bytes() == b"abcdef"
    assert stored.size_bytes == 6
    assert len(stored.sha256) == 64
    assert path.parent.parent == spool.root
    assert list(spool.tmp_dir.iterdir()) == []
    assert list(spool.published_files()) == [stored.relpath]


def test_path_of_refuses_escape(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    for bad in ("../x", "/etc/passwd", "20260101/../../x"):
        with pytest.raises(SpoolError, match="outside the spool"):
            spool.path_of(bad)


def test_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = Spool(tmp_path / "spool")
    temp = spool.open_temp()
    temp.write(b"first part")

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("daemon.intake.spool.os.write", full)
    with pytest.raises(SpoolError, match="No space left"):
        temp.write(b"more")
    assert list(spool.tmp_dir.iterdir()) == []
    assert list(spool.published_files()) == []


def test_clean_temp_removes_half_written_files(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    temp = spool.open_temp()
    temp.write(b"partial")
    # the process dies here: the temp file stays until the next start
    assert Spool(tmp_path / "spool").clean_temp() == 1
    assert list(spool.tmp_dir.iterdir()) == []


def test_quarantine_moves_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    stored = spool.write([b"x"])
    rel = spool.quarantine(stored.relpath)
    assert rel.startswith("quarantine/")
    assert spool.path_of(rel).read_bytes() == b"x"
    assert list(spool.published_files()) == []
