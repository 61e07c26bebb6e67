"""deploy/: the systemd units (systemd-analyze verify/security, systemd-sysusers where those
exist), the Dockerfiles and the compose file (structure; `docker compose config` where a
Compose exists; no Docker engine runs here), and the compose file's three processes started
directly on 127.0.0.1 from the compose file's own commands: a real `mlflow server`, `syncer sync`
over HTTP (split in two experiment sets, as deploy/README.md describes) and `aim up`, with the
runs logged to the server read back through Aim's web API."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, decode_aim_stream, free_port, wait_http

DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
DOCKER = DEPLOY / "docker"
COMPOSE = DOCKER / "compose.yaml"
UNITS = ["mlflow-aim-syncer.service", "mlflow-aim-syncer@.service", "mlflow-aim-ui.service"]
VENV_BIN = Path(sys.executable).parent
# MLflow's own credential variables, which the syncer passes through to its MLflow client
MLFLOW_AUTH_ENV = {
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_INSECURE_TLS",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
}


# ---------------------------------------------------------------------------------------------
# readers: YAML through PyYAML; Dockerfiles, unit files and env files are line formats


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def interpolate(value, env: dict | None = None):
    """Compose's variable substitution (`${X}`, `${X:-default}`, `${X-default}`, `$X`, `$$`)."""
    env = env or {}
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group("braced") or m.group("bare")
        op, default = m.group("op"), m.group("default") or ""
        if name in env and (env[name] != "" or op != ":-"):
            return env[name]
        return default if op else ""

    return re.sub(r"\$\$|\$\{(?P<braced>\w+)(?:(?P<op>:?-)(?P<default>[^}]*))?\}|\$(?P<bare>\w+)", sub, value)


def service(name: str) -> dict:
    return interpolate(compose()["services"][name])


def as_env(environment) -> dict[str, str]:
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: "" if v is None else str(v) for k, v in (environment or {}).items()}


def as_argv(command) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def option(argv: list[str], flag: str) -> str | None:
    for i, a in enumerate(argv):
        if a == flag:
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    i = out.index(flag)
    out[i + 1] = value
    return out


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        instr, _, args = current.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        current = ""
    assert not current, f"{path}: a continuation line ends the file"
    return out


def instructions(path: Path, name: str) -> list[str]:
    return [args for instr, args in dockerfile(path) if instr == name]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) instruction argument; the shell form is refused."""
    assert args.startswith("["), f"not in exec form: {args}"
    v = json.loads(args)
    assert isinstance(v, list) and all(isinstance(x, str) for x in v)
    return v


def image_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in instructions(path, "ENV"):
        for item in shlex.split(args):
            k, sep, v = item.partition("=")
            assert sep, f"ENV {args}: use the KEY=value form"
            env[k] = v
    return env


def healthcheck(path: Path) -> tuple[dict[str, str], list[str]]:
    (args,) = instructions(path, "HEALTHCHECK")
    opts, _, cmd = args.partition("CMD ")
    flags = dict(re.findall(r"--([a-z-]+)=(\S+)", opts))
    return flags, exec_form(cmd.strip())


def dockerignore_allows(ignore_file: Path, rel: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or a parent decides."""
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    allowed = True
    for raw in ignore_file.read_text().splitlines():
        pat = raw.strip()
        if not pat or pat.startswith("#"):
            continue
        negate = pat.startswith("!")
        pat = pat.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            allowed = negate
    return allowed


def unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]} (keys repeat)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        k, _, v = line.partition("=")
        current.append((k.strip(), v.strip()))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    v = values(section, key)
    assert len(v) == 1, f"{key}: {v}"
    return v[0]


def env_file(path: Path, commented: bool = False) -> dict[str, str]:
    """KEY=value lines (with `commented`, also the `#KEY=value` examples)."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if commented and re.match(r"#[A-Z_][A-Z0-9_]*=", line):
            line = line[1:]
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", line)
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"')
    return out


def syncer_env_vars() -> set[str]:
    from syncer.config import ENV

    return set(ENV.values())


# ---------------------------------------------------------------------------------------------
# systemd


def test_units_run_syncer_sync_as_a_dedicated_user_with_restart_and_an_environment_file():
    sysusers = (SYSTEMD / "mlflow-aim-syncer.sysusers.conf").read_text()
    (line,) = [ln for ln in sysusers.splitlines() if ln.startswith("u ")]
    user = shlex.split(line)[1]
    assert shlex.split(line)[-1] in ("/usr/sbin/nologin", "/sbin/nologin", "/bin/false")
    for name in UNITS:
        u = unit(SYSTEMD / name)
        svc = u["Service"]
        assert one(svc, "User") == user != "root", name
        assert one(svc, "Restart") == "on-failure", name
        assert "multi-user.target" in one(u["Install"], "WantedBy"), name
        assert values(svc, "EnvironmentFile"), name
    plain, template = unit(SYSTEMD / UNITS[0])["Service"], unit(SYSTEMD / UNITS[1])["Service"]
    assert shlex.split(one(plain, "ExecStart"))[1:] == ["sync"]
    assert shlex.split(one(template, "ExecStart")) == shlex.split(one(plain, "ExecStart"))
    assert one(plain, "EnvironmentFile") == "/etc/mlflow-aim-syncer/syncer.env"
    assert "%i" in one(template, "EnvironmentFile"), "each instance needs its own settings"
    # each instance its own health file, in a runtime folder of its own (a stopping instance
    # removes its RuntimeDirectory)
    health = lambda s: [v for v in values(s, "Environment") if v.startswith("SYNCER_HEALTH_FILE=")]  # noqa: E731
    assert "%i" in health(template)[0] and "%i" in one(template, "RuntimeDirectory")
    # the Aim repo of the settings file lies in the folder the sandbox leaves writable
    settings = env_file(SYSTEMD / "syncer.env")
    state_dir = Path("/var/lib") / one(plain, "StateDirectory")
    run_dir = Path("/run") / one(plain, "RuntimeDirectory")
    assert Path(settings["SYNCER_AIM_REPO"]).is_relative_to(state_dir)
    assert Path(health(plain)[0].split("=", 1)[1]).is_relative_to(run_dir)
    # the UI serves the repo the syncer writes
    ui = unit(SYSTEMD / "mlflow-aim-ui.service")["Service"]
    assert one(ui, "EnvironmentFile").lstrip("-") == one(plain, "EnvironmentFile")
    assert option(shlex.split(one(ui, "ExecStart")), "--repo") == "${SYNCER_AIM_REPO}"
    assert one(ui, "StateDirectory") == one(plain, "StateDirectory")


def test_environment_file_sets_uri_repo_interval_with_variables_the_syncer_reads():
    settings = env_file(SYSTEMD / "syncer.env")
    assert {"MLFLOW_TRACKING_URI", "SYNCER_AIM_REPO", "SYNCER_INTERVAL"} <= set(settings)
    assert float(settings["SYNCER_INTERVAL"]) >= 0.1
    assert urllib.parse.urlsplit(settings["MLFLOW_TRACKING_URI"]).scheme in ("http", "https")
    # a misspelt variable would be ignored silently: every one (the examples too) must be known
    unknown = set(env_file(SYSTEMD / "syncer.env", commented=True)) - syncer_env_vars() - MLFLOW_AUTH_ENV
    assert not unknown, f"variables no part of the syncer reads: {unknown}"
    for name in UNITS:
        for v in values(unit(SYSTEMD / name)["Service"], "Environment"):
            key = v.split("=", 1)[0]
            assert key in syncer_env_vars() | {"HOME", "GIT_PYTHON_REFRESH", "PYTHONUNBUFFERED"}, (name, key)


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
}


def test_units_carry_the_same_hardening():
    def block(name):
        svc = unit(SYSTEMD / name)["Service"]
        start = [k for k, _ in svc].index("UMask")
        return [kv for kv in svc[start:] if kv[0] not in ("RuntimeDirectory",)]

    for name in UNITS:
        svc = dict(unit(SYSTEMD / name)["Service"])
        for k, v in HARDENING.items():
            assert svc.get(k) == v, (name, k, svc.get(k))
        assert "@system-service" in values(unit(SYSTEMD / name)["Service"], "SystemCallFilter")
    assert block(UNITS[0]) == block(UNITS[1]) == block(UNITS[2])


def _systemd_root(tmp_path: Path) -> Path:
    """A file system root for `systemd-analyze --root`: systemd's own units (targets the units
    refer to) and, at the paths the units execute, stand-in executables."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/lib/systemd").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for name in UNITS:
        shutil.copy(SYSTEMD / name, root / "etc/systemd/system" / name)
        for k, v in unit(SYSTEMD / name)["Service"]:
            if k.startswith("Exec"):
                path = shlex.split(v)[0].lstrip("-@:+!")
                assert path.startswith("/"), f"{name}: {k}= needs an absolute path"
                _stub(root, path)
    return root


def _stub(root: Path, path: str) -> None:
    """An executable file at `path` inside `root`, and nowhere else: never through a symlink,
    never over an existing file (`root / "/bin/sh"` would be the host's /bin/sh)."""
    exe = root.joinpath(path.lstrip("/"))
    assert exe.parent.resolve().is_relative_to(root.resolve()) and not exe.is_symlink(), exe
    exe.parent.mkdir(parents=True, exist_ok=True)
    if exe.exists():
        return
    with open(exe, "x") as f:
        f.write("#!/bin/sh\n")
    exe.chmod(0o755)


def _instances() -> list[str]:
    return [n.replace("@.", "@nlp.") for n in UNITS]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    root = _systemd_root(tmp_path)
    p = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", *_instances()], capture_output=True, text=True, timeout=120
    )
    # verify exits 0 on unknown keys and bad values ("..., ignoring"): any output is a finding
    assert p.returncode == 0 and not (p.stdout + p.stderr).strip(), p.stdout + p.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_catches_a_broken_unit(tmp_path):
    """The check above is not vacuous: a typo and a missing executable are reported."""
    root = _systemd_root(tmp_path)
    bad = root / "etc/systemd/system" / UNITS[0]
    bad.write_text(
        bad.read_text()
        .replace("Restart=on-failure", "Restart=on-failur")
        .replace("/opt/mlflow-aim-syncer/bin/syncer", "/opt/nowhere/syncer")
    )
    p = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", UNITS[0]], capture_output=True, text=True, timeout=120
    )
    assert "on-failur" in p.stderr and "/opt/nowhere/syncer" in p.stderr, p.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_security_exposure_is_low(tmp_path):
    root = _systemd_root(tmp_path)
    for name in _instances():
        p = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", f"--root={root}", "--no-pager", name],
            capture_output=True,
            text=True,
            timeout=120,
        )
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", p.stdout)
        assert p.returncode == 0 and m, p.stdout + p.stderr
        assert float(m.group(1)) <= 2.0, f"{name}: exposure {m.group(1)}\n{p.stdout}"


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_creates_an_unprivileged_system_user(tmp_path):
    (tmp_path / "etc").mkdir()
    p = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSTEMD / "mlflow-aim-syncer.sysusers.conf")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    (entry,) = [
        ln.split(":")
        for ln in (tmp_path / "etc/passwd").read_text().splitlines()
        if ln.startswith("mlflow-aim-syncer:")
    ]
    assert 0 < int(entry[2]) < 1000 and entry[6].endswith("nologin"), entry


# ---------------------------------------------------------------------------------------------
# Dockerfiles


def test_syncer_dockerfile_slim_non_root_healthcheck_no_torch():
    df = DOCKER / "Dockerfile"
    (base,) = instructions(df, "FROM")
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base), base
    users = instructions(df, "USER")
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    user = users[-1].split(":")[0]
    runs = " ".join(instructions(df, "RUN"))
    assert re.search(rf"useradd\b[^&]*\b{user}\b", runs), "the USER is created in the image"
    # installed with the pins, without the `train` extra (torch)
    pip = [r for r in instructions(df, "RUN") if "pip install" in r]
    assert pip and all("-c constraints.txt" in r for r in pip), pip
    assert "torch" not in runs and "[train" not in runs
    assert exec_form(instructions(df, "ENTRYPOINT")[-1]) + exec_form(instructions(df, "CMD")[-1]) == ["syncer", "sync"]
    flags, cmd = healthcheck(df)
    assert {"interval", "timeout", "start-period", "retries"} <= set(flags), flags
    assert "SYNCER_HEALTH_FILE" in " ".join(cmd)
    # the health file, the repo and the user's home are writable by the user: under /data
    env = image_env(df)
    assert env["SYNCER_HEALTH_FILE"].startswith("/data/") and env["SYNCER_AIM_REPO"].startswith("/data/")
    assert re.search(rf"chown {user}(:\w+)? /data\b", runs)


def test_dockerfile_copies_exist_and_pass_its_dockerignore():
    for df in (DOCKER / "Dockerfile", DOCKER / "mlflow.Dockerfile"):
        ignore = df.with_name(df.name + ".dockerignore")
        assert ignore.exists(), f"{ignore}: without it the whole checkout (.venv!) is the build context"
        for args in instructions(df, "COPY"):
            srcs = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for src in srcs:
                assert (ROOT / src).exists(), f"{df.name}: COPY {src}: not in the build context"
                files = (
                    [src] if (ROOT / src).is_file() else [str(p.relative_to(ROOT)) for p in (ROOT / src).rglob("*.py")]
                )
                assert files and all(dockerignore_allows(ignore, f) for f in files), (df.name, src)
        for heavy in (".venv/bin/python", "training/commands.py", "tests/conftest.py"):
            assert not dockerignore_allows(ignore, heavy), (ignore.name, heavy)


def test_mlflow_dockerfile_has_the_postgres_driver_and_a_non_root_user():
    df = DOCKER / "mlflow.Dockerfile"
    runs = " ".join(instructions(df, "RUN"))
    assert re.search(r"pip install -c \S*constraints.txt mlflow psycopg2(-binary)?\b", runs), runs
    assert instructions(df, "USER")[-1].split(":")[0] not in ("root", "0")
    assert instructions(df, "HEALTHCHECK")


def _run_healthcheck(env: dict) -> int:
    _flags, cmd = healthcheck(DOCKER / "Dockerfile")
    assert cmd[0] == "python"
    return subprocess.run([sys.executable, *cmd[1:]], env={**env, "PATH": os.environ["PATH"]}, timeout=60).returncode


def test_healthcheck_fails_on_a_missing_or_stale_health_file(tmp_path):
    health = tmp_path / "health"
    env = {"SYNCER_HEALTH_FILE": str(health), "SYNCER_INTERVAL": "10"}
    assert _run_healthcheck(env) == 1
    health.touch()
    assert _run_healthcheck(env) == 0
    old = time.time() - 600
    os.utime(health, (old, old))
    assert _run_healthcheck(env) == 1  # 10 min > 6 intervals of 10 s (and > 2 min)
    assert _run_healthcheck({**env, "SYNCER_INTERVAL": "300"}) == 0  # 6 intervals of 5 min
    assert _run_healthcheck({**env, "SYNCER_HEALTH_MAX_AGE": "900"}) == 0


# ---------------------------------------------------------------------------------------------
# compose.yaml


def test_compose_services_dependencies_and_healthchecks():
    c = compose()
    services = c["services"]
    assert set(services) == {"postgres", "mlflow", "syncer", "aim"}
    deps = {name: s.get("depends_on", {}) for name, s in services.items()}
    assert deps["mlflow"]["postgres"]["condition"] == "service_healthy"
    assert deps["syncer"]["mlflow"]["condition"] == "service_healthy"
    assert deps["aim"]["syncer"]["condition"] in ("service_started", "service_healthy")
    for name, s in services.items():
        for dep, spec in deps[name].items():
            if spec.get("condition") == "service_healthy":
                target = services[dep]
                has_own = target.get("healthcheck", {}).get("test")
                built = target.get("build")
                assert has_own or (built and instructions(ROOT / built["dockerfile"], "HEALTHCHECK")), dep
        assert s.get("restart") in ("unless-stopped", "always", "on-failure"), name
    # the syncer image's HEALTHCHECK watches the syncer's health file: the UI needs its own
    assert "43800" in " ".join(services["aim"]["healthcheck"]["test"])


def test_compose_mlflow_uses_postgres_and_serves_artifacts_from_a_volume():
    c = compose()
    pg, mlflow = service("postgres"), service("mlflow")
    argv = as_argv(mlflow["command"])
    assert argv[:2] == ["mlflow", "server"]
    uri = option(argv, "--backend-store-uri") or as_env(mlflow["environment"])["MLFLOW_BACKEND_STORE_URI"]
    u = urllib.parse.urlsplit(uri)
    pg_env = as_env(pg["environment"])
    assert u.scheme in ("postgresql", "postgresql+psycopg2"), uri
    assert (u.hostname, u.port or 5432) == ("postgres", 5432)
    assert (u.username, u.password, u.path.lstrip("/")) == (
        pg_env["POSTGRES_USER"],
        pg_env["POSTGRES_PASSWORD"],
        pg_env["POSTGRES_DB"],
    )
    assert "/var/lib/postgresql/data" in [v.split(":")[1] for v in pg["volumes"]]
    # artifacts: proxied by the server from a named volume
    dest = option(argv, "--artifacts-destination")
    assert "--no-serve-artifacts" not in argv
    mounts = dict(reversed(v.split(":")[:2]) for v in mlflow["volumes"])
    assert dest in mounts and mounts[dest] in c["volumes"], (dest, mounts)
    assert "ports" not in pg, "PostgreSQL stays inside the compose network"


def test_compose_syncer_follows_the_mlflow_service_over_http():
    from mlflow.server.security_utils import is_allowed_host_header

    mlflow, syncer = service("mlflow"), service("syncer")
    argv = as_argv(mlflow["command"])
    port = option(argv, "--port")
    assert option(argv, "--host") == "0.0.0.0"
    env = {**image_env(DOCKER / "Dockerfile"), **as_env(syncer["environment"])}
    u = urllib.parse.urlsplit(env["MLFLOW_TRACKING_URI"])
    assert (u.scheme, u.hostname, str(u.port)) == ("http", "mlflow", port), env["MLFLOW_TRACKING_URI"]
    # MLflow's DNS-rebinding guard must accept the Host header the syncer sends (checked with
    # MLflow's own matcher; live in the three-process test below)
    allowed = option(argv, "--allowed-hosts").split(",")
    assert is_allowed_host_header(allowed, u.netloc) and is_allowed_host_header(allowed, f"localhost:{port}")
    assert not is_allowed_host_header(allowed, "evil.example:5000")
    assert f"{port}:{port}" in [str(p) for p in mlflow["ports"]]
    assert syncer["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert not {"SYNCER_NO_WATCH"} & set(env) and float(env["SYNCER_INTERVAL"]) >= 1


def test_compose_syncer_and_aim_share_the_aim_repo_volume():
    from syncer.config import STATE_FILE

    c = compose()
    syncer, aim = service("syncer"), service("aim")
    assert aim["image"] == syncer["image"] and aim["build"] == syncer["build"], "one image for both"

    def named_mounts(s):
        return {target: src for src, target, *_ in (v.split(":") for v in s["volumes"])}

    sm, am = named_mounts(syncer), named_mounts(aim)
    shared = {t for t in sm if am.get(t) == sm[t] and sm[t] in c["volumes"]}
    assert shared, (sm, am)
    env = {**image_env(DOCKER / "Dockerfile"), **as_env(syncer["environment"])}
    repo = env["SYNCER_AIM_REPO"]
    assert any(Path(repo).is_relative_to(t) for t in shared)
    assert any(Path(env["SYNCER_HEALTH_FILE"]).is_relative_to(t) for t in shared)
    script = as_argv(aim["entrypoint"]) + as_argv(aim["command"])
    assert script[:2] == ["/bin/sh", "-c"] and len(script) == 3
    aim_up = shlex.split(script[2].split("exec ", 1)[1])
    assert aim_up[:2] == ["aim", "up"] and option(aim_up, "--repo") == repo
    assert option(aim_up, "--host") == "0.0.0.0"
    assert f"{option(aim_up, '--port')}:{option(aim_up, '--port')}" in [str(p) for p in aim["ports"]]
    # it waits for the file the syncer creates once the repo is set up
    assert str(Path(repo) / STATE_FILE) in script[2]


@pytest.mark.skipif(
    not (
        shutil.which("docker-compose")
        or (
            shutil.which("docker")
            and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0
        )
    ),
    reason="neither `docker compose` nor `docker-compose` is installed",
)
def test_docker_compose_config_accepts_the_file(tmp_path):
    """Compose's own schema check (no engine needed). The old Python docker-compose 1.x does not
    know the top-level `name:`: it checks a copy without it."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        cmd, path = ["docker", "compose"], COMPOSE
    else:
        cmd, path = ["docker-compose"], tmp_path / "compose.yaml"
        path.write_text("".join(ln for ln in COMPOSE.read_text().splitlines(True) if not ln.startswith("name:")))
    p = subprocess.run(
        [*cmd, "-f", str(path), "--project-directory", str(DOCKER), "config"],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "POSTGRES_PASSWORD"},
    )
    assert p.returncode == 0, p.stderr
    resolved = yaml.safe_load(p.stdout)
    assert set(resolved["services"]) == {"postgres", "mlflow", "syncer", "aim"}
    assert Path(resolved["services"]["syncer"]["build"]["context"]) == ROOT


# ---------------------------------------------------------------------------------------------
# the compose file's three processes, directly on 127.0.0.1


class Procs:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, argv: list[str], env: dict) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "wb")
        p = subprocess.Popen(
            argv, env=env, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = p
        return p

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")[-4000:]

    def logs(self) -> str:
        return "\n".join(f"--- {n} (exit {p.poll()}):\n{self.log(n)}" for n, p in self.procs.items())

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _get(url: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
    h = {"Content-Type": "application/json"} if data else {}
    req = urllib.request.Request(url, data=data, headers={**h, **(headers or {})})
    with urllib.request.urlopen(req, timeout=20) as r:
        return r.read()


def _local(value: str, data: Path) -> str:
    return str(data) + value[len("/data") :] if value.startswith("/data") else value


def _wait(what: str, check, timeout: float, procs: Procs, alive: tuple[str, ...] = ()):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        for name in alive:
            assert procs.procs[name].poll() is None, f"{name} exited while waiting for {what}\n{procs.logs()}"
        try:
            result = check()
            if result:
                return result
        except Exception as e:  # not up yet
            last = e
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s (last: {last!r})\n{procs.logs()}")


@pytest.mark.slow
def test_compose_processes_on_localhost_runs_logged_to_mlflow_show_up_in_aim(tmp_path):
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    from syncer.config import STATE_FILE

    mlflow_svc, syncer_svc, aim_svc = service("mlflow"), service("syncer"), service("aim")
    data = tmp_path / "data"  # the shared volume
    data.mkdir()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SYNCER_"))}
    base_env.update(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", GIT_PYTHON_REFRESH="quiet")
    mlflow_port, aim_port = free_port(), free_port()
    procs = Procs(tmp_path)
    try:
        # 1. the mlflow service's command, with sqlite instead of PostgreSQL
        argv = as_argv(mlflow_svc["command"])
        argv = with_option(argv, "--host", "127.0.0.1")
        argv = with_option(argv, "--port", str(mlflow_port))
        argv = with_option(argv, "--artifacts-destination", str(tmp_path / "mlartifacts"))
        argv = with_option(argv, "--workers", "1")
        env = {
            **base_env,
            **as_env(mlflow_svc["environment"]),
            "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        }
        server = procs.start("mlflow", argv, env)
        uri = f"http://127.0.0.1:{mlflow_port}"
        wait_http(uri + "/health", timeout=120, proc=server)
        # its healthcheck, and its Host check as the syncer (http://mlflow:5000) meets it
        hc = [a.replace("127.0.0.1:5000", f"127.0.0.1:{mlflow_port}") for a in mlflow_svc["healthcheck"]["test"][1:]]
        assert subprocess.run(hc, env=base_env, timeout=60).returncode == 0
        search = uri + "/api/2.0/mlflow/experiments/search?max_results=1"
        assert json.loads(_get(search, headers={"Host": "mlflow:5000"})) is not None
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(search, headers={"Host": "evil.example:5000"})
        assert e.value.code == 403

        # 2. the syncer service (image ENV + compose environment), split in two experiment sets
        # as deploy/README.md describes; the first creates the repo, then the second starts
        syncer_argv = exec_form(instructions(DOCKER / "Dockerfile", "ENTRYPOINT")[-1]) + as_argv(syncer_svc["command"])
        assert syncer_argv == ["syncer", "sync"]
        senv = {
            k: _local(v, data)
            for k, v in {**image_env(DOCKER / "Dockerfile"), **as_env(syncer_svc["environment"])}.items()
        }
        assert senv["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        senv.update(MLFLOW_TRACKING_URI=uri, SYNCER_INTERVAL="1")
        sets = {"de": "deploy-de", "fr": "deploy-fr"}
        # each its own metrics port on loopback (in compose each container has its own network)
        envs = {
            k: {
                **base_env,
                **senv,
                "SYNCER_EXPERIMENTS": exp,
                "SYNCER_HEALTH_FILE": str(data / f"health-{k}"),
                "SYNCER_METRICS_PORT": str(free_port()),
                "SYNCER_METRICS_HOST": "127.0.0.1",
            }
            for k, exp in sets.items()
        }
        repo = Path(senv["SYNCER_AIM_REPO"])
        procs.start("syncer-de", syncer_argv, envs["de"])
        _wait("the Aim repo", lambda: (repo / STATE_FILE).exists(), 120, procs, alive=("syncer-de",))
        procs.start("syncer-fr", syncer_argv, envs["fr"])

        # 3. the aim service's script (it waits for the repo, then `aim up`)
        script = as_argv(aim_svc["entrypoint"]) + as_argv(aim_svc["command"])
        script[-1] = (
            script[-1]
            .replace("/data", str(data))
            .replace("--host 0.0.0.0", "--host 127.0.0.1")
            .replace("--port 43800", f"--port {aim_port}")
        )
        assert str(aim_port) in script[-1]
        procs.start("aim", script, {**base_env, **senv})

        # 4. runs logged to the server while everything runs
        client = MlflowClient(tracking_uri=uri)
        logged = {}
        for lang, exp_name in sets.items():
            exp_id = client.create_experiment(exp_name)
            run = client.create_run(exp_id, run_name=f"xnli-{lang}", start_time=1_700_000_000_000)
            rid = run.info.run_id
            acc = [(s, 0.5 + s / 100) for s in (0, 10, 20)]
            metrics = (
                [Metric(f"eval_{lang}_accuracy", v, 1_700_000_000_000 + s, s) for s, v in acc]
                + [Metric(f"eval_{lang}_loss", 1.0 - v, 1_700_000_000_000 + s, s) for s, v in acc]
                + [Metric("loss", 2.0 / (s + 1), 1_700_000_000_000 + s, s) for s in range(5)]
            )
            client.log_batch(
                rid,
                metrics=metrics,
                params=[
                    Param("learning_rate", "5e-05"),
                    Param("epochs", "3"),
                    Param("model", "bert-base-multilingual-cased"),
                ],
                tags=[RunTag("team", "nlp")],
            )
            client.set_terminated(rid, "FINISHED", end_time=1_700_000_100_000)
            logged[lang] = (rid, acc)

        # 5. Aim's web API shows them: the runs table (streamed), then each run's info
        api = f"http://127.0.0.1:{aim_port}/api"

        def runs_by_mlflow_id():
            tree = decode_aim_stream(_get(f"{api}/runs/search/run/?q=&report_progress=false"))
            found = {}
            for h, r in tree.items():
                mid = ((r.get("params") or {}).get("mlflow") or {}).get("run_id")
                if mid:
                    found[mid] = h
            return found if all(rid in found for rid, _ in logged.values()) else None

        def info_complete(h, lang):
            info = json.loads(_get(f"{api}/runs/{h}/info/"))
            names = {(t["name"], json.dumps(t["context"], sort_keys=True)) for t in info["traces"].get("metric", [])}
            ctx = json.dumps({"subset": "eval", "dataset": lang, "lang": lang}, sort_keys=True)
            want = {("accuracy", ctx), ("loss", ctx), ("loss", "{}")}
            return info if want <= names and not info["props"]["active"] else None

        found = _wait(
            "the runs in aim up's runs search",
            runs_by_mlflow_id,
            150,
            procs,
            alive=("mlflow", "syncer-de", "syncer-fr", "aim"),
        )
        for lang, (rid, acc) in logged.items():
            info = _wait(f"run {lang}'s metrics", lambda rid=rid, lang=lang: info_complete(found[rid], lang), 60, procs)
            params = info["params"]
            assert params["hparams"] == {"learning_rate": 5e-05, "epochs": 3, "model": "bert-base-multilingual-cased"}
            assert params["mlflow"]["run_id"] == rid
            assert info["props"]["name"] == f"xnli-{lang}"
            assert info["props"]["experiment"]["name"] == sets[lang]
            ctx = {"subset": "eval", "dataset": lang, "lang": lang}
            batch = json.loads(
                _get(
                    f"{api}/runs/{found[rid]}/metric/get-batch/",
                    json.dumps([{"name": "accuracy", "context": ctx}]).encode(),
                )
            )
            assert batch[0]["iters"] == [s for s, _ in acc] and batch[0]["values"] == [v for _, v in acc]
        exps = {e["name"]: e for e in json.loads(_get(f"{api}/experiments/"))}
        assert {exps[n]["run_count"] for n in sets.values()} == {1}

        # 6. healthchecks: the syncer image's (per syncer) and the aim service's
        for k in sets:
            _wait(f"health file {k}", lambda k=k: (data / f"health-{k}").exists(), 30, procs)
            assert _run_healthcheck(envs[k]) == 0, k
        hc = [a.replace("127.0.0.1:43800", f"127.0.0.1:{aim_port}") for a in aim_svc["healthcheck"]["test"][1:]]
        assert subprocess.run(hc, env=base_env, timeout=60).returncode == 0

        # 7. `syncer status` over the shared state: both experiment sets
        st = subprocess.run(["syncer", "status"], env={**base_env, **senv}, capture_output=True, text=True, timeout=120)
        assert st.returncode == 0, st.stderr
        for exp in sets.values():
            assert re.search(rf"{exp}\s+1\s+11\s+0", st.stdout), st.stdout

        # 8. SIGTERM: the syncers exit 0 within 10 s (the compose file gives them 30)
        for k in sets:
            p = procs.procs[f"syncer-{k}"]
            p.send_signal(signal.SIGTERM)
            t0 = time.monotonic()
            assert p.wait(timeout=30) == 0, procs.log(f"syncer-{k}")
            assert time.monotonic() - t0 < 10 + 5, "the syncer took too long to stop"
    finally:
        procs.stop_all()
