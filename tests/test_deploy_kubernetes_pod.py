"""The pod of deploy/kubernetes/deployment.yaml, run here the way the kubelet runs it, without a
cluster: each container's command from the manifest (the image's ENTRYPOINT and the container's
args; the aim container's shell script), its environment (the image's ENV, then the container's;
the optional Secret absent), as the pod's uid and gid, with no new privileges, in a PID namespace
of its own (its command is PID 1) and a mount namespace whose root file system is read-only except
the pod's volumes at their mountPaths: the PersistentVolumeClaim a folder that both containers
mount, each emptyDir a tmpfs of its own. Both reach a real `mlflow server` on 127.0.0.1 (they share
the network, as a pod's containers do). What the syncer converts is read back through the web API
of the `aim up` the aim container runs; the probes are asked on the syncer's metrics port; SIGTERM
stops each container. A shell in each container's sandbox shows what is writable there (the
volumes only). Mount and PID namespaces need root: skipped without."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, decode_aim_stream, free_port, populate
from test_deploy import DOCKER, Procs, _wait, exec_form, image_env, instructions
from test_deploy_kubernetes import aim_up_argv, container, load, opt, pod

TOOLS = ("unshare", "setpriv", "findmnt", "chroot", "setsid", "mount")
# not bound into the container's root: made anew (proc, dev, sys), left empty (home: the image's
# user's home, read-only like the rest), or only what the pod mounts (tmp, data)
FRESH = {"proc", "dev", "sys", "tmp", "home", "root", "data", "lost+found"}


def _sandbox_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mount and PID namespaces)"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return f"not installed: {missing}"
    p = subprocess.run(["unshare", "--mount", "--pid", "--fork", "true"], capture_output=True, timeout=30)
    return None if p.returncode == 0 else f"unshare cannot make namespaces here: {p.stderr.decode().strip()}"


SKIP = _sandbox_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(SKIP is not None, reason=str(SKIP))]


def _home(dockerfile: Path) -> str:
    (home,) = re.findall(r"--home-dir (\S+)", " ".join(instructions(dockerfile, "RUN")))
    return home


def sandbox(
    new_root: Path, c: dict, spec: dict, argv: list[str], env: dict, volumes: dict[str, Path | None]
) -> list[str]:
    """The command that runs `argv` as container `c` of pod `spec` would run: `volumes` maps each
    pod volume to the folder that stands for its PersistentVolumeClaim, or None for an emptyDir."""
    q = shlex.quote
    sc = spec["securityContext"]
    assert c["securityContext"]["readOnlyRootFilesystem"] is True, "the only root this sandbox makes"
    workdir = instructions(DOCKER / "Dockerfile", "WORKDIR")[-1]
    home = _home(DOCKER / "Dockerfile")
    sh = ["set -eu", f"R={q(str(new_root))}", 'mount -t tmpfs -o mode=0755 rootfs "$R"']
    for entry in sorted(os.listdir("/")):
        src = Path("/", entry)
        if entry in FRESH:
            continue
        if src.is_symlink():
            sh.append(f'ln -s {q(os.readlink(src))} "$R"/{q(entry)}')
        elif src.is_dir():
            sh += [f'mkdir "$R"/{q(entry)}', f'mount --rbind {q(str(src))} "$R"/{q(entry)}']
    sh += [
        'mkdir "$R/proc" "$R/dev" "$R/sys" "$R/tmp"',
        'mount -t proc proc "$R/proc"',
        'mount --rbind /dev "$R/dev"',
        'mount --rbind /sys "$R/sys"',
        f'mkdir -p "$R"{q(home)} && chown {sc["runAsUser"]}:{sc["runAsGroup"]} "$R"{q(home)}',
    ]
    kinds = {v["name"]: v for v in spec["volumes"]}
    writable = []
    for vm in c["volumeMounts"]:
        target = f'"$R"{q(vm["mountPath"])}'
        sh.append(f"mkdir -p {target}")
        if "emptyDir" in kinds[vm["name"]]:
            size = kinds[vm["name"]]["emptyDir"].get("sizeLimit", "64Mi").replace("i", "")
            sh.append(f"mount -t tmpfs -o mode=1777,size={size} {vm['name']} {target}")
        else:
            assert "persistentVolumeClaim" in kinds[vm["name"]] and volumes[vm["name"]] is not None
            sh.append(f"mount --bind {q(str(volumes[vm['name']]))} {target}")
        if not vm.get("readOnly"):
            writable.append(vm["mountPath"])
    # this checkout and its Python, read-only at their own paths (under /root or /tmp they would
    # be hidden)
    for path in dict.fromkeys(str(Path(p).resolve()) for p in (ROOT, sys.prefix, sys.base_prefix)):
        t = f'"$R"{q(path)}'
        sh += [f"mkdir -p {t}", f"mount --rbind {q(path)} {t}", f"mount -o remount,bind,ro {t}"]
    # everything else read-only: each mount below the new root, then the root itself
    keep = "|".join(re.escape(str(new_root) + p) for p in ["/proc", "/dev", "/sys", *writable])
    sh += [
        f'findmnt -R -n -r -o TARGET "$R" | grep -v -E {q(f"^({keep})(/|$)")} | grep -v -x "$R" |'
        ' while read -r t; do mount -o remount,bind,ro "$t"; done',
        'mount -o remount,ro "$R"',
    ]
    env_args = [f"{k}={v}" for k, v in {"HOME": home, **env}.items()]
    sh.append(
        f'exec chroot "$R" setpriv --reuid {sc["runAsUser"]} --regid {sc["runAsGroup"]} --clear-groups'
        f" --no-new-privs env -i -C {q(workdir)} {' '.join(q(a) for a in env_args)} {' '.join(q(a) for a in argv)}"
    )
    return ["unshare", "--mount", "--pid", "--fork", "--propagation", "private", "bash", "-c", "\n".join(sh)]


def container_env(c: dict, **overrides: str) -> dict[str, str]:
    """The image's ENV, then the container's (the optional Secret's keys absent), then `overrides`."""
    path = f"{Path(sys.executable).parent}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    e = {**image_env(DOCKER / "Dockerfile"), "PATH": path, "PYTHONPATH": str(ROOT)}
    e.update({x["name"]: x["value"] for x in c.get("env", []) if "value" in x})
    return {**e, **overrides}


def pid1(procs: Procs, name: str) -> int:
    """The host's pid of the container's first process (the child of `unshare --fork`)."""
    unshare = procs.procs[name].pid
    (child,) = Path(f"/proc/{unshare}/task/{unshare}/children").read_text().split()
    return int(child)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def running_pod(mlflow_server, tmp_path_factory):
    m = load()
    spec = pod(m)["spec"]
    syncer_c, aim_c = container(m, "syncer"), container(m, "aim")
    work = tmp_path_factory.mktemp("k8s-pod")
    (data := work / "pvc").mkdir()
    os.chown(data, spec["securityContext"]["runAsUser"], spec["securityContext"]["fsGroup"])
    (pvc,) = [v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    logged = populate(mlflow_server.uri, work, suffix=" k8s-pod")
    ports = SimpleNamespace(metrics=free_port(), aim=free_port())

    syncer_argv = exec_form(instructions(DOCKER / "Dockerfile", "ENTRYPOINT")[-1]) + syncer_c["args"]
    senv = container_env(
        syncer_c,
        MLFLOW_TRACKING_URI=mlflow_server.uri,
        SYNCER_INTERVAL="1",
        SYNCER_EXPERIMENTS=json.dumps([logged["experiment"]]),
        SYNCER_METRICS_PORT=str(ports.metrics),
        SYNCER_METRICS_HOST="127.0.0.1",
    )
    script = aim_c["command"][2].replace("--host 0.0.0.0", "--host 127.0.0.1")
    script = script.replace(f"--port {opt(aim_up_argv(m), '--port')}", f"--port {ports.aim}")
    assert f"--port {ports.aim}" in script and "--host 127.0.0.1" in script
    procs = Procs(work)
    for name, c, argv, env in [
        ("syncer", syncer_c, syncer_argv, senv),
        ("aim", aim_c, [*aim_c["command"][:2], script], container_env(aim_c)),
    ]:
        (root := work / f"root-{name}").mkdir()
        procs.start(name, sandbox(root, c, spec, argv, env, {pvc: data}), os.environ.copy())
    try:
        yield SimpleNamespace(
            m=m, spec=spec, procs=procs, ports=ports, data=data, logged=logged, repo=data / "aim", work=work
        )
    finally:
        procs.stop_all()


def test_the_pod_converts_runs_with_a_read_only_root(running_pod):
    p = running_pod
    api = f"http://127.0.0.1:{p.ports.aim}/api"
    want = {r["run_id"] for k, r in p.logged["runs"].items() if k != "deleted"}

    def in_aim_ui():
        tree = decode_aim_stream(_get(f"{api}/runs/search/run/?q=&report_progress=false")[1])
        ids = {((r.get("params") or {}).get("mlflow") or {}).get("run_id") for r in tree.values()}
        return tree if want <= ids else None

    tree = _wait("the runs in the aim container's UI", in_aim_ui, 240, p.procs, alive=("syncer", "aim"))
    # artifacts pass through the syncer's /tmp volume: the image and the text were copied
    finished = p.logged["runs"]["finished"]["run_id"]
    (h,) = [h for h, r in tree.items() if r["params"]["mlflow"]["run_id"] == finished]

    def copied():
        info = json.loads(_get(f"{api}/runs/{h}/info/")[1])
        return {a["path"]: a.get("copied_as") for a in info["params"]["mlflow"].get("artifacts") or []}

    arts = _wait("the finished run's artifacts", copied, 120, p.procs, alive=("syncer", "aim"))
    assert arts["plots/confusion_de.png"] == "image" and arts["predictions.txt"] == "text", arts
    # each container's command is PID 1 of its namespace, as the pod's user
    uid, gid = p.spec["securityContext"]["runAsUser"], p.spec["securityContext"]["runAsGroup"]
    for name in ("syncer", "aim"):
        status = Path(f"/proc/{pid1(p.procs, name)}/status").read_text()
        assert re.search(rf"^Uid:\s+{uid}\s+{uid}\s+{uid}\s+{uid}$", status, re.M), (name, status)
        assert re.search(rf"^Gid:\s+{gid}\s", status, re.M) and re.search(r"^NSpid:\s+\d+\s+1$", status, re.M)
        assert re.search(r"^NoNewPrivs:\s+1$", status, re.M), name
    # and what it wrote is the pod's user's
    assert {f.stat().st_uid for f in p.data.rglob("*")} == {uid}


def test_the_probes_answer_on_the_metrics_port(running_pod):
    from prometheus_client.parser import text_string_to_metric_families

    p = running_pod
    c = container(p.m, "syncer")
    base = f"http://127.0.0.1:{p.ports.metrics}"
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in c:
            path = c[kind]["httpGet"]["path"]
            _wait(f"{kind} {path}", lambda path=path: _get(base + path)[0] == 200, 120, p.procs, alive=("syncer",))
    status, page = _get(base + pod(p.m)["metadata"]["annotations"]["prometheus.io/path"])
    assert status == 200
    metrics = page.decode()
    names = {f.name for f in text_string_to_metric_families(metrics)}
    assert {"syncer_rounds", "syncer_lag_seconds", "syncer_source_up"} <= names, names


def _in_container(tmp_path: Path, m: dict, name: str, script: str, drop: str | None = None) -> list[str]:
    """What `script` prints, run in container `name`'s sandbox (without its mount on `drop`)."""
    spec, c = pod(m)["spec"], copy.deepcopy(container(m, name))
    c["volumeMounts"] = [vm for vm in c["volumeMounts"] if vm["mountPath"] != drop]
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_path))
    (data := work / "pvc").mkdir()
    (root := work / "root").mkdir()
    (pvc,) = [v["name"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    os.chown(data, spec["securityContext"]["runAsUser"], spec["securityContext"]["fsGroup"])
    argv = sandbox(root, c, spec, ["/bin/sh", "-c", script], container_env(c), {pvc: data})
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


@pytest.mark.parametrize("name", ["syncer", "aim"])
def test_only_the_pods_volumes_are_writable(tmp_path, name):
    """The control: the sandbox's root is read-only indeed, home included; the volumes are not."""
    m = load()
    mounts = {vm["mountPath"] for vm in container(m, name)["volumeMounts"]}
    probe = 'for d in / /usr /etc /var/tmp "$HOME" "$PWD" /tmp /data; do touch "$d/.w" 2>/dev/null && echo "$d"; done'
    assert set(_in_container(tmp_path, m, name, probe)) == mounts
    # without the emptyDir, Python's temporary folder (artifacts are staged there) would be the
    # working directory: the repo's volume, where a killed copy leaves its files behind
    gettemp = 'python -c "import tempfile; print(tempfile.gettempdir())"'
    assert _in_container(tmp_path, m, name, gettemp) == ["/tmp"]
    assert _in_container(tmp_path, m, name, gettemp, drop="/tmp") == ["/data"]


def test_sigterm_stops_each_container_within_its_grace_period(running_pod):
    """Last: it stops the pod. The syncer exits 0 within 10 s; `aim up`, behind the container's
    shell (PID 1 ignores the signals it does not handle), stops as soon."""
    p = running_pod
    grace = p.spec["terminationGracePeriodSeconds"]
    for name, codes in (("syncer", {0}), ("aim", {143})):
        pid = pid1(p.procs, name)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        code = p.procs.procs[name].wait(timeout=grace + 30)  # unshare exits with its child's status
        took = time.monotonic() - t0
        assert code in codes and took < min(grace, 15), (name, code, took, p.procs.log(name))
