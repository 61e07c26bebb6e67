"""What a file store's folders say without reading any file: `stat` only.

A run folder is `<store>/<experiment>/<run>/` with `meta.yaml` and the folders `params/`,
`tags/`, `inputs/` (one file per param / tag / input), `metrics/` (one append-only file per
key; keys with "/" are sub-folders) and usually `artifacts/`."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import KeyMark, fingerprint

# the files of these folders are stat'ed one by one (a tag is edited in place); params are
# written once and never changed by MLflow, so for them the folders' mtimes say enough
META_PARTS = ("tags", "inputs", "outputs")  # outputs: the logged models (MLflow 3)
WRITE_ONCE_PARTS = ("params",)


def dir_mtimes(root: Path) -> list[tuple[str, int]]:
    """(relative posix path, mtime_ns) of root and every folder under it: a file added or
    removed anywhere changes one of them. Only folders are stat'ed."""
    out = []
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            out.append((d.relative_to(root).as_posix(), d.stat().st_mtime_ns))
            stack.extend(Path(e.path) for e in os.scandir(d) if e.is_dir(follow_symlinks=False))
        except OSError:
            continue
    out.sort()
    return out


def tree_stats(root: Path) -> list[tuple[str, int, int]]:
    """(relative posix path, size, mtime_ns) of every regular file under root, sorted; [] when
    root is missing. Links are not followed and nothing is opened. (Paths as strings: a listing
    of a large store makes tens of thousands of them.)"""
    out = []
    top = os.fspath(root)
    cut = len(os.path.join(top, ""))  # the relative path starts after root and its separator
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            continue  # unreadable: the reader of that part reports it
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                stack.append(e.path)
            elif stat.S_ISREG(st.st_mode):
                rel = e.path[cut:]
                out.append((rel if os.sep == "/" else rel.replace(os.sep, "/"), st.st_size, st.st_mtime_ns))
    out.sort()
    return out


@dataclass(frozen=True)
class RunFacts:
    """One run folder, from stat: whether its metadata moved, how long each metric file is."""

    meta: str  # digest of meta.yaml's, the tags/inputs/outputs files', the params folders' and its models' stat
    marks: dict[str, KeyMark]  # metric key -> its file's size
    stats: int  # how many entries were stat'ed

    @classmethod
    def of(cls, run_dir: Path, *, experiment: Any) -> RunFacts:
        meta = (run_dir / "meta.yaml").stat()
        parts: list[Any] = [tree_stats(run_dir / sub) for sub in META_PARTS]
        parts += [dir_mtimes(run_dir / sub) for sub in WRITE_ONCE_PARTS]
        # the models it logged (outputs/<model id>/meta.yaml): a score logged to one later, by
        # another run, lands in the model's folder, not in this run's
        outputs = parts[META_PARTS.index("outputs")]
        model_ids = sorted({path.split("/")[0] for path, _size, _mtime in outputs})
        models = [model_stats(run_dir.parent / "models" / model_id) for model_id in model_ids]
        metrics = tree_stats(run_dir / "metrics")
        digest = fingerprint(meta.st_mtime_ns, meta.st_size, parts, models, experiment.name, experiment.lifecycle_stage)
        stats = 1 + sum(map(len, parts)) + sum(len(m[1]) for m in models) + len(metrics)
        return cls(digest, {rel: KeyMark(size=size) for rel, size, _ in metrics}, stats)


def model_stats(model_dir: Path) -> tuple[tuple[int, int] | None, list[tuple[str, int, int]]]:
    """A logged model's folder (`<experiment>/models/<model id>/`), from stat: its meta.yaml
    (status) and the files of its metrics, params and tags."""
    try:
        st = (model_dir / "meta.yaml").stat()
        meta: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
    except OSError:
        meta = None
    return meta, [s for sub in ("metrics", "params", "tags") for s in tree_stats(model_dir / sub)]


def artifacts_mark(root: Path | None) -> str | None:
    """A digest of an artifact folder's files (paths, sizes, mtimes); None when it is not a
    local folder (a remote artifact store is compared by listing it)."""
    if root is None or not root.is_dir():
        return None if root is None else fingerprint([])
    return fingerprint(tree_stats(root))


def experiments_mark(root: Path) -> str:
    """A digest that moves when a file store's experiments may have changed: an experiment
    folder made, deleted or restored (the folders in the store and in `.trash`), renamed (its
    `meta.yaml`) or tagged (its `tags/`). A few stats per experiment, none per run: MLflow's
    own `search_experiments` lists every experiment folder, runs and all."""
    parts: list[Any] = []
    for top in (root, root / ".trash"):
        try:
            dirs = sorted(e.name for e in os.scandir(top) if e.is_dir(follow_symlinks=False) and e.name != ".trash")
        except OSError:
            continue
        for name in dirs:
            try:
                st = (top / name / "meta.yaml").stat()
            except OSError:
                parts.append((str(top), name))
                continue
            parts.append((str(top), name, st.st_mtime_ns, st.st_size, tree_stats(top / name / "tags")))
    return fingerprint(parts)


def mtime_ns(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def local_artifacts_mark(artifact_uri: str | None) -> str | None:
    """`artifacts_mark` of an artifact root given as a URI: None unless it is a local folder."""
    from .uri import is_local_store, local_path

    if not artifact_uri or not is_local_store(artifact_uri):
        return None
    return artifacts_mark(local_path(artifact_uri))
