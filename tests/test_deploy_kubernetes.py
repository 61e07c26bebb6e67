"""deploy/kubernetes/: every manifest validated against the Kubernetes schemas (kubernetes-validate,
strict: an unknown or misspelt field is an error), then checked for what the sidecar pattern needs:
one replica that is replaced, not rolled; the Aim repo's volume mounted by the syncer and by
`aim up`; probes on the paths the syncer's metrics port serves; the credentials from a Secret;
non-root, a read-only root file system and writable emptyDirs where the processes write; resources;
the kustomization lists every file. Each check is a function of the loaded manifests, and
test_each_check_fails_on_a_broken_manifest breaks a copy for each to show it can fail. The metrics
port in compose and systemd: test_deploy_metrics_port.py; the pod's two processes run under the
manifest's file system and user: test_deploy_kubernetes_pod.py."""

from __future__ import annotations

import copy
import re
import shlex
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from test_deploy import DOCKER, image_env, instructions

K8S = ROOT / "deploy" / "kubernetes"
EXAMPLE = K8S / "mlflow-example"
README = ROOT / "deploy" / "README.md"
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


# ---------------------------------------------------------------------------------------------
# readers: {folder: {file name: [documents]}}, and lookups in it


def load() -> dict[str, dict[str, list[dict]]]:
    return {
        folder.name: {
            p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(folder.glob("*.yaml"))
        }
        for folder in (K8S, EXAMPLE)
    }


def resources(m: dict, folder: str | None = None) -> list[dict]:
    folders = [folder] if folder else list(m)
    return [d for f in folders for name, docs in m[f].items() if name != "kustomization.yaml" for d in docs]


def find(m: dict, kind: str, name: str) -> dict:
    (r,) = [r for r in resources(m) if r["kind"] == kind and r["metadata"]["name"] == name]
    return r


def pod(m: dict, name: str = "mlflow-aim-syncer") -> dict:
    return find(m, "Deployment", name)["spec"]["template"]


def container(m: dict, name: str, deployment: str = "mlflow-aim-syncer") -> dict:
    (c,) = [c for c in pod(m, deployment)["spec"]["containers"] if c["name"] == name]
    return c


def env(c: dict) -> dict:
    """A container's variables: the value, or the valueFrom mapping."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def syncer_env(m: dict) -> dict:
    """What the syncer process sees: the image's ENV, then the container's."""
    return {**image_env(DOCKER / "Dockerfile"), **env(container(m, "syncer"))}


def aim_up_argv(m: dict) -> list[str]:
    c = container(m, "aim")
    assert c["command"][:2] == ["/bin/sh", "-c"] and len(c["command"]) == 3, c["command"]
    (line,) = [ln for ln in c["command"][2].splitlines() if re.search(r"\baim up\b", ln)]
    argv = shlex.split(line.rstrip(" &"))
    return argv[argv.index("aim") :]


def opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def pod_templates(m: dict) -> list[dict]:
    return [r["spec"]["template"] for r in resources(m) if r["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


def image_uid(dockerfile: Path) -> int:
    (m,) = re.findall(r"useradd\b[^&]*--uid (\d+)", " ".join(instructions(dockerfile, "RUN")))
    return int(m)


# ---------------------------------------------------------------------------------------------
# the checks, each a function of the loaded manifests


def check_kustomizations_list_every_file_and_image(m: dict) -> None:
    for folder, files in m.items():
        (k,) = files["kustomization.yaml"]
        assert k["kind"] == "Kustomization", folder
        assert set(k["resources"]) == set(files) - {"kustomization.yaml"}, (folder, k["resources"], sorted(files))
        used = {
            c["image"].rsplit(":", 1)[0]
            for t in pod_templates({folder: files})
            for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]
        }
        assert {i["name"] for i in k.get("images", [])} == used, (folder, used)


def check_one_replica_replaced_not_rolled(m: dict) -> None:
    d = find(m, "Deployment", "mlflow-aim-syncer")
    assert d["spec"]["replicas"] == 1 and d["spec"]["strategy"]["type"] == "Recreate"
    for r in resources(m):
        if r["kind"] == "Deployment":
            labels = r["spec"]["template"]["metadata"]["labels"]
            assert r["spec"]["selector"]["matchLabels"].items() <= labels.items(), r["metadata"]["name"]
        if r["kind"] == "Service":
            owners = [t for t in pod_templates(m) if r["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
            assert len(owners) == 1, (r["metadata"]["name"], "selects no pod or several")


def check_the_repo_volume_is_shared(m: dict) -> None:
    spec = pod(m)["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v
    }
    (vol,) = claims
    pvc = find(m, "PersistentVolumeClaim", claims[vol])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {c["name"]: [vm for vm in c.get("volumeMounts", []) if vm["name"] == vol] for c in spec["containers"]}
    assert set(mounts) == {"syncer", "aim"} and all(len(v) == 1 for v in mounts.values()), mounts
    (path,) = {v[0]["mountPath"] for v in mounts.values()}
    assert not any(v[0].get("readOnly") for v in mounts.values()), "`aim up` writes the repo too"
    repo = syncer_env(m)["SYNCER_AIM_REPO"]
    assert Path(repo).is_relative_to(path), (repo, path)
    argv = aim_up_argv(m)
    assert argv[:2] == ["aim", "up"] and opt(argv, "--repo") == repo and opt(argv, "--host") == "0.0.0.0"
    (ui,) = [p for p in container(m, "aim")["ports"] if p["name"] == "aim-ui"]
    assert int(opt(argv, "--port")) == ui["containerPort"]
    from syncer.config import STATE_FILE

    assert str(Path(repo) / STATE_FILE) in container(m, "aim")["command"][2], "it waits for the syncer's repo"


def check_probes_and_metrics_port(m: dict) -> None:
    syncer, e = container(m, "syncer"), syncer_env(m)
    (metrics,) = [p for p in syncer["ports"] if p["name"] == "metrics"]
    assert int(e["SYNCER_METRICS_PORT"]) == metrics["containerPort"] and e["SYNCER_METRICS_HOST"] == "0.0.0.0"
    assert syncer["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert syncer["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    if "startupProbe" in syncer:
        assert syncer["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    for t in pod_templates(m):
        for c in t["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = c.get(kind, {}).get("httpGet")
                assert not get or get["port"] in ports, (c["name"], kind, get, ports)
            if c["name"] != "syncer":
                assert "livenessProbe" in c and "readinessProbe" in c, c["name"]
    ann = pod(m)["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == metrics["containerPort"]
    svc = find(m, "Service", "mlflow-aim-syncer-metrics")["spec"]
    assert [(p["name"], p["targetPort"]) for p in svc["ports"]] == [("metrics", "metrics")]
    ui = find(m, "Service", "mlflow-aim-ui")["spec"]
    assert [p["targetPort"] for p in ui["ports"]] == ["aim-ui"]
    # the pod is unready while the syncer is: the UI and the metrics must stay reachable then
    assert svc.get("publishNotReadyAddresses") is True and ui.get("publishNotReadyAddresses") is True


def check_credentials_from_the_secret(m: dict) -> None:
    e = env(container(m, "syncer"))
    assert all(isinstance(e[k], dict) and "secretKeyRef" in e[k] for k in CREDENTIALS), e
    refs = [e[k]["secretKeyRef"] for k in CREDENTIALS]
    assert len({r["name"] for r in refs}) == 1, refs
    assert all(r["key"] == k and r.get("optional") is True for r, k in zip(refs, CREDENTIALS)), refs
    # no credential is written into any manifest: each comes from a Secret
    for t in pod_templates(m):
        for c in t["spec"]["containers"]:
            for name, v in env(c).items():
                if re.search(r"PASSWORD|TOKEN|SECRET", name):
                    assert isinstance(v, dict) and "secretKeyRef" in v, (c["name"], name)
                if isinstance(v, str):
                    assert not urllib.parse.urlsplit(v).password or "$(" in v, (c["name"], name, "a literal password")


def check_non_root_read_only_resources(m: dict) -> None:
    uids = {
        "mlflow-aim-syncer": image_uid(DOCKER / "Dockerfile"),
        "mlflow": image_uid(DOCKER / "mlflow.Dockerfile"),
        "postgres": 999,
    }
    for r in resources(m):
        if r["kind"] != "Deployment":
            continue
        spec = r["spec"]["template"]["spec"]
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault", r["metadata"]
        assert sc["runAsUser"] == uids[r["metadata"]["name"]] and sc["runAsGroup"] == sc["fsGroup"] == sc["runAsUser"]
        assert spec["automountServiceAccountToken"] is False and spec["enableServiceLinks"] is False
        empty = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False and csc["readOnlyRootFilesystem"] is True, c["name"]
            assert csc["capabilities"]["drop"] == ["ALL"] and not csc.get("runAsUser"), c["name"]
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), c["name"]
            tmp = [vm for vm in c["volumeMounts"] if vm["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and tmp[0]["name"] in empty, (c["name"], "a writable /tmp (an emptyDir)")


def check_the_example_serves_the_syncer(m: dict) -> None:
    from mlflow.server.security_utils import is_allowed_host_header

    u = urllib.parse.urlsplit(syncer_env(m)["MLFLOW_TRACKING_URI"])
    assert u.scheme == "http" and u.hostname == "mlflow", u
    (sp,) = find(m, "Service", "mlflow")["spec"]["ports"]
    c = container(m, "mlflow", deployment="mlflow")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert sp["port"] == u.port and ports[sp["targetPort"]] == int(opt(c["command"], "--port"))
    assert c["command"][:2] == ["mlflow", "server"] and opt(c["command"], "--host") == "0.0.0.0"
    allowed = opt(c["command"], "--allowed-hosts").split(",")
    assert is_allowed_host_header(allowed, u.netloc) and not is_allowed_host_header(allowed, "evil.example:5000")
    e = env(c)
    names = [x["name"] for x in c["env"]]
    store = urllib.parse.urlsplit(e["MLFLOW_BACKEND_STORE_URI"])
    # $(VAR) is expanded by the kubelet only from a variable defined earlier in the list
    assert store.password == "$(POSTGRES_PASSWORD)" and names.index("POSTGRES_PASSWORD") < names.index(
        "MLFLOW_BACKEND_STORE_URI"
    )
    pg = container(m, "postgres", deployment="postgres")
    (pgp,) = find(m, "Service", "postgres")["spec"]["ports"]
    assert (store.hostname, store.port) == ("postgres", pgp["port"]) and pgp["targetPort"] in {
        p["name"] for p in pg["ports"]
    }
    pge = env(pg)
    assert (store.username, store.path.lstrip("/")) == (pge["POSTGRES_USER"], pge["POSTGRES_DB"])
    assert e["POSTGRES_PASSWORD"] == pge["POSTGRES_PASSWORD"], "one Secret for both"
    data = [vm for vm in pg["volumeMounts"] if vm["name"] == "data"][0]["mountPath"]
    assert Path(pge["PGDATA"]).parent == Path(data), "PGDATA in a folder of the volume (lost+found)"
    sql = find(m, "ConfigMap", "postgres-initdb")["data"]
    assert list(sql.values()) == [(DOCKER / "postgres-readonly.sql").read_text()]


CHECKS = [
    check_kustomizations_list_every_file_and_image,
    check_one_replica_replaced_not_rolled,
    check_the_repo_volume_is_shared,
    check_probes_and_metrics_port,
    check_credentials_from_the_secret,
    check_non_root_read_only_resources,
    check_the_example_serves_the_syncer,
]


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__[len("check_") :])
def test_manifests(check):
    check(load())


def _set_env(c: dict, name: str, value) -> None:
    (e,) = [e for e in c["env"] if e["name"] == name]
    e.pop("valueFrom", None)
    e.pop("value", None)
    e.update({"value": value} if isinstance(value, str) else {"valueFrom": value})


def _mounts(c: dict) -> list[dict]:
    return c["volumeMounts"]


# (the check that must fail, what breaks the manifests)
BREAKS = {
    "a file left out": (
        CHECKS[0],
        lambda m: m["kubernetes"]["kustomization.yaml"][0]["resources"].remove("service.yaml"),
    ),
    "the image override misses": (
        CHECKS[0],
        lambda m: m["kubernetes"]["kustomization.yaml"][0]["images"][0].update(name="mlflow-aim"),
    ),
    "two replicas": (CHECKS[1], lambda m: find(m, "Deployment", "mlflow-aim-syncer")["spec"].update(replicas=2)),
    "rolling update": (
        CHECKS[1],
        lambda m: find(m, "Deployment", "mlflow-aim-syncer")["spec"].update(strategy={"type": "RollingUpdate"}),
    ),
    "a Service selecting nothing": (
        CHECKS[1],
        lambda m: find(m, "Service", "mlflow-aim-ui")["spec"]["selector"].update({"app.kubernetes.io/name": "aim"}),
    ),
    "aim without the volume": (CHECKS[2], lambda m: _mounts(container(m, "aim")).pop(0)),
    "aim mounts it read-only": (CHECKS[2], lambda m: _mounts(container(m, "aim"))[0].update(readOnly=True)),
    "aim on another repo": (
        CHECKS[2],
        lambda m: container(m, "aim")["command"].__setitem__(
            2, container(m, "aim")["command"][2].replace("--repo /data/aim", "--repo /data/other")
        ),
    ),
    "liveness on a path not served": (
        CHECKS[3],
        lambda m: container(m, "syncer")["livenessProbe"]["httpGet"].update(path="/health"),
    ),
    "readiness on an unnamed port": (
        CHECKS[3],
        lambda m: container(m, "syncer")["readinessProbe"]["httpGet"].update(port="http"),
    ),
    "metrics port differs": (CHECKS[3], lambda m: _set_env(container(m, "syncer"), "SYNCER_METRICS_PORT", "9100")),
    "metrics on loopback": (CHECKS[3], lambda m: _set_env(container(m, "syncer"), "SYNCER_METRICS_HOST", "127.0.0.1")),
    "scrape annotation on another port": (
        CHECKS[3],
        lambda m: pod(m)["metadata"]["annotations"].update({"prometheus.io/port": "9100"}),
    ),
    "metrics hidden while unready": (
        CHECKS[3],
        lambda m: find(m, "Service", "mlflow-aim-syncer-metrics")["spec"].pop("publishNotReadyAddresses"),
    ),
    "a required secret": (
        CHECKS[4],
        lambda m: env(container(m, "syncer"))["MLFLOW_TRACKING_TOKEN"]["secretKeyRef"].pop("optional"),
    ),
    "a password in the manifest": (
        CHECKS[4],
        lambda m: _set_env(container(m, "syncer"), "MLFLOW_TRACKING_PASSWORD", "hunter2"),
    ),
    "runs as root": (CHECKS[5], lambda m: pod(m)["spec"]["securityContext"].update(runAsNonRoot=False)),
    "a writable root": (
        CHECKS[5],
        lambda m: container(m, "aim")["securityContext"].update(readOnlyRootFilesystem=False),
    ),
    "no limits": (CHECKS[5], lambda m: container(m, "syncer")["resources"].pop("limits")),
    "no /tmp for the syncer": (
        CHECKS[5],
        lambda m: _mounts(container(m, "syncer")).remove(
            [v for v in _mounts(container(m, "syncer")) if v["mountPath"] == "/tmp"][0]
        ),
    ),
    "service links": (CHECKS[5], lambda m: pod(m)["spec"].pop("enableServiceLinks")),
    "MLflow refuses the syncer's Host": (
        CHECKS[6],
        lambda m: container(m, "mlflow", "mlflow")["command"].__setitem__(-3, "localhost:*"),
    ),
    "$(POSTGRES_PASSWORD) used before it is defined": (
        CHECKS[6],
        lambda m: container(m, "mlflow", "mlflow")["env"].reverse(),
    ),
    "another read-only role": (
        CHECKS[6],
        lambda m: find(m, "ConfigMap", "postgres-initdb")["data"].update({"10-syncer-readonly.sql": "SELECT 1;\n"}),
    ),
}


@pytest.mark.parametrize("what", list(BREAKS))
def test_each_check_fails_on_a_broken_manifest(what):
    check, breaks = BREAKS[what]
    m = copy.deepcopy(load())
    breaks(m)
    with pytest.raises((AssertionError, KeyError, ValueError)):
        check(m)


def test_every_check_has_a_break():
    assert {c for c, _ in BREAKS.values()} == set(CHECKS)


# ---------------------------------------------------------------------------------------------
# the Kubernetes schemas


def _versions() -> list[str]:
    from kubernetes_validate.utils import all_versions

    # the oldest the package knows (a cluster past its support) and the newest
    return [all_versions()[0], all_versions()[-1]]


def test_every_manifest_validates_against_the_kubernetes_schemas():
    import kubernetes_validate

    found = set()
    for r in resources(load()):
        for version in _versions():
            kubernetes_validate.validate(r, version, strict=True)  # raises on any finding
        found.add(r["kind"])
    assert {"Deployment", "Service", "PersistentVolumeClaim", "ConfigMap"} <= found


@pytest.mark.parametrize(
    "bad",
    [
        ("readOnlyRootFilesystem", "readOnlyRootFileSystem"),  # a misspelt field
        ("failureThreshold: 60", "failureThreshold: sixty"),  # a string for an integer
        ("    type: Recreate", "    type: Recreate\n    rollingUpdate: {}\n    paused: maybe"),  # a bad value
    ],
)
def test_schema_validation_catches_a_broken_manifest(bad):
    import kubernetes_validate

    text = (K8S / "deployment.yaml").read_text()
    assert bad[0] in text
    (d,) = yaml.safe_load_all(text.replace(bad[0], bad[1], 1))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(d, _versions()[-1], strict=True)


def _kustomize() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if (
        shutil.which("kubectl")
        and subprocess.run(["kubectl", "kustomize", "--help"], capture_output=True).returncode == 0
    ):
        return ["kubectl", "kustomize"]
    return None


@pytest.mark.skipif(_kustomize() is None, reason="neither kustomize nor kubectl is installed")
def test_kustomize_builds_each_folder_with_its_images():
    m = load()
    for folder in (K8S, EXAMPLE):
        p = subprocess.run([*_kustomize(), str(folder)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        built = [d for d in yaml.safe_load_all(p.stdout) if d]
        files = resources(m, folder.name)
        assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
            (d["kind"], d["metadata"]["name"]) for d in files
        )
        (k,) = m[folder.name]["kustomization.yaml"]
        want = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in k["images"]}
        images = {
            c["image"] for d in built if d["kind"] == "Deployment" for c in d["spec"]["template"]["spec"]["containers"]
        }
        assert images == set(want.values()), (images, want)
