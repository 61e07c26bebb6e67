"""The run lock: one writer per Aim run (what ``aim.sdk.lock_manager`` gives ``aim.Run``).

A writer holds ``locks/<hash>.softlock`` from open to close.  Another writer (a second syncer
for the same run, ``aim.Run(hash)``, the ``aim`` CLI's run commands) cannot write that run
meanwhile and gets :class:`AimRunLocked` after its timeout.

A SIGKILLed holder leaves its lock behind.  Aim takes such a lock over when its recorded pid
(same machine) is dead; :func:`drop_own_stale_lock` also when it names this very pid but
predates this process (containers restarted with the same pid).  A lock left by another machine
id (e.g. a *recreated* container with a new MAC address) is not taken over: ``aim runs close
--force`` frees it.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

from ..errors import RunLocked

log = logging.getLogger(__name__)

BREAK_SAFE_TIMEOUT_S = 1.0
# how long to wait for a live holder to let go before skipping the run: the worker processes of
# a SIGKILLed backfill notice their parent is gone within a fraction of a second and exit
HOLDER_GRACE_S = 3.0
HOLDER_POLL_S = 0.05


class AimRunLocked(RunLocked):
    """Another writer (process) holds the Aim run's lock."""


def lock_run(repo: Any, run_hash: str, timeout: float) -> Any:
    """Take the lock of run ``run_hash`` (an Aim ``RunLock`` that any thread may release);
    :class:`AimRunLocked` when another writer still holds it after ``timeout`` seconds."""
    from aim.sdk.errors import RunLockingError
    from filelock import Timeout

    drop_own_stale_lock(repo, run_hash)
    key = (str(repo.path), run_hash)
    if key in _held:  # another writer of this very process: refused whatever its lock file's age
        raise _refuse(repo, run_hash)
    # the holder that refused us last time still holds it (a second daemon): no waiting again
    grace = 0.0 if _refused.get(key) == holder(repo, run_hash) else min(timeout, HOLDER_GRACE_S)
    deadline = time.monotonic() + grace
    while held_by_another(repo, run_hash) and time.monotonic() < deadline:
        time.sleep(HOLDER_POLL_S)
    drop_unreadable_lock(repo, run_hash)
    if held_by_another(repo, run_hash):
        raise _refuse(repo, run_hash)
    # shorter than filelock's age after which it breaks a lock file it cannot parse (Aim's own
    # "machine-pid-time" content): waiting longer, we would break the lock of a live writer
    lock = _thread_free(repo.request_run_lock(run_hash, timeout=min(timeout, BREAK_SAFE_TIMEOUT_S)))
    try:
        lock.lock()
    except (RunLockingError, Timeout, ValueError) as e:  # ValueError: Aim reading a lock file being written
        raise _refuse(repo, run_hash) from e
    _refused.pop(key, None)
    return _Held(lock, key)


_refused: dict[tuple[str, str], str] = {}  # (repo, run hash) -> who held it when we last gave up
# the runs writers of this process hold: a second writer of the same process is refused by this,
# not by the lock file, which filelock breaks as malformed once it is 2 s old (a first open that
# took that long on a loaded machine let a second one in)
_held: set[tuple[str, str]] = set()


class _Held:
    """A run lock this process holds; `release` (from any thread) frees it."""

    def __init__(self, lock: Any, key: tuple[str, str]):
        self.lock = lock
        self.key = key
        _held.add(key)

    def release(self) -> None:
        try:
            self.lock.release()
        finally:
            _held.discard(self.key)


def _refuse(repo: Any, run_hash: str) -> AimRunLocked:
    who = holder(repo, run_hash)
    _refused[(str(repo.path), run_hash)] = who
    return AimRunLocked(
        f"Aim run {run_hash} in {repo.path} is held by {who} "
        "(another syncer or Aim writer; if none is running, `aim runs close --force` it)"
    )


def held_by_another(repo: Any, run_hash: str) -> bool:
    """Whether the run's lock file names a live process of this machine other than this one, or
    a process of another machine (never taken over, as Aim does). Checked by us before Aim's
    lock: filelock >= 3.2x treats Aim's lock file content as malformed and breaks it after 2 s,
    so Aim's own lock alone no longer keeps a second writer out."""
    import psutil
    from aim.sdk.lock_manager import LockManager

    path = os.path.join(repo.path, "locks", LockManager.softlock_fname(run_hash))
    try:
        with open(path) as fh:
            machine, pid, *_ = fh.read().split("-")
        machine_id, pid_n = int(machine), int(pid)
    except OSError:
        return False
    except ValueError:  # says nobody yet: a writer taking it, unless it has said nothing for long
        return _age(path) < UNREADABLE_LOCK_AGE_S
    if machine_id != LockManager.machine_id:
        return True
    if pid_n == os.getpid():
        return False
    try:
        proc = psutil.Process(pid_n)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False  # dead, not yet reaped
        # a process started after the lock was written reuses a dead holder's pid
        return bool(proc.create_time() <= os.stat(path).st_mtime + 1.0)
    except (psutil.Error, OSError):
        return False


def holder(repo: Any, run_hash: str) -> str:
    """Who holds a run's lock, as its lock file says: a process of this machine or another."""
    from aim.sdk.lock_manager import LockManager

    path = os.path.join(repo.path, "locks", LockManager.softlock_fname(run_hash))
    try:
        with open(path) as fh:
            machine, pid, *_ = fh.read().split("-")
        where = "this machine" if int(machine) == LockManager.machine_id else f"machine {machine}"
        return f"process {int(pid)} on {where}"
    except (OSError, ValueError):
        return "another writer"


def _thread_free(run_lock: Any) -> Any:
    """Aim's run lock with a ``filelock.SoftFileLock`` that any thread may release.

    Aim makes it with filelock's default ``thread_local=True``: a release from another thread
    than the one that locked is a silent no-op, and the lock file stays (held for good as far
    as this process is concerned).  A writer kept open between the daemon's rounds may be
    opened on one scheduler worker thread and closed on another, or on the main thread."""
    sf = getattr(run_lock, "_sf_lock", None)
    if sf is not None and sf.is_thread_local():
        from filelock import SoftFileLock

        run_lock._sf_lock = SoftFileLock(sf.lock_file, timeout=sf.timeout, thread_local=False)
    return run_lock


def drop_own_stale_lock(repo: Any, run_hash: str) -> None:
    """Remove a run lock that an earlier process with *this* process's id left behind.

    Aim frees a run lock whose writer died only when the recorded pid is not alive; a
    container restarted after a SIGKILL often gets the same pid (e.g. 7 under ``init: true``),
    so the dead writer's lock would look held by us.  A lock file naming this machine and this
    pid but written before this process started cannot be ours: it is stale."""
    from aim.sdk.lock_manager import LockManager

    path = os.path.join(repo.path, "locks", LockManager.softlock_fname(run_hash))
    try:
        with open(path) as fh:
            machine, pid, *_ = fh.read().split("-")
        if int(machine) != LockManager.machine_id or int(pid) != os.getpid():
            return
        if os.stat(path).st_mtime >= _process_started():
            return  # taken by this process (another writer object in it): a real conflict
        log.info("removing a stale lock of Aim run %s left by an earlier process with this pid", run_hash)
        os.unlink(path)
    except (OSError, ValueError):
        return


# a writer creates its lock file, then writes who it is into it: one that still says nothing
# after this long was left by a writer killed in between
UNREADABLE_LOCK_AGE_S = 2.0


def drop_unreadable_lock(repo: Any, run_hash: str) -> None:
    """Remove a run lock file that does not say who holds it (empty or garbled) and is older than
    UNREADABLE_LOCK_AGE_S. Aim's own stale-lock check fails on such a file with a ValueError,
    every time, so the run could never be opened again."""
    from aim.sdk.lock_manager import LockManager

    path = os.path.join(repo.path, "locks", LockManager.softlock_fname(run_hash))
    try:
        with open(path) as fh:
            machine, pid, *_ = fh.read().split("-")
        int(machine), int(pid)
        return
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        pass
    try:
        if _age(path) < UNREADABLE_LOCK_AGE_S:
            return  # a writer between creating it and saying who it is
        log.info("removing the lock of Aim run %s: it names no holder (a writer killed while taking it)", run_hash)
        os.unlink(path)
    except OSError:
        return


def _age(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return math.inf


_started: float | None = None


def _process_started() -> float:
    global _started
    if _started is None:
        try:
            import psutil

            _started = psutil.Process().create_time()
        except Exception:  # pragma: no cover - no psutil: never take a lock over
            _started = -math.inf
    return _started
