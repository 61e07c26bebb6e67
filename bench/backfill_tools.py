"""The contenders of bench/backfill.py and how one timed pass of each runs.

A tool is one entry of `TOOLS`: the command that converts a store (a path, or `sqlite:///…`) into
an initialised, empty Aim repo, whether it runs with this tree's syncer on PYTHONPATH, and which
kinds of store it takes. Every pass is a child process on fresh copies (store and repo made
untimed); wall time includes interpreter start-up and imports, as a user sees it.

* `ours`: `syncer backfill` (default workers); `ours-w1`: the same with `--workers 1`;
* `sync`: `syncer sync --no-watch`, timed from its start to the end of its catching up (the
  "caught up with the store" line, or a first round with nothing left), then stopped (SIGTERM);
* `aimlflow`: aimlflow 0.2.1's conversion (`aimlflow_backfill.py`, in its own venv);
* `limit`: `backfill_limit.py`, the same points parsed and put into one RocksDB with no Aim
  bookkeeping (the floor);
* `base`: `syncer backfill` of another commit (`--base`; its syncer/ exported to the temp folder).

`noop_passes` times a backfill that has nothing to do (the store synced before, untimed) for
`ours` and `base`, on the same store and in the same run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import BENCH, OUT, PY, ROOT, child_env, init_aim_repo, run_timed


@dataclass(frozen=True)
class Store:
    name: str  # files40, sqlite40, files1000, or the folder's name
    path: Path  # a folder (file store) or a database file (sqlite)
    kind: str  # "file" or "sqlite"

    def uri(self, copy: Path) -> str:
        return str(copy) if self.kind == "file" else f"sqlite:///{copy}"

    def copy_to(self, dst: Path) -> Path:
        if self.kind == "file":
            shutil.copytree(self.path, dst)
        else:
            shutil.copy2(self.path, dst)
        return dst


@dataclass(frozen=True)
class Tool:
    cmd: Callable[[Any, str, Path], list[str]]  # (args, store uri, repo) -> the command
    own_tree: bool  # runs with this tree's syncer on PYTHONPATH
    kinds: tuple[str, ...] = ("file", "sqlite")
    daemon: bool = False  # timed until caught up, then stopped
    env: Callable[[Any], dict[str, str]] | None = None
    cwd: Callable[[Any], Path] | None = None  # where it runs (`python -m` finds the syncer of its folder first)


def _syncer(args: Any) -> list[str]:
    return [str(PY), "-m", "syncer"] if args.syncer is None else [args.syncer]


def _ours(*extra: str) -> Callable[[Any, str, Path], list[str]]:
    def cmd(args: Any, uri: str, repo: Path) -> list[str]:
        c = [*_syncer(args), "backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), *extra]
        return c + (["--no-context-map"] if args.no_context_map else [])

    return cmd


def _sync(args: Any, uri: str, repo: Path) -> list[str]:
    c = [*_syncer(args), "sync", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--no-watch"]
    return c + ["--interval", "3600", "--full-scan-interval", "3600", "--log-level", "info"]


def _aimlflow(args: Any, uri: str, repo: Path) -> list[str]:
    script = str(BENCH / "aimlflow_backfill.py")
    return [args.aimlflow_python, script, "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--no-count"]


def _limit(args: Any, uri: str, repo: Path) -> list[str]:
    return [str(PY), str(BENCH / "backfill_limit.py"), "--store", uri, "--db", str(repo / "limit-db")]


def _base(args: Any, uri: str, repo: Path) -> list[str]:
    return [str(PY), "-m", "syncer", "backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo)]


def base_env(args: Any) -> dict[str, str]:
    return {**child_env(own_tree=False), "PYTHONPATH": str(base_tree(args.base))}


TOOLS: dict[str, Tool] = {
    "ours": Tool(_ours(), True),
    "ours-w1": Tool(_ours("--workers", "1"), True),
    "sync": Tool(_sync, True, daemon=True),
    "aimlflow": Tool(_aimlflow, False),
    "limit": Tool(_limit, True),
    "base": Tool(_base, False, env=base_env, cwd=lambda args: base_tree(args.base)),
}


def base_tree(rev: str) -> Path:
    """This repository's syncer/ at commit `rev`, exported once (git archive) into the temporary
    folder: outside the tree, where its modules would clash with this tree's."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], capture_output=True, text=True, cwd=ROOT, check=True)
    tree = Path(tempfile.gettempdir()) / f"syncer-bench-base-{sha.stdout.strip()}"
    if not (tree / "syncer").is_dir():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", rev, "syncer"], capture_output=True, cwd=ROOT, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def _fresh_work(store: Store, name: str) -> tuple[Path, Path, Path]:
    """bench/out/work/<store>/<name> made afresh: a copy of the store and an initialised empty Aim
    repo in it, written out to the disk (`sync`) before the timed pass starts (untimed). An
    earlier pass's folder is moved into the trash, not deleted: see `empty_trash`."""
    work = OUT / "work" / store.name / name
    if work.exists():
        TRASH.mkdir(parents=True, exist_ok=True)
        work.rename(TRASH / f"{store.name}-{name}-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True)
    copy = store.copy_to(work / ("store" if store.kind == "file" else "store.db"))
    repo = work / "aim"
    init_aim_repo(repo)
    os.sync()  # the copy's writeback done before the clock starts, not during the pass
    return work, copy, repo


# Earlier passes' folders, deleted once the run's passes are done (`empty_trash`). Deleting a
# folder of 200,000 files right before a pass slowed the pass that followed: on an ext4 without
# a journal (this machine's disk) a new file's inode skips every inode freed in the last 5 minutes
# (`recently_deleted`, ~300 s while their blocks are dirty), so each file RocksDB creates paid for
# the deletion before it (system time 17-19 s instead of 9-10 s for the same files1000 backfill).
TRASH = OUT / "trash"


def empty_trash() -> None:
    """Delete the folders of earlier passes (after the timed passes, or before the first one)."""
    if TRASH.exists():
        shutil.rmtree(TRASH)


def one_pass(tool: str, i: int, store: Store, args: Any) -> dict[str, Any]:
    """Copy the store, make an empty Aim repo (untimed), run the tool once (timed)."""
    work, copy, repo = _fresh_work(store, f"{tool}-{i}")
    spec = TOOLS[tool]
    cmd = spec.cmd(args, store.uri(copy), repo)
    env = spec.env(args) if spec.env else child_env(own_tree=spec.own_tree)
    cwd = spec.cwd(args) if spec.cwd else None
    res = (
        _daemon_pass(cmd, work, env)
        if spec.daemon
        else run_timed(cmd, work / "log.stdout", work / "log.stderr", env, cwd=cwd)
    )
    res.update(tool=tool, repeat=i, repo=str(repo), store=store.uri(copy), cmd=cmd)
    if res["rc"] != 0:
        tail = (work / "log.stderr").read_text()[-3000:]
        raise SystemExit(f"{tool} pass {i} on {store.name} failed (rc={res['rc']}): {' '.join(cmd)}\n{tail}")
    out = res.get("output", "").strip()
    if tool in ("aimlflow", "limit") and out:
        res["inner"] = json.loads(out.splitlines()[-1])
    if spec.own_tree and tool != "limit":  # how many processes the syncer chose (it says when more than one)
        said = re.search(r"(\d+) processes side by side", (work / "log.stderr").read_text())
        res["processes"] = int(said.group(1)) if said else 1
    return res


def _daemon_pass(cmd: list[str], work: Path, env: dict[str, str], timeout: float = 3600) -> dict[str, Any]:
    """`syncer sync` from its start to the end of its catching up, then SIGTERM."""
    log = open(work / "log.stderr", "w")
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert p.stderr is not None
    wall = None
    for line in p.stderr:
        log.write(line)
        if "caught up with the store" in line or ("round:" in line and "catching up" not in line):
            wall = time.perf_counter() - t0
            break
        if time.perf_counter() - t0 > timeout:
            break
    p.send_signal(signal.SIGTERM)
    _, rest = p.communicate(timeout=120)
    log.write(rest or "")
    log.close()
    return {"rc": 0 if wall is not None and p.returncode == 0 else 1, "wall_s": round(wall or 0.0, 3), "output": ""}


def noop_passes(store: Store, args: Any) -> dict[str, list[float]]:
    """A backfill with nothing to do, `args.repeats` times for ours and for `args.base` (each on
    a repo it synced itself first, untimed), interleaved."""
    out: dict[str, list[float]] = {"ours": [], "base": []}
    repos = {}
    for tool in out:
        work, copy, repo = _fresh_work(store, f"noop-{tool}")
        spec = TOOLS[tool]
        env = spec.env(args) if spec.env else child_env(own_tree=True)
        cmd = spec.cmd(args, store.uri(copy), repo)
        cwd = spec.cwd(args) if spec.cwd else None
        first = run_timed(cmd, work / "setup.log", env=env, cwd=cwd)  # the sync that makes it a no-op
        if first["rc"] != 0:
            raise SystemExit(f"{tool} could not sync {store.name}: {first['output'][-2000:]}")
        repos[tool] = (cmd, env, work, cwd)
    for i in range(args.repeats):
        for tool, (cmd, env, work, cwd) in repos.items():
            r = run_timed(cmd, work / f"noop-{i}.log", env=env, cwd=cwd)
            if r["rc"] != 0 or "(0 updated), 0 points" not in r["output"]:
                raise SystemExit(f"{tool}: the second backfill was not a no-op: {r['output'][-2000:]}")
            out[tool].append(r["wall_s"])
            print(f"  no-op {tool:8s} #{i}: {r['wall_s']:7.2f}s wall", flush=True)
    return out
