"""The Aim repo: open (or create) it for writing, and read it back in this same process.

``logs`` and ``logs/.aim`` name the same repo (``syncer.config.repo_root``).  Creating a repo
runs Aim's alembic migration of ``run_metadata.sqlite`` (in a subprocess: seconds); a repo whose
creation was cut short has no schema and is initialised again.

In one process, ``Repo.list_all_runs()`` is cached for 0.5 s per repo path, even across new
``Repo`` objects: read with :func:`fresh_repo` right after writing (``get_run`` / ``iter_runs``
are not cached).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from typing import Any

from ..config import repo_root
from ..errors import RepoError, RepoFull, one_line
from ..retry import retrying
from . import space

# open_repo's retries while another process holds the new repo's index DB (creating it)
OPEN_ATTEMPTS = 20
OPEN_FIRST_DELAY = 0.1  # seconds, doubled after each attempt
OPEN_MAX_DELAY = 2.0


# the data version of the Aim repos written here (`aim.sdk.data_version.DATA_VERSION`, checked by
# `compat`): a repo at it opens without Aim's migration code
AIM_DATA_VERSION = (1, 3)


class RepoRef:
    """An Aim repo opened for writing: its paths at once, Aim's ``Repo`` made when first used (a
    round with nothing to write never imports Aim). Any attribute of Aim's ``Repo`` reads through."""

    def __init__(self, root: Path, repo: Any = None) -> None:
        self.root_path = str(root)
        self.path = os.path.join(self.root_path, ".aim")
        self._repo = repo

    def aim(self) -> Any:
        """Aim's ``Repo`` (made now if not yet)."""
        if self._repo is None:
            import gc

            from aim.sdk.repo import Repo

            self._repo = Repo.from_path(self.root_path)
            gc.freeze()  # Aim's modules, just imported, live as long as the process: no collection looks at them
        return self._repo

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.aim(), name)

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()


def get_repo(repo: Any) -> Any:
    """``repo`` itself when it is an ``aim.Repo`` (a :class:`RepoRef`'s), else Aim's pooled
    ``Repo`` for the path."""
    if isinstance(repo, RepoRef):
        return repo.aim()
    from aim.sdk.repo import Repo
    from aim.sdk.repo_utils import get_repo as aim_get_repo

    if isinstance(repo, Repo):
        return repo
    return aim_get_repo(os.fspath(repo))


def aim_path(repo: Any) -> str:
    """The ``.aim`` folder of a repo (an ``aim.Repo``, a :class:`RepoRef` or a path), without
    making Aim's ``Repo``."""
    path = getattr(repo, "path", None)
    if isinstance(path, str):
        return path
    return str(repo_root(repo) / ".aim")


def open_repo(path: str | os.PathLike[str], attempts: int = OPEN_ATTEMPTS) -> tuple[Any, bool]:
    """The Aim repo at ``path``, created when missing. Returns ``(repo, created)``; raises
    ``syncer.errors.RepoError`` (one line) when it cannot be used.

    Several syncers may start at once on one new repo (one per experiment set): Aim's index is
    a RocksDB that one process at a time may hold while creating it, so that is retried."""
    root = repo_root(path).resolve()
    created = not (root / ".aim").is_dir()
    if not created and _ready(root):  # an up-to-date repo: Aim is made when first needed
        return RepoRef(root), False
    import aimrocks.errors
    import sqlalchemy.exc
    from aim.sdk.repo import Repo

    busy = (aimrocks.errors.RocksIOError, sqlalchemy.exc.OperationalError)  # another process holds it

    def attempt() -> Any:
        root.mkdir(parents=True, exist_ok=True)
        if not os.access(root, os.W_OK) or (not created and not os.access(root / ".aim", os.W_OK)):
            raise PermissionError(13, "Permission denied")
        return Repo.from_path(str(root), init=created or not _schema_ready(root))

    try:

        def held(e: BaseException) -> bool:  # by another process (not a full disk: that is not waited out here)
            return isinstance(e, busy) and not space.short(root)

        for tried in retrying(held, attempts=attempts, first_wait=OPEN_FIRST_DELAY, max_wait=OPEN_MAX_DELAY):
            with tried:
                repo = attempt()
        return RepoRef(root, repo), created
    except PermissionError:
        raise RepoError(f"the Aim repo {root} is not writable") from None
    except Exception as e:  # whatever Aim raised (still busy, or anything else), as one line
        if space.short(root):  # a repo that cannot be made or opened for lack of space: waited for
            raise RepoFull(space.describe(root / ".aim")) from None
        raise RepoError(f"cannot open the Aim repo {root}: {getattr(e, 'strerror', None) or one_line(e)}") from None


def _ready(root: Path) -> bool:
    """Whether a repo can be written as it is, without Aim opening it first: writable, its
    data version the one written here, its run-metadata DB with its schema."""
    aim_dir = root / ".aim"
    if not (os.access(root, os.W_OK) and os.access(aim_dir, os.W_OK) and (aim_dir / "meta" / "index").is_dir()):
        return False
    try:
        version = tuple(int(x) for x in (aim_dir / "VERSION").read_text().strip().split("."))
    except (OSError, ValueError):
        return False
    return version == AIM_DATA_VERSION and _schema_ready(root)


def _schema_ready(root: Path) -> bool:
    """Whether Aim's run-metadata DB got its schema. A repo whose creation was cut short (a
    SIGKILL while Aim's migration ran) has none; opening it with init=True heals it (Aim's
    init is idempotent, but it runs the migration in a subprocess: seconds, so not always)."""
    db = root / ".aim" / "run_metadata.sqlite"
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return con.execute("SELECT version_num FROM alembic_version").fetchone() is not None
    except sqlite3.Error:
        return False


def fresh_repo(path: Any) -> Any:
    """A new ``aim.Repo`` for reading what was written a moment ago in this same process.

    ``Repo.list_all_runs()`` (``_all_run_hashes``) is cached for 0.5 s per repo *path* (a
    ``ttl_cache`` keyed by the Repo object, which hashes and compares by path), so even a new
    ``Repo(path)`` may list the runs of half a second ago; this drops that cache.  Other
    processes (``aim up``) are not affected.  ``path``: an ``aim.Repo``, its root or its ``.aim``.
    Close the returned Repo when done."""
    from aim.sdk.repo import Repo

    Repo._all_run_hashes.cache_clear()
    return Repo(path.root_path if hasattr(path, "root_path") else str(repo_root(path)))


def run_hashes(repo: Any) -> set[str]:
    """The hashes of every run the repo holds (its meta chunks): one folder listing."""
    chunks = os.path.join(aim_path(repo), "meta", "chunks")
    try:
        with os.scandir(chunks) as it:
            return {e.name for e in it if e.is_dir()}
    except FileNotFoundError:
        return set()


REPO_ID_FILE = "mlflow-syncer.id"


def repo_id(repo: Any) -> str:
    """An id of this Aim repo, made on first use (`.aim/mlflow-syncer.id`): a deleted and
    re-created repo has a new one, so a sync state can tell it is not the repo it described."""
    import uuid

    path = os.path.join(aim_path(repo), REPO_ID_FILE)
    try:
        with open(path) as f:
            found = f.read().strip()
        if found:
            return found
    except FileNotFoundError:
        pass
    new = uuid.uuid4().hex
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(new + "\n")
    try:
        os.link(tmp, path)  # the first of several syncers starting at once wins
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path) as f:
        return f.read().strip()
