"""What MLflow >= 3.10 workspaces look like to a reader, shown on a real server of the installed
MLflow (not a test; findings in issue 24's notes):

    .venv/bin/python tests/workspaces_demo.py

Starts `mlflow server --enable-workspaces` on sqlite in a temporary folder, makes workspaces
team-a and team-b each holding an experiment `xnli` (and one in the default workspace), then
prints what REST and the database say, and what deleting a workspace does in each mode.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from legacy_mlflow import start_server

HEADER = "X-MLFLOW-WORKSPACE"  # mlflow.utils.workspace_utils.WORKSPACE_HEADER_NAME


def call(uri: str, method: str, path: str, body: dict | None = None, ws: str | None = None):
    headers = {"Content-Type": "application/json", **({HEADER: ws} if ws else {})}
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(uri + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if text.startswith("{") else text
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()[:240]


def rows(db: Path, sql: str) -> list:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mlflow-workspaces-"))
    server = start_server(sys.executable, work, None, ("--enable-workspaces",))
    uri, db = server.uri, work / "mlflow.db"
    show = lambda what, got: print(f"{what:58s} {got}")  # noqa: E731
    try:
        show("GET /version", call(uri, "GET", "/version"))
        show("GET /api/3.0/mlflow/server-info", call(uri, "GET", "/api/3.0/mlflow/server-info")[1])
        for ws in ("team-a", "team-b", "team-c"):
            call(uri, "POST", "/api/3.0/mlflow/workspaces", {"name": ws})
        show("GET /api/3.0/mlflow/workspaces", call(uri, "GET", "/api/3.0/mlflow/workspaces")[1])
        for ws in (None, "team-a", "team-b"):
            _, exp = call(uri, "POST", "/api/2.0/mlflow/experiments/create", {"name": "xnli"}, ws=ws)
            call(uri, "POST", "/api/2.0/mlflow/runs/create", {"experiment_id": exp["experiment_id"]}, ws=ws)
        call(uri, "POST", "/api/2.0/mlflow/experiments/create", {"name": "other"}, ws="team-c")
        for ws in (None, "team-a", "team-b", "no-such"):
            got = call(uri, "POST", "/api/2.0/mlflow/experiments/search", {"max_results": 100}, ws=ws)
            if got[0] == 200:
                got = [(e["experiment_id"], e["name"], e.get("workspace")) for e in got[1]["experiments"]]
            show(f"experiments/search with {HEADER}: {ws}", got)
        show(
            "team-b's experiment 3 asked for in team-a",
            call(uri, "GET", "/api/2.0/mlflow/experiments/get?experiment_id=3", ws="team-a"),
        )
        show("SQL workspaces", rows(db, "SELECT name FROM workspaces"))
        show(
            "SQL experiments (id, name, workspace)", rows(db, "SELECT experiment_id, name, workspace FROM experiments")
        )
        show(
            "PATCH a workspace's name (no rename in MLflow)",
            call(uri, "PATCH", "/api/3.0/mlflow/workspaces/team-a", {"name": "team-z"}),
        )
        show("DELETE team-a (mode RESTRICT, the default)", call(uri, "DELETE", "/api/3.0/mlflow/workspaces/team-a"))
        show(
            "DELETE team-b?mode=SET_DEFAULT (default has xnli)",
            call(uri, "DELETE", "/api/3.0/mlflow/workspaces/team-b?mode=SET_DEFAULT"),
        )
        before = rows(db, "SELECT experiment_id, workspace, last_update_time FROM experiments WHERE name = 'other'")
        show(
            "DELETE team-c?mode=SET_DEFAULT", call(uri, "DELETE", "/api/3.0/mlflow/workspaces/team-c?mode=SET_DEFAULT")
        )
        after = rows(db, "SELECT experiment_id, workspace, last_update_time FROM experiments WHERE name = 'other'")
        show("  its experiment before -> after", f"{before} -> {after}")
        show("DELETE team-a?mode=CASCADE", call(uri, "DELETE", "/api/3.0/mlflow/workspaces/team-a?mode=CASCADE"))
        show("  SQL experiments after", rows(db, "SELECT experiment_id, name, workspace FROM experiments"))
        show("  SQL runs after (run, experiment)", rows(db, "SELECT run_uuid, experiment_id FROM runs"))
        show("DELETE default", call(uri, "DELETE", "/api/3.0/mlflow/workspaces/default"))
    finally:
        server.stop()
    try:  # the same database without --enable-workspaces: refused while team-b holds an experiment
        start_server(sys.executable, work / "plain", f"sqlite:///{db}", deadline_s=120).stop()
        show("server without --enable-workspaces on this database", "started")
    except RuntimeError as e:
        show("server without --enable-workspaces on this database", str(e).strip().splitlines()[-1][:200])


if __name__ == "__main__":
    main()
