"""Files a run writes: atomic writes, the run folder's lock, stale temporary files.

Every file gankit writes into a run folder goes through a temporary file beside
it (`.NAME.tmp-PID`), flushed to disk and renamed over NAME: a reader, or a run
resumed after a crash or a SIGKILL, sees the old file or the new one, never half
of one. A process killed mid-write leaves its temporary file behind; the next
process that locks the folder removes it.

A run folder is locked while a process trains in it: an advisory `flock` on
`RUN/.lock`, which the kernel releases when the process ends, however it ends, so
a lock left by a dead process is never in the way. The file names the holder.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from gankit.errors import GankitError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; the folder is not locked
    fcntl = None

LOCK_NAME = ".lock"


def temp_path(path: Path) -> Path:
    """Where `path` is written before it is renamed into place."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")


# What a write raises when the disk or the file system refuses it (not the folder's rights).
DISK_REFUSALS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def final_name(path: str | Path) -> str:
    """The file a write was meant for: `temp_path` writes NAME through .NAME.tmp-PID."""
    p = Path(path)
    name, dot, _ = p.name.partition(".tmp-")
    if dot and name.startswith("."):
        return str(p.with_name(name[1:]))
    return str(path)


def describe(e: OSError, verb: str) -> str:
    """A failed file operation in one line: `cannot VERB PATH: reason`, PATH being the file
    meant, not its temporary stand-in."""
    where = final_name(e.filename) if e.filename is not None else "a file"
    return f"cannot {verb} {where}: {e.strerror or e}"


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically and durably; on failure `path` is unchanged."""
    write_with(path, lambda tmp: tmp.write_bytes(data))


def write_with(path: Path, write) -> None:
    """`write(tmp)` writes the file's content to `tmp`, which is then flushed to disk and
    renamed over `path` (a PNG grid, say). Raises OSError when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new, never half
    finally:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only folder refuses even to unlink what is not there
            pass
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX: a directory's entries are synced separately)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot sync a directory
        pass
    finally:
        os.close(fd)


def stale_temps(folder: Path) -> list[Path]:
    """Temporary files left in `folder` and its subfolders by killed writers."""
    return sorted(p for p in Path(folder).rglob(".*.tmp-*") if p.is_file())


class RunLock:
    """`with RunLock(run_dir):` the folder is this process's until the block ends (or the
    process dies). A second process is refused with one line naming the holder."""

    def __init__(self, run_dir: Path):
        self.path, self.fd = Path(run_dir) / LOCK_NAME, None

    def acquire(self) -> RunLock:
        if fcntl is None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # the file stays; the lock goes
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise GankitError(
                f"run folder {self.path.parent} is in use by another gankit process "
                f"({holder}): wait for it to end, or stop it"
            ) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["since"]))
        return f"pid {info['pid']} on {info['host']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its pid unknown"
