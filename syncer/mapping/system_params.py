"""What MLflow recorded of where a run came from -> Aim's `__system_params`, in the structure Aim's
own `Run(log_system_params=True)` writes (aim/sdk/run.py, aim/ext/utils.py in Aim 3.29):

    {"git_info": {"branch": str, "remote_origin_url": str, "commit": {"hash": str, "timestamp": str, "author": str}},
     "executable": str, "arguments": [str, ...], "packages": {name: version}, "env_variables": {name: value}}

Only what MLflow recorded, never an empty string in place of the unknown: a key MLflow has nothing
for is left out. MLflow records no commit time or author (`commit` has its `hash` only), no Python
interpreter (no `executable`), of the command line only the entry point (`arguments` holds
`mlflow.source.name`, and an MLflow Project's entry point), and no environment variables.
`packages` come from files the run logged (`packages_of`). Pure."""

from __future__ import annotations

import re
from typing import Any

SYSTEM_PARAMS = "__system_params"  # the run[...] key Aim's UI reads (Overview: CLI arguments, packages, git)

GIT_COMMIT = "mlflow.source.git.commit"
GIT_BRANCH = "mlflow.source.git.branch"
GIT_REPO_URL = "mlflow.source.git.repoURL"
GIT_REPO_URL_OLD = "mlflow.gitRepoURL"  # MLflow < 1.0 spelled it so
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
ENTRY_POINT = "mlflow.project.entryPoint"
PROJECT_TYPE = "PROJECT"

# the files whose pins become `packages`, in the order they are preferred (the first file naming a
# package gives its version): the run's own list, then what its logged models need
REQUIREMENTS_FILES = ("requirements.txt", "python_env.yaml", "conda.yaml")
MODEL_FILE = "MLmodel"  # a folder holding it is an MLflow model (MLflow 2 logs models into the run's artifacts)
MAX_ENV_FILE_BYTES = 256 * 1024  # larger "requirements" are not read (nor fetched from a remote store)

_REQ = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?P<spec>[=<>!~][^;#@]*)?\s*(?:[;#].*)?$"
)


def git_info(tags: dict[str, str]) -> dict[str, Any]:
    """Aim's `git_info` from MLflow's git tags ({} when MLflow recorded no commit)."""
    commit = (tags.get(GIT_COMMIT) or "").strip()
    if not commit:
        return {}
    out: dict[str, Any] = {}
    branch = (tags.get(GIT_BRANCH) or "").strip()
    url = (tags.get(GIT_REPO_URL) or tags.get(GIT_REPO_URL_OLD) or "").strip()
    if branch:
        out["branch"] = branch
    if url:
        out["remote_origin_url"] = url
    out["commit"] = {"hash": commit}
    return out


def arguments(tags: dict[str, str]) -> list[str]:
    """What MLflow knows of the command line: its entry point (`mlflow.source.name`: the script,
    `sys.argv[0]`; a notebook's path; an MLflow Project's URI, then `-e <entry point>`)."""
    name = (tags.get(SOURCE_NAME) or "").strip()
    if not name:
        return []
    entry = (tags.get(ENTRY_POINT) or "").strip()
    if entry and tags.get(SOURCE_TYPE) == PROJECT_TYPE:
        return [name, "-e", entry]
    return [name]


def canonical_name(name: str) -> str:
    """A package name as Aim's `get_installed_packages` keys it (pkg_resources' `key`)."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).lower()


def requirement(line: str) -> tuple[str, str] | None:
    """(name, version) of one requirement line: `x==1.2` -> ("x", "1.2"); any other specifier is
    kept as written (`x>=1.2` -> ("x", ">=1.2")); a bare name, an option (`-r`, `--index-url`), a
    URL or a comment -> None (no version to show)."""
    line = line.strip()
    if not line or line.startswith(("#", "-")) or "://" in line:
        return None
    m = _REQ.match(line)
    if m is None or not m.group("spec"):
        return None
    spec = re.sub(r"\s+", "", m.group("spec"))
    if spec.startswith("==="):
        spec = spec[3:]
    elif spec.startswith("==") and "," not in spec and "*" not in spec:
        spec = spec[2:]
    return (canonical_name(m.group("name")), spec) if spec else None


def parse_requirements(text: str) -> dict[str, str]:
    """pip's requirements format -> {name: version}."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        got = requirement(raw)
        if got is not None:
            out.setdefault(*got)
    return out


def parse_python_env(text: str) -> dict[str, str]:
    """MLflow's `python_env.yaml`: its `build_dependencies` and `dependencies` that are pins (a
    `-r requirements.txt` line points at the file read on its own)."""
    return _pins(_yaml(text), ("build_dependencies", "dependencies"))


def parse_conda(text: str) -> dict[str, str]:
    """A `conda.yaml`: the pip packages (its `pip:` list); conda's own packages are not pip's."""
    doc = _yaml(text)
    deps = doc.get("dependencies") if isinstance(doc, dict) else None
    pip = next((d.get("pip") for d in deps or [] if isinstance(d, dict) and "pip" in d), None)
    return _pins({"pip": pip}, ("pip",))


def parse_env_file(name: str, text: str) -> dict[str, str]:
    """{name: version} of one of REQUIREMENTS_FILES (by its file name)."""
    base = name.rsplit("/", 1)[-1]
    if base == "python_env.yaml":
        return parse_python_env(text)
    if base == "conda.yaml":
        return parse_conda(text)
    return parse_requirements(text)


def merge_packages(found: list[tuple[str, dict[str, str]]]) -> tuple[dict[str, str], list[str]]:
    """Packages from several files (in the order of preference): the first naming a package gives
    its version. Returns (packages sorted by name, the files that gave any)."""
    out: dict[str, str] = {}
    used: list[str] = []
    for path, pins in found:
        if pins:
            used.append(path)
        for name, version in pins.items():
            out.setdefault(name, version)
    return dict(sorted(out.items())), used


def system_params(tags: dict[str, str], packages: dict[str, str] | None) -> dict[str, Any]:
    """The run's `__system_params` ({} when MLflow recorded none of it)."""
    out: dict[str, Any] = {}
    args = arguments(tags)
    if args:
        out["arguments"] = args
    if packages:
        out["packages"] = dict(packages)
    git = git_info(tags)
    if git:
        out["git_info"] = git
    return out


def _yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _pins(doc: Any, keys: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    if not isinstance(doc, dict):
        return out
    for key in keys:
        items = doc.get(key)
        for item in items if isinstance(items, list) else []:
            got = requirement(item) if isinstance(item, str) else None
            if got is not None:
                out.setdefault(*got)
    return out
