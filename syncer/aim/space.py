"""Free space on the Aim repo's filesystem: writes stop while less than ``RESERVE_BYTES`` is free.

RocksDB does not fail a write cleanly when its disk is full: a memtable flush that cannot write
its file leaves the database waiting for a flush that never comes, so ``DB.flush()`` (called by
Aim when it closes a run, and by the writer every few thousand points) blocks for good, even
after space comes back, and the process no longer answers SIGTERM.  So the writer checks the
free space before each write and flush (:func:`check`, one ``statvfs``) and raises
``syncer.errors.RepoFull`` while less than the reserve is left: enough for a memtable flush, the
next write-ahead log RocksDB preallocates and Aim's small SQLite commits.  A writer closed while
short of space skips the memtable flush (``chunks.RunChunks.close``): what it wrote is in the
write-ahead log, made durable by the last flush, and replayed by the next open.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import RepoFull

RESERVE_BYTES = 64 * 1024 * 1024


def free_bytes(path: str | os.PathLike[str]) -> int:
    try:  # one system call: asked before every write
        st = os.statvfs(path)
    except FileNotFoundError:
        st = os.statvfs(_existing(path))
    return st.f_bavail * st.f_frsize


def _existing(path: str | os.PathLike[str]) -> Path:
    """``path``, or its nearest folder that exists (a repo not created yet)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def room(path: str | os.PathLike[str]) -> int | None:
    """Bytes free above the reserve on ``path``'s filesystem (None where it cannot be asked)."""
    try:
        return free_bytes(path) - RESERVE_BYTES
    except OSError:
        return None


def short(path: str | os.PathLike[str]) -> bool:
    """Whether the filesystem of ``path`` has less than the reserve free (False where it cannot
    be asked)."""
    try:
        return free_bytes(path) < RESERVE_BYTES
    except OSError:
        return False


def check(path: str | os.PathLike[str]) -> None:
    """Raise :class:`RepoFull` (naming the filesystem) while ``path``'s has less than the reserve free."""
    if short(path):
        raise RepoFull(describe(path))


def describe(path: str | os.PathLike[str]) -> str:
    """`the Aim repo's filesystem is full: <path> is on <type> mounted at <mount point> (<size>,
    <free> free; ...)`: what a full-disk error says."""
    where = Path(path)
    mount, fstype = _mount_of(_existing(where))
    try:
        st = os.statvfs(_existing(where))
        size, free = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        room = f"{_mib(size)} MiB, {_mib(free)} MiB free"
    except OSError as e:
        room = f"free space unknown: {e.strerror or e}"
    return (
        f"the Aim repo's filesystem is full: {where} is on {fstype} mounted at {mount} ({room}; the syncer "
        f"writes only while {_mib(RESERVE_BYTES)} MiB are free, so that Aim's storage never runs out mid-write)"
    )


def _mib(n: int) -> str:
    return f"{n / 1024**2:.1f}"


def _mount_of(path: Path) -> tuple[str, str]:
    """(mount point, filesystem type) of ``path``, from /proc/self/mounts where there is one."""
    p = path.resolve()
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    fstype = "a filesystem"
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 2 and fields[1].replace("\\040", " ") == str(p):
                    fstype = fields[2]  # the last mount on that point is the one in effect
    except OSError:
        pass
    return str(p), fstype
