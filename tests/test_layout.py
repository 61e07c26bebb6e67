"""The shape of the code, checked: config is a leaf, no module grows into a room of its own,
no error is told apart by its message, training/ and syncer/ stay apart (training never imports
syncer; syncer never imports torch or transformers), and the tools a contributor runs pass."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SYNCER = ROOT / "syncer"
TRAINING = ROOT / "training"
HEAVY = ("torch", "transformers")


def test_config_is_a_leaf():
    code = (
        "import sys, syncer.config; "
        "print(sorted(m for m in sys.modules if m.startswith('syncer.') and m != 'syncer.config'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    loaded = eval(out)
    assert "syncer.pipeline" not in loaded and "syncer.sink" not in loaded, loaded
    assert not [m for m in loaded if not m.startswith("syncer.errors")], loaded


def test_no_module_over_450_lines():
    big = {
        p.relative_to(ROOT).as_posix(): n
        for folder in (SYNCER, TRAINING)
        for p in folder.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 450
    }
    assert not big, big


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, at any depth (inside functions too): ``import a.b``,
    ``from a.b import c`` (relative ones as ``.c``, ``..c``), and ``importlib.import_module("a.b")`` /
    ``__import__("a.b")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, "." * node.level + (node.module or "")))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _importing(folder: Path, banned) -> list[str]:
    return [
        f"{p.relative_to(ROOT)}:{line}: {module}"
        for p in sorted(folder.rglob("*.py"))
        for line, module in _imports(p)
        if banned(module)
    ]


def test_training_never_imports_syncer():
    # absolute imports of syncer, and relative ones that climb out of the training package
    hits = _importing(TRAINING, lambda m: m.split(".")[0] == "syncer" or m.startswith(".."))
    assert not hits, hits


def test_syncer_never_imports_torch_or_transformers_in_its_source():
    hits = _importing(SYNCER, lambda m: m.split(".")[0] in HEAVY)
    assert not hits, hits


# Imports the syncer's entry points and then every other module of the package (one that needs an
# optional package not installed here is reported with that package's name), then says what got loaded.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import syncer
for name in ("syncer.cli", "syncer.daemon", "syncer.rounds", "syncer.pipeline"):
    importlib.import_module(name)
failed = {}
for info in pkgutil.walk_packages(syncer.__path__, "syncer."):
    if info.name.rsplit(".", 1)[-1] == "__main__":
        continue
    try:
        importlib.import_module(info.name)
    except ModuleNotFoundError as exc:
        if (exc.name or "syncer").split(".")[0] == "syncer":
            raise
        failed[info.name] = exc.name
imported = sorted(m for m in sys.modules if m.split(".")[0] == "syncer")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
print(json.dumps({"imported": imported, "failed": failed, "heavy": heavy}))
"""


def test_syncer_never_loads_torch_or_transformers():
    proc = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    on_disk = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in SYNCER.rglob("*.py")
        if p.name != "__main__.py"
    }
    assert on_disk <= set(report["imported"]) | set(report["failed"]), on_disk - set(report["imported"])
    assert not report["heavy"], (report["heavy"], report["failed"])


def test_no_error_is_classified_by_its_text():
    pattern = re.compile(r"in str\(e\)|in msg\b|in str\(exc\)|\.args\[0\] ==")
    hits = [
        f"{p.relative_to(ROOT)}:{i}"
        for p in SYNCER.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not hits, hits


def test_only_syncer_aim_touches_aim_internals():
    internal = re.compile(
        r"^\s*(from|import) aim\.(storage|sdk\.(tracker|index_manager|lock_manager|repo_utils))|"
        r"^\s*(from|import) aimrocks"
    )
    hits = [
        p.relative_to(ROOT).as_posix()
        for p in SYNCER.rglob("*.py")
        if "aim" not in p.relative_to(SYNCER).parts[:1] and any(internal.match(ln) for ln in p.read_text().splitlines())
    ]
    assert not hits, hits


def _syncer_import_graph() -> dict[str, set[str]]:
    """module -> the syncer modules it imports, every import statement counted (module level,
    inside functions, under TYPE_CHECKING); `from pkg import sub` names the submodule only."""
    mods = {}
    for p in SYNCER.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, (p, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                subs = [f"{prefix}.{a.name}" for a in node.names if f"{prefix}.{a.name}" in mods]
                targets = subs + ([prefix] if len(subs) < len(node.names) else [])
            else:
                continue
            graph[m].update(t for t in targets if t in mods and t != m)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle_between_syncer_modules():
    graph = _syncer_import_graph()
    assert len(graph) > 50 and "syncer.sources.base" in graph["syncer.sources.files"]  # the graph is real
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # and cycles are found
    assert _cycles(graph) == []


def test_every_room_has_a_name_unique_in_the_tree():
    """A module's file name says where it lives: no two modules of syncer/, training/, tests/ or
    bench/ share one (package markers and pytest's conftest aside)."""
    seen: dict[str, list[str]] = {}
    for top in ("syncer", "training", "tests", "bench"):
        for p in (ROOT / top).rglob("*.py"):
            if (ROOT / "bench" / "out") in p.parents:  # what the benchmarks make (git-ignored): aimlflow's venv
                continue
            if p.name not in ("__init__.py", "__main__.py", "conftest.py"):
                seen.setdefault(p.name, []).append(p.relative_to(ROOT).as_posix())
    clashes = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not clashes, clashes


def test_the_pre_commit_hooks_run_the_make_gate():
    """`.pre-commit-config.yaml` and `make lint` run the same tools on the same folders."""
    import yaml

    makefile = (ROOT / "Makefile").read_text()
    linted = re.search(r"^LINTED := (.+)$", makefile, re.M).group(1).split()
    hooks = {
        h["id"]: h for r in yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"] for h in r["hooks"]
    }
    assert hooks["ruff-check"]["entry"].endswith("ruff check") and hooks["ruff-format"]["entry"].endswith(
        "format --check"
    )
    assert hooks["mypy"]["entry"].endswith("mypy") and "tests/unit" in hooks["unit-tests"]["entry"]
    for hook in ("ruff-check", "ruff-format"):
        assert hooks[hook]["files"] == "^(" + "|".join(linted) + ")/", hook
    assert sorted(linted) == ["bench", "syncer", "tests", "training"]
