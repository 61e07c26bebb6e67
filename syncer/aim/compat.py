"""The guard: the Aim internals this package relies on, checked once before the first write.

``check_aim_compatibility()`` raises :class:`AimInternalsChanged` (a
``syncer.errors.InternalsChanged``: fatal, one line per problem) when the installed Aim is
outside ``SUPPORTED_AIM``, lacks an attribute listed in ``INTERNALS``, or hashes steps / encodes
values differently from ``encoding`` (a functional check against Aim's own functions).  The
byte-level layout test (``tests/test_aim_adapter.py``) compares what the writer stores with what
``aim.Run.track`` stores.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import InternalsChanged
from . import encoding as enc

# The Aim versions whose storage layout this package was written against and tested with.
SUPPORTED_AIM = ((3, 29), (3, 30))  # [3.29, 3.30)

# Every Aim (and aimrocks / filelock) internal in use: module -> dotted attributes.
INTERNALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "aimrocks",
        (
            "WriteBatch.put",
            "WriteBatch.delete_range",
            "DB.write",
            "DB.flush_wal",
            "errors.RocksIOError",
            "Options",
            "VectorMemtableFactory",
        ),
    ),
    (
        "aim.sdk.repo",
        (
            "Repo.request_container",
            "Repo.request_tree",
            "Repo.request_props",
            "Repo.request_run_lock",
            "Repo.from_path",
            "Repo.exists",
            "Repo._get_index_container",
            "ContainerConfig",
            "Repo._all_run_hashes.cache_clear",
        ),
    ),
    ("aim.sdk.repo_utils", ("get_repo",)),
    ("aim.sdk.data_version", ("DATA_VERSION",)),
    ("aim.sdk.lock_manager", ("LockManager.softlock_fname", "LockManager.machine_id", "SFRunLock")),
    ("filelock", ("SoftFileLock.lock_file", "SoftFileLock.timeout", "SoftFileLock.is_thread_local")),
    (
        "aim.sdk.index_manager",
        # run on a manager made without its observers (index.indexer): see _indexer_problems
        ("RepoIndexManager.index", "RepoIndexManager._get_run_checksum", "RepoIndexManager._stop_monitoring_chunk"),
    ),
    ("aim.sdk.tracker", ("RunTracker._track", "STEP_HASH_FUNCTIONS")),
    ("aim.sdk.sequence", ("SequenceV2Data.numpy",)),
    ("aim.storage.context", ("Context",)),
    ("aim.storage.encoding", ("encode", "encode_path", "encode_key", "encode_int64", "decode_path")),
    ("aim.storage.treeutils", ("encode_tree",)),
    ("aim.storage.utils", ("ArrayFlag", "ObjectFlag")),
    ("aim.storage.types", ("BLOB.load",)),  # a blob in a meta chunk read before the chunk closes (batch)
    (
        "aim.storage.rockscontainer",
        (
            "RocksContainer.set",
            "RocksContainer.delete_range",
            "RocksContainer.batch",
            "RocksContainer.commit",
            "RocksContainer.close",
            "RocksContainer.db",
            "RocksContainer._db",  # set to None: Aim's close then skips its memtable flush (chunks._let_go)
        ),
    ),
    ("aim.storage.hashing.hashing", ("hash_auto", "_HASH_UNIFORM_SALT")),
    ("aim.storage.hashing.c_hash", ("det_hash",)),
    (
        "aim.storage.structured.sql_engine.models",
        (
            "Run.hash",
            "Run.name",
            "Run.description",
            "Run.is_archived",
            "Run.created_at",
            "Run.finalized_at",
            "Run.experiment",
            "Run.tags",
            "Experiment.name",
            "Experiment.description",
            "Tag.name",
            "run_tags",
        ),
    ),
    ("aim.storage.structured.sql_engine.entities", ("ModelMappedRun", "ModelMappedExperiment")),
)


class AimInternalsChanged(InternalsChanged):
    """The installed Aim does not have the internals this package relies on."""


_compat_checked = False


def check_aim_compatibility() -> None:
    """Raise :class:`AimInternalsChanged` with a clear message when the installed Aim lacks an
    internal this package relies on, or its step hashing / encoding differs from what we write."""
    global _compat_checked
    if _compat_checked:
        return
    problems: list[str] = []
    if enc.IMPORT_ERROR is not None:
        problems.append(f"importing Aim's storage internals failed: {enc.IMPORT_ERROR!r}")
    try:
        from aim.__version__ import __version__ as aim_version

        import aim  # noqa: F401
    except Exception as e:  # pragma: no cover - aim missing entirely
        raise AimInternalsChanged(f"cannot import aim: {e}") from e
    problems += _version_problems(str(aim_version))
    for modname, attrs in INTERNALS:
        problems += _missing(modname, attrs)
    if not problems:
        problems += _encoding_problems()
        problems += _image_problems()
        problems += _indexer_problems()
    if not problems:  # it runs Aim's indexing code: only once that is known to be safe to run
        problems += _read_without_aim_problems()
    if problems:
        raise AimInternalsChanged(
            "syncer.aim relies on Aim internals that are not as expected:\n  - "
            + "\n  - ".join(problems)
            + "\nPin aim to the supported range or update syncer/aim/ (see syncer/aim/compat.py)."
        )
    _compat_checked = True


def _version_problems(aim_version: str) -> list[str]:
    try:
        ver = tuple(int(x) for x in aim_version.split(".")[:2])
    except ValueError:
        ver = (0, 0)
    lo, hi = SUPPORTED_AIM
    if lo <= ver < hi:
        return []
    return [
        (
            f"aim {aim_version} is outside the supported range "
            f"[{lo[0]}.{lo[1]}, {hi[0]}.{hi[1]}) (pinned in pyproject.toml)"
        )
    ]


def _missing(modname: str, attrs: tuple[str, ...]) -> list[str]:
    try:
        mod = __import__(modname, fromlist=["_"])
    except Exception as e:  # whatever the import raised is the problem reported
        return [f"module {modname} cannot be imported ({e})"]
    problems = []
    for a in attrs:
        obj: Any = mod
        for part in a.split("."):
            if not hasattr(obj, part):
                problems.append(f"{modname}.{a} is missing")
                break
            obj = getattr(obj, part)
    return problems


def _encoding_problems() -> list[str]:
    """Functional checks: our fast step-key derivation and value encoding equal Aim's own."""
    from aim.sdk.tracker import STEP_HASH_FUNCTIONS
    from aim.storage import encoding as aim_encoding
    from aim.storage.utils import ArrayFlag

    E: Any = aim_encoding  # compiled (Cython): mypy sees none of its functions
    problems = []
    try:
        for s in (0, 1, -1, 7, 2**31 + 5, 10**12, -(10**12), enc.MAX_ABS_STEP):
            hash_step: Any = STEP_HASH_FUNCTIONS[2]
            want = E.encode_key(hash_step(s)) + enc.PATH_SENTINEL
            if enc.step_key(s) != want:
                problems.append(f"Aim's step hashing changed (step {s})")
                break
        if E.encode(ArrayFlag) != enc.ARRAY_FLAG:
            problems.append("Aim's array-flag encoding changed")
        floats = [1.5, -0.0, math.nan, math.inf, -1e-300, 1.7e9 + 0.001]
        ints = [0, -1, 2**53, -(2**40) + 3]
        if (
            enc.encode_column(enc.FLOAT_TAG, np.array(floats)) != [E.encode(x) for x in floats]
            or enc.encode_column(enc.INT_TAG, np.array(ints, dtype=np.int64)) != [E.encode(x) for x in ints]
            or E.encode(None) != enc.NONE_ENC
        ):
            problems.append("Aim's value encoding changed")
    except Exception as e:  # pragma: no cover - reported as a problem
        problems.append(f"Aim's hashing/encoding cannot be exercised ({e!r})")
    return problems


def _image_problems() -> list[str]:
    """`objects.svg_image` fills an aim.Image's storage: the keys must be the ones Aim reads."""
    try:
        from aim.sdk.objects.image import Image
        from PIL import Image as PILImage

        image: Any = Image(PILImage.new("RGB", (2, 1)))
        storage = image.storage
        keys = set(storage.keys())
        missing = [k for k in ("data", "format", "source", "width", "height") if k not in keys]
        if missing or not callable(getattr(storage["data"], "load", None)):
            return [f"aim.Image's storage no longer has {missing or ['data.load']}"]
    except Exception as e:  # pragma: no cover - reported as a problem
        return [f"aim.Image cannot be made ({e!r})"]
    return []


def _read_without_aim_problems() -> list[str]:
    """What ``repo`` and ``index`` read without loading Aim (a round with nothing to write): the
    repo's data version, the run index's keys and str values, a chunk's stamp -- as Aim has them."""
    import tempfile
    import types

    from aim.sdk.data_version import DATA_VERSION
    from aim.storage import encoding as aim_encoding

    from . import index
    from .repo import AIM_DATA_VERSION

    E: Any = aim_encoding  # compiled (Cython)
    problems = []
    if tuple(DATA_VERSION) != AIM_DATA_VERSION:
        problems.append(f"Aim's data version is {DATA_VERSION}, not {AIM_DATA_VERSION}")
    if (
        E.encode("s") != index.STR_TAG + b"s"
        or E.encode_path(("index_cache", "h")) != index.STAMP_PREFIX + b"h" + index.SENTINEL
        or E.encode_path(("meta", "chunks", "h", "x"))
        != index.CHUNKS_PREFIX + b"h" + index.SENTINEL + b"x" + index.SENTINEL
    ):
        problems.append("Aim's encoding of the run index's keys or values changed")
    with tempfile.TemporaryDirectory() as tmp:
        chunk = os.path.join(tmp, ".aim", "meta", "chunks", "h")
        os.makedirs(os.path.join(chunk, "sub"))
        for name, data in (("CURRENT", b"1"), ("LOG", b"22"), ("000001.sst", b"333"), ("sub/x", b"")):
            with open(os.path.join(chunk, name), "wb") as f:
                f.write(data)
        repo = types.SimpleNamespace(path=os.path.join(tmp, ".aim"))
        if index.chunk_stamp(repo, "h") != index.indexer(repo)._get_run_checksum("h"):
            problems.append("Aim's stamp of a run's chunk (RepoIndexManager._get_run_checksum) changed")
    return problems


# the methods of Aim's RepoIndexManager that index.indexer calls
INDEXER_METHODS = ("index", "_get_run_checksum")


def _indexer_problems() -> list[str]:
    """``index.indexer`` runs Aim's ``RepoIndexManager`` indexing code on a manager made without
    its ``__init__`` (which creates a watchdog inotify observer that lives as long as the
    process): that code must read nothing on ``self`` but what ``index.INDEXER_ATTRS`` sets, or
    methods that themselves do (checked in their bytecode), or it would fail or watch again."""
    from .index import INDEXER_ATTRS, _indexer_class

    return self_attrs_problems(_indexer_class(), INDEXER_METHODS, INDEXER_ATTRS)


def self_attrs_problems(cls: type, methods: tuple[str, ...], allowed: tuple[str, ...]) -> list[str]:
    """Attributes that ``methods`` of ``cls`` (and the inherited methods they call on ``self``)
    read or write on ``self`` beyond ``allowed`` and ``cls``'s own methods, one line each."""
    import dis

    problems: list[str] = []
    todo, seen = list(methods), set()
    while todo:
        name = todo.pop()
        if name in seen or name in vars(cls):  # a method of cls itself is ours
            continue
        seen.add(name)
        code = getattr(getattr(cls, name, None), "__code__", None)
        if code is None:
            problems.append(f"{cls.__mro__[1].__name__}.{name} is not a Python function")
            continue
        ins = list(dis.get_instructions(code))
        for a, b in zip(ins, ins[1:]):
            loads = a.argval if isinstance(a.argval, tuple) else (a.argval,)  # LOAD_FAST_LOAD_FAST
            if not (a.opname.startswith("LOAD_FAST") and loads[-1] == "self"):
                continue
            if b.opname not in ("LOAD_ATTR", "LOAD_METHOD", "STORE_ATTR", "DELETE_ATTR"):
                continue
            attr = b.argval
            if attr in allowed:
                continue
            if callable(getattr(cls, attr, None)):
                todo.append(attr)
            else:
                problems.append(
                    f"{cls.__mro__[1].__name__}.{name} uses self.{attr}, which syncer.aim.index.indexer does not set"
                )
    return list(dict.fromkeys(problems))
