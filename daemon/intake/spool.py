"""The spool: received bytes, written durably under names the server makes.

A file is published only complete: written to ``spool/.tmp``, fsynced,
renamed into place, and the folder fsynced. No received value (UID, AE title)
is ever part of a path. The database row is written *after* the file; at
start-up :func:`Spool.clean_temp` removes half-written temp files and the
daemon re-indexes published files that have no row (crash between rename and
commit), so an acknowledged instance is never lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from daemon.errors import SpoolError

log = logging.getLogger(__name__)


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
    def open_temp(self) -> SpoolTemp:
        """Start a new file in the temp folder; publish it with ``commit``."""
        return SpoolTemp(self)

    def write(self, chunks: Iterable[bytes], *, quarantine: bool = False) -> StoredFile:
        """Write ``chunks`` as one new file; return its server-made name."""
        temp = self.open_temp()
        try:
            for chunk in chunks:
                temp.write(chunk)
            return temp.commit(quarantine=quarantine)
        except BaseException:
            temp.discard()
            raise

    # -- reading -----------------------------------------------------------
    def path_of(self, relpath: str) -> Path:
        """The absolute path of a stored file; refuses anything outside the spool."""
        path = (self.root / relpath).resolve()
        if self.root not in path.parents:
            raise SpoolError(f"refusing path outside the spool: {relpath!r}")
        return path

    def quarantine(self, relpath: str) -> str:
        """Move a published file into the quarantine folder; return its new relpath."""
        source = self.path_of(relpath)
        target = self.quarantine_dir / source.name
        try:
            os.rename(source, target)
            _fsync_dir(self.quarantine_dir)
        except OSError as exc:
            raise _spool_error(self.root, exc) from exc
        return f"quarantine/{source.name}"

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


class SpoolTemp:
    """A file being received: streamed to ``.tmp``, hashed on the way.

    ``commit`` makes it durable and visible (fsync, rename, fsync folder);
    ``discard`` removes it. Errors become :class:`SpoolError` and leave
    nothing behind.
    """

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.name = f"{uuid.uuid4().hex}.dcm"
        self.path = spool.tmp_dir / f"{self.name}.part"
        self.size = 0
        self._digest = hashlib.sha256()
        try:
            self._fd: int | None = os.open(
                self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640
            )
        except OSError as exc:
            raise _spool_error(spool.root, exc) from exc

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            raise SpoolError("write to a closed spool file")
        view = memoryview(data)
        self._digest.update(view)
        self.size += len(view)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self.discard()
            raise _spool_error(self.spool.root, exc) from exc

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def flush(self) -> None:
        """fsync the bytes written so far (they can then be parsed by path)."""
        if self._fd is None:
            raise SpoolError("flush of a closed spool file")
        try:
            os.fdatasync(self._fd)
            os.close(self._fd)
        except OSError as exc:
            self.discard()
            raise _spool_error(self.spool.root, exc) from exc
        self._fd = None

    def commit(self, *, quarantine: bool = False) -> StoredFile:
        if self._fd is not None:
            self.flush()
        folder_rel = "quarantine" if quarantine else time.strftime("%Y%m%d", time.gmtime())
        folder = self.spool.root / folder_rel
        try:
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                _fsync_dir(self.spool.root)
            os.rename(self.path, folder / self.name)
            _fsync_dir(folder)
        except OSError as exc:
            self.discard()
            raise _spool_error(self.spool.root, exc) from exc
        return StoredFile(f"{folder_rel}/{self.name}", self.size, self.sha256)

    def discard(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        _unlink_quietly(self.path)


def _spool_error(root: Path, exc: OSError) -> SpoolError:
    return SpoolError(
        f"could not write to the spool at {root}: {exc.strerror or exc}. "
        "Free disk space or fix the folder's permissions."
    )


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
