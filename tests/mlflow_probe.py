"""What an MLflow server offers the HTTP source, asked over REST (not a test; findings in issue 24's
notes). Needs one experiment with at least one run:

    python tests/mlflow_probe.py http://127.0.0.1:5000 [WORKSPACE]

Prints /version, /api/3.0/mlflow/server-info, for each endpoint the syncer uses its status (404 with
an HTML page = the endpoint is missing; a JSON 404 = a missing run or experiment), and which of the
searches the syncer sends the server accepts.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request


def call(uri: str, method: str, path: str, params=None, body=None, ws: str | None = None) -> tuple[int, str, str]:
    url = uri + path + ("?" + urllib.parse.urlencode(params, doseq=True) if params else "")
    headers = {"Content-Type": "application/json", **({"X-MLFLOW-WORKSPACE": ws} if ws else {})}
    req = urllib.request.Request(url, json.dumps(body).encode() if body is not None else None, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def short(status: int, ctype: str, body: str) -> str:
    if status == 404 and "html" in ctype:
        return "404 html (no such endpoint)"
    if status == 200:
        return "200"
    return f"{status} {' '.join(body.split())[:160]}"


def main(uri: str, ws: str | None = None) -> None:
    show = lambda what, got: print(f"{what:50s} {got}")  # noqa: E731
    status, _, body = call(uri, "GET", "/version", ws=ws)
    show("GET /version", body.strip() if status == 200 else short(status, "html", body))
    show("GET /api/3.0/mlflow/server-info", short(*call(uri, "GET", "/api/3.0/mlflow/server-info", ws=ws)))
    show("GET /api/3.0/mlflow/workspaces", short(*call(uri, "GET", "/api/3.0/mlflow/workspaces")))
    _, _, body = call(uri, "POST", "/api/2.0/mlflow/experiments/search", body={"max_results": 100}, ws=ws)
    exp_ids = [e["experiment_id"] for e in json.loads(body).get("experiments", [])]
    search = {"experiment_ids": exp_ids, "max_results": 1, "run_view_type": "ALL"}
    _, _, body = call(uri, "POST", "/api/2.0/mlflow/runs/search", body=search, ws=ws)
    runs = json.loads(body).get("runs", [])
    if not runs:
        sys.exit("no run to ask about: log one first")
    run = runs[0]["info"]["run_id"]
    key = next((m["key"] for m in runs[0].get("data", {}).get("metrics", [])), "loss")
    bulk = {"run_id": [run], "metric_key": key, "max_results": 10}
    interval = {"run_ids": run, "metric_key": key, "start_step": 0, "end_step": 2**31 - 1, "max_results": 10}
    for what, args in [
        (
            "POST logged-models/search",
            ("POST", "/api/2.0/mlflow/logged-models/search", None, {"experiment_ids": exp_ids}),
        ),
        ("GET get-history", ("GET", "/api/2.0/mlflow/metrics/get-history", {"run_id": run, "metric_key": key})),
        ("GET get-history-bulk-interval", ("GET", "/api/2.0/mlflow/metrics/get-history-bulk-interval", interval)),
        ("GET ajax get-history-bulk (1 run)", ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk", bulk)),
        (
            "GET ajax get-history-bulk (21 ids)",
            ("GET", "/ajax-api/2.0/mlflow/metrics/get-history-bulk", {**bulk, "run_id": [run] * 21}),
        ),
    ]:
        show(what, short(*call(uri, *args, ws=ws)))
    for flt in (
        "attributes.status = 'RUNNING'",
        f"attributes.status = 'RUNNING' AND attributes.run_id NOT IN ('{run}')",
        "attributes.end_time >= 0",
    ):
        show(
            f"search {flt[:43]}",
            short(*call(uri, "POST", "/api/2.0/mlflow/runs/search", body={**search, "filter": flt}, ws=ws)),
        )


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1].rstrip("/"), sys.argv[2] if len(sys.argv) == 3 else None)
