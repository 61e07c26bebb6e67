"""The syncer's metrics port in every deployment: the pod sets variables the syncer reads, compose
serves it on the same port (its healthcheck still on the health file), systemd documents it and
leaves it off; deploy/README.md shows both deployments, how to scrape, and alerts that name only
metrics the syncer serves."""

from __future__ import annotations

import re

import yaml

from test_deploy import DOCKER, SYSTEMD, UNITS, as_env, env_file, exec_form, image_env, instructions, service, unit
from test_deploy_kubernetes import CREDENTIALS, README, container, env, find, load, syncer_env

METRICS_ENV = ("SYNCER_METRICS_PORT", "SYNCER_METRICS_HOST")
# the metrics the syncer serves (its /metrics page; issue 23's contract)
METRICS = {
    "syncer_rounds_total",
    "syncer_round_duration_seconds",
    "syncer_full_listings_total",
    "syncer_runs_written_total",
    "syncer_points_written_total",
    "syncer_artifacts_written_total",
    "syncer_run_errors_total",
    "syncer_runs_locked_total",
    "syncer_read_runs_listed_total",
    "syncer_read_runs_read_total",
    "syncer_read_histories_total",
    "syncer_read_points_total",
    "syncer_read_requests_total",
    "syncer_last_good_round_timestamp_seconds",
    "syncer_lag_seconds",
    "syncer_source_up",
}

# ---------------------------------------------------------------------------------------------
# the metrics port everywhere: the syncer reads these variables; compose sets them, systemd
# documents them (off)


def test_the_syncer_reads_every_variable_the_pod_sets():
    from test_deploy import syncer_env_vars

    assert set(METRICS_ENV) <= syncer_env_vars(), "syncer.config.ENV lacks the metrics port's variables"
    names = set(env(container(load(), "syncer")))
    unknown = names - syncer_env_vars() - set(CREDENTIALS) - {"MLFLOW_DISABLE_TELEMETRY"}
    assert not unknown, unknown


def test_compose_serves_metrics_on_the_same_port_and_keeps_the_health_file():
    syncer = service("syncer")
    e = {**image_env(DOCKER / "Dockerfile"), **as_env(syncer["environment"])}
    port = e["SYNCER_METRICS_PORT"]
    assert port == syncer_env(load())["SYNCER_METRICS_PORT"] and e["SYNCER_METRICS_HOST"] == "0.0.0.0"
    # published on the host's loopback only: a Prometheus on the compose network scrapes syncer:PORT
    assert f"127.0.0.1:{port}:{port}" in [str(p) for p in syncer["ports"]]
    # the healthcheck is still the image's, on the health file
    assert "healthcheck" not in syncer and e["SYNCER_HEALTH_FILE"].startswith("/data/")
    assert exec_form(instructions(DOCKER / "Dockerfile", "ENTRYPOINT")[-1]) == ["syncer"]


def test_systemd_documents_the_metrics_port_off_by_default():
    settings = SYSTEMD / "syncer.env"
    assert not set(METRICS_ENV) & set(env_file(settings)), "off by default"
    documented = env_file(settings, commented=True)
    assert set(METRICS_ENV) <= set(documented)
    assert documented["SYNCER_METRICS_HOST"] == "127.0.0.1" and int(documented["SYNCER_METRICS_PORT"]) > 1024
    for name in UNITS:
        assert not [v for k, v in unit(SYSTEMD / name)["Service"] if k == "Environment" and "METRICS" in v], name


# ---------------------------------------------------------------------------------------------
# deploy/README.md


def _yaml_blocks(text: str) -> list:
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_readme_shows_both_ways_scraping_and_alerts_on_served_metrics():
    text = README.read_text()
    assert re.search(r"^kubectl apply -k deploy/kubernetes$", text, re.M) and "docker compose up" in text
    assert "<!-- METRICS EXCERPT -->" in text
    secret = env(container(load(), "syncer"))[CREDENTIALS[0]]["secretKeyRef"]["name"]
    assert f"kubectl create secret generic {secret}" in text
    # its metrics section names every metric the syncer serves, and no other (a histogram's
    # series by their suffixes)
    section = text.split("## Metrics, health and alerts", 1)[1].split("\n## ", 1)[0]
    named = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"\bsyncer_[a-z_]+", section)}
    assert named == METRICS, (named - METRICS, METRICS - named)
    blocks = _yaml_blocks(section)
    # the alert rules: each with a name and an expression, together on lag, errors, the last good
    # round and the source
    (rules,) = [r for b in blocks if isinstance(b, dict) and "groups" in b for g in b["groups"] for r in [g["rules"]]]
    assert all(r["alert"] and r["expr"] for r in rules)
    exprs = " ".join(r["expr"] for r in rules)
    for metric in (
        "syncer_lag_seconds",
        "syncer_rounds_total",
        "syncer_last_good_round_timestamp_seconds",
        "syncer_source_up",
    ):
        assert metric in exprs, f"no alert on {metric}"
    # the ServiceMonitor selects the metrics Service and its port
    (sm,) = [b for b in blocks if isinstance(b, dict) and b.get("kind") == "ServiceMonitor"]
    svc = find(load(), "Service", "mlflow-aim-syncer-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert [e["port"] for e in sm["spec"]["endpoints"]] == [p["name"] for p in svc["spec"]["ports"]]
    assert {e["path"] for e in sm["spec"]["endpoints"]} == {"/metrics"}
