"""The spool: received bytes, written durably under names the server makes.

A file is published only complete: written to ``spool/.tmp``, fsynced,
renamed into place, and the folder fsynced. No received value (UID, AE title)
is ever part of a path. The database row is written *after* the file; at
start-up :func:`Spool.clean_temp` removes half-written temp files and the
daemon re-indexes published files that have no row (crash between rename and
commit), so an acknowledged instance is never lost.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import SpoolError

log = logging.getLogger(__name__)

_DICOM_PREFIX = b"\x00" * 128 + b"DICM"


@dataclass(frozen=True)
class StoredFile:
    relpath: str  # relative to the spool root, POSIX separators
    size_bytes: int
    sha256: str


class Spool:
    """Durable file store rooted at ``root`` (``<data_dir>/spool``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.tmp_dir = self.root / ".tmp"
        self.quarantine_dir = self.root / "quarantine"
        for folder in (self.root, self.tmp_dir, self.quarantine_dir):
            folder.mkdir(parents=True, exist_ok=True)

    # -- writing -----------------------------------------------------------
    def write(self, chunks: Iterable[bytes], *, quarantine: bool = False) -> StoredFile:
        """Write ``chunks`` as one new file; return its server-made name.

        Raises :class:`SpoolError` (disk full, permissions) with nothing left
        behind.
        """
        now = dt.datetime.now(dt.UTC)
        folder_rel = "quarantine" if quarantine else now.strftime("%Y%m%d")
        name = f"{uuid.uuid4().hex}.dcm"
        folder = self.root / folder_rel
        tmp = self.tmp_dir / f"{name}.part"
        digest = hashlib.sha256()
        size = 0
        try:
            new_folder = not folder.is_dir()
            if new_folder:
                folder.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self.root)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    digest.update(view)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                    size += len(chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, folder / name)
            _fsync_dir(folder)
        except OSError as exc:
            _unlink_quietly(tmp)
            raise SpoolError(
                f"could not write to the spool at {self.root}: {exc.strerror or exc}. "
                "Free disk space or fix the folder's permissions."
            ) from exc
        return StoredFile(f"{folder_rel}/{name}", size, digest.hexdigest())

    # -- reading -----------------------------------------------------------
    def path_of(self, relpath: str) -> Path:
        """The absolute path of a stored file; refuses anything outside the spool."""
        path = (self.root / relpath).resolve()
        if self.root not in path.parents:
            raise SpoolError(f"refusing path outside the spool: {relpath!r}")
        return path

    def delete(self, relpath: str) -> None:
        _unlink_quietly(self.path_of(relpath))

    def published_files(self) -> Iterator[str]:
        """Every published file (not temp, not quarantine), as relpaths."""
        for folder in sorted(self.root.iterdir()):
            if not folder.is_dir() or folder.name in (".tmp", "quarantine"):
                continue
            for path in sorted(folder.glob("*.dcm")):
                yield f"{folder.name}/{path.name}"

    def clean_temp(self) -> int:
        """Remove half-written files left by a crash; return how many."""
        removed = 0
        for path in self.tmp_dir.iterdir():
            _unlink_quietly(path)
            removed += 1
        if removed:
            log.warning("removed %d incomplete temp file(s) from the spool", removed)
        return removed

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def writable(self) -> bool:
        """True when a small file can be created and removed in the temp folder."""
        probe = self.tmp_dir / f"probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"ok")
            probe.unlink()
            return True
        except OSError:
            return False


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.error("could not remove %s: %s", path, exc)
