"""End to end through Aim's UI: what `aim up` serves (its web API, and the pages headless Chromium
renders) for runs the syncer converted, checked against MLflow's own records.

* Offline training runs (real Trainer + MLflow) -> `syncer backfill` -> `aim up`: metric contexts,
  both experiments, typed params and MLflow's timestamps through the web API; the runs page and a
  metrics explorer grouped by language in Chromium (screenshot).
* Crafted runs months apart (finished, failed, killed, running, nested, deleted, tagged), written
  while `syncer sync` follows the store, then backfilled: times, status, labels, nesting, archive,
  order, experiment description through Aim's SDK and web API; `--no-tag-labels`; the live repo and
  the backfilled one give the same web API answers; the runs table in Chromium (screenshot).

Screenshots land in the test's tmp folder; with UPDATE_UI_SCREENSHOTS=1 they are also copied to
docs/ (the committed ones were made that way).

Chromium is driven directly through its DevTools protocol (`--remote-debugging-port`, spoken with
`websockets`, which Aim itself depends on): Aim's UI is a React app, so the tests wait for what they
look for instead of guessing a time budget, and set `communityPopupSeen` in localStorage so Aim's
"join the community" popup does not cover the pages.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    ROOT,
    T0,
    client_for,
    decode_aim_stream,
    free_port,
    log_points,
    read_aim,
    run_syncer,
    stop_group,
    syncer_cmd,
    wait_http,
)

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (`make test-deps` installs it with apt-get when run as root)"
)
LANGS = ("en", "de", "fr", "es", "ar", "zh")
DOCS = ROOT / "docs"
DAY = 86_400_000  # ms


# ------------------------------------------------------------------------------------------------
# aim up and its web API


class AimWeb:
    """`aim up` on a repo, in its own process group; JSON and Aim's streamed encoded trees."""

    def __init__(self, repo: Path, log: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("aim")
        self.proc = subprocess.Popen(
            [str(exe), "up", "--repo", str(repo), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=repo.parent,
        )
        try:
            wait_http(self.base + "/api/projects/", timeout=90, proc=self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop_group(self.proc)

    def get(self, path: str, data: bytes | None = None) -> bytes:
        req = urllib.request.Request(
            self.base + path, data=data, headers={"Content-Type": "application/json"} if data else {}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.read()

    def json(self, path: str, data=None):
        return json.loads(self.get(path, None if data is None else json.dumps(data).encode()))

    def stream(self, kind: str, q: str, **params) -> dict:
        """/api/runs/search/<kind>/: {run hash: run}, in the order Aim streams them (= the UI's order)."""
        qs = urllib.parse.urlencode({"q": q, "report_progress": "false", **params})
        return decode_aim_stream(self.get(f"/api/runs/search/{kind}/?{qs}"))

    def runs(self, q: str = "") -> dict:
        return self.stream("run", q)

    def metrics(self, q: str) -> dict:
        """Metric search; numpy blobs decoded to lists."""
        out = self.stream("metric", q, p=1000)
        for run in out.values():
            for t in run["traces"]:
                for k in ("values", "iters", "timestamps"):
                    t[k] = np.frombuffer(t[k]["blob"], dtype="<f8").tolist()
        return out

    def info(self, run_hash: str) -> dict:
        return self.json(f"/api/runs/{run_hash}/info/")


@contextlib.contextmanager
def aim_up(repo: Path, log: Path):
    web = AimWeb(repo, log)
    try:
        yield web
    finally:
        web.stop()


# ------------------------------------------------------------------------------------------------
# headless Chromium through the DevTools protocol


def aim64(obj) -> str:
    """The UI's URL state encoding (aim_ui utils/encoder/encoder.ts aim64encode):
    'O-' + base64(encodeURI(JSON.stringify(obj))) with '+/' -> '-_' and no '=' padding."""
    text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    uri = urllib.parse.quote(text, safe="-_.!~*'();/?:@&=+$,#")  # what encodeURI leaves alone
    return "O-" + base64.b64encode(uri.encode()).decode().rstrip("=").replace("+", "-").replace("/", "_")


def un_aim64(value: str):
    s = value[2:].replace("_", "/").replace("-", "+")
    return json.loads(urllib.parse.unquote(base64.b64decode(s + "=" * (-len(s) % 4)).decode()))


def metrics_explorer_url(query: str, color: list[str], chart: list[str]) -> str:
    """The metrics explorer's URL for an advanced query and a grouping, as the UI itself writes it
    (utils/app/updateURL.ts: `select`, `grouping` and `chart` params, each aim64-encoded)."""
    select = {"options": [], "query": "", "advancedMode": True, "advancedQuery": query}
    grouping = {
        "color": color,
        "stroke": [],
        "chart": chart,
        "reverseMode": {"color": False, "stroke": False, "chart": False},
        "isApplied": {"color": True, "stroke": True, "chart": True},
        "persistence": {"color": False, "stroke": False},
        "seed": {"color": 10, "stroke": 10},
        "paletteIndex": 0,
    }
    return "/metrics?" + urllib.parse.urlencode({"grouping": aim64(grouping), "select": aim64(select)})


class Chrome:
    def __init__(self, width: int = 1600, height: int = 1000):
        from websockets.sync.client import connect

        self._stack = contextlib.ExitStack()
        self.profile = tempfile.mkdtemp(prefix="ui-test-chromium-")
        self.proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
                "--remote-allow-origins=*",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port_file = Path(self.profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 90
            while not (port_file.exists() and port_file.read_text().strip()):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            self.ws = self._stack.enter_context(connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=60))
            self.n = 0
            self.send("Page.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False
            )
            self.send("Emulation.setTimezoneOverride", timezoneId="UTC")  # the UI formats dates in local time
            self.send(
                "Page.addScriptToEvaluateOnNewDocument",  # aim_ui components/CommunityPopup
                source="localStorage.setItem('communityPopupSeen', 'true')",
            )
        except BaseException:
            self.close()
            raise

    def send(self, method: str, timeout: float = 120, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"])
        return r["result"].get("value")

    def open(self, url: str, until: str, timeout: float = 120) -> None:
        """Navigate, then wait until the JS expression `until` is truthy."""
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(RuntimeError):
                if self.js(until):
                    time.sleep(1.0)  # let transitions and the last paint settle
                    return
            time.sleep(0.25)
        text = self.js("document.body ? document.body.innerText : ''") or ""
        raise AssertionError(f"{url}: `{until}` never became true; the page says: {text[:1500]!r}")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))
        return path

    def table(self) -> list[dict]:
        """Aim's table (runs page), row by row in display order: {hash, column key: text}.
        Each cell's classes say its row (rowKey-<aim64 {"runHash": ...}>, index-<n>) and column."""
        cells = self.js(
            "Array.from(document.querySelectorAll('.Table__cell[class*=\"rowKey-\"]'))"
            ".map(e => [e.className, e.innerText])"
        )
        rows: dict[int, dict] = {}
        for classes, text in cells:
            toks = classes.split()
            key = next(t for t in toks if t.startswith("rowKey-"))
            idx = next(int(t[6:]) for t in toks if t.startswith("index-") and t[6:].isdigit())
            col = toks[toks.index(f"index-{idx}") + 1]
            row = rows.setdefault(idx, {"hash": un_aim64(key[len("rowKey-") :])["runHash"]})
            row[col] = text.strip()
        return [rows[i] for i in sorted(rows)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()
        stop_group(self.proc)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture
def chrome():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (`make test-deps` installs it with apt-get when run as root)")
    c = Chrome()
    yield c
    c.close()


def keep_screenshot(png: Path, name: str) -> None:
    assert png.stat().st_size < 500_000, f"{png} is {png.stat().st_size} bytes"
    if os.environ.get("UPDATE_UI_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        shutil.copyfile(png, DOCS / name)


# ------------------------------------------------------------------------------------------------
# A. offline training runs (real Trainer + MLflow), backfilled, in the real UI

# `make demo`'s settings for one model: enough steps (190) for English accuracy to leave chance
TRAIN = [
    "--model-names",
    "tiny-bert",
    "--eval-datasets-names",
    *LANGS,
    "--num-train-samples",
    "300",
    "--num-train-epochs",
    "5",
    "--eval-steps",
    "10",
    "--learning-rate",
    "1e-3",
    "--quiet",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Both techniques, one tiny model: 190 steps, 19 evaluations in six languages (~25 s a run on 2 busy cores)."""
    out = tmp_path_factory.mktemp("trained")
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    started = time.monotonic()
    for technique in ("fine-tune", "feature-extraction"):
        p = subprocess.run(
            [sys.executable, "-m", "training", technique, *TRAIN, "--output-dir", str(out)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert p.returncode == 0, f"training {technique} failed:\n{p.stdout}\n{p.stderr}"
    print(f"offline training of 2 runs took {time.monotonic() - started:.1f} s")
    store = out / "mlruns"
    client = client_for(str(store))
    runs = {}
    for technique in ("fine-tune", "feature-extraction"):
        exp = client.get_experiment_by_name(f"xnli_{technique}")
        (run,) = client.search_runs([exp.experiment_id])
        runs[technique] = run
    return {"store": store, "runs": runs, "client": client}


@pytest.fixture(scope="module")
def trained_ui(trained, tmp_path_factory):
    repo = tmp_path_factory.mktemp("trained-aim") / "repo"
    run_syncer("backfill", "--mlflow-tracking-uri", str(trained["store"]), "--aim-repo", str(repo), check=True)
    with aim_up(repo, repo.parent / "aim-up.log") as web:
        yield {**trained, "web": web, "repo": repo}


def test_training_runs_through_aim_web_api(trained_ui):
    web, client, runs = trained_ui["web"], trained_ui["client"], trained_ui["runs"]

    experiments = {e["name"]: e for e in web.json("/api/experiments/")}
    assert {n for n, e in experiments.items() if e["run_count"]} == {"xnli_fine-tune", "xnli_feature-extraction"}

    found = web.metrics('metric.name == "accuracy"')
    by_mlflow_id = {r["params"]["mlflow"]["run_id"]: (h, r) for h, r in found.items()}
    assert set(by_mlflow_id) == {r.info.run_id for r in runs.values()}
    for technique, mlrun in runs.items():
        h, r = by_mlflow_id[mlrun.info.run_id]
        assert r["props"]["experiment"]["name"] == f"xnli_{technique}"
        assert r["props"]["name"] == mlrun.info.run_name == "tiny-bert"
        contexts = [t["context"] for t in r["traces"]]
        assert all(t["name"] == "accuracy" for t in r["traces"])
        assert sorted(c["lang"] for c in contexts) == sorted(LANGS)
        assert all(c == {"subset": "eval", "dataset": c["lang"], "lang": c["lang"]} for c in contexts)

        hp = r["params"]["hparams"]
        assert isinstance(hp["learning_rate"], float) and hp["learning_rate"] == 1e-3
        assert mlrun.data.params["learning_rate"] == "0.001"  # MLflow holds a string; Aim a float
        assert isinstance(hp["_name_or_path"], str) and hp["_name_or_path"] == mlrun.data.params["_name_or_path"]
        assert "tiny-bert" in hp["_name_or_path"]

        # every point, with MLflow's step, value and timestamp (ms)
        for t in r["traces"]:
            truth = sorted(
                client.get_metric_history(mlrun.info.run_id, f"eval_{t['context']['lang']}_accuracy"),
                key=lambda m: m.step,
            )
            assert len(truth) == 19
            assert t["iters"] == [float(m.step) for m in truth]
            assert t["values"] == [m.value for m in truth]
            assert [round(ts * 1000) for ts in t["timestamps"]] == [m.timestamp for m in truth]

        info = web.info(h)
        assert round(info["props"]["creation_time"] * 1000) == mlrun.info.start_time
        assert round(info["props"]["end_time"] * 1000) == mlrun.info.end_time
        assert info["props"]["active"] is False

    # the lang context is what Aim searches and groups by
    de = web.metrics('metric.name == "accuracy" and metric.context.lang == "de"')
    assert sorted(len(r["traces"]) for r in de.values()) == [1, 1]
    assert all(r["traces"][0]["context"]["lang"] == "de" for r in de.values())


@needs_chromium
def test_runs_page_and_metrics_grouped_by_lang_in_chromium(trained_ui, chrome, tmp_path):
    web = trained_ui["web"]
    api = web.runs()
    assert len(api) == 2

    chrome.open(web.base + "/runs", "document.querySelectorAll('.Table__cell.date[class*=\"rowKey-\"]').length >= 2")
    table = chrome.table()
    assert [row["hash"] for row in table] == list(api)  # the page lists exactly the synced runs, in API order
    assert sorted(row["run"] for row in table) == ["tiny-bert", "tiny-bert"]
    assert {row["experiment"] for row in table} == {"xnli_fine-tune", "xnli_feature-extraction"}
    for row in table:
        start = api[row["hash"]]["props"]["creation_time"]
        assert row["date"] == datetime.fromtimestamp(start, UTC).strftime("%H:%M:%S · %d %b, %y")
    html = chrome.js("document.documentElement.outerHTML")
    assert all(f"/runs/{h}" in html for h in api)  # run name links point to each run's page
    chrome.screenshot(tmp_path / "runs-trained.png")

    url = metrics_explorer_url('metric.name == "accuracy"', color=["context.lang"], chart=["run.props.experiment.name"])
    chrome.open(
        web.base + url,
        "document.querySelectorAll('.Lines .Line').length >= 12 && "
        "document.querySelectorAll('.Legend-color-column .Legend-cell').length > 0",
    )
    assert chrome.js("document.querySelectorAll('.Lines .Line').length") == 12  # 6 languages x 2 runs
    colors = chrome.js(
        "Array.from(document.querySelectorAll('.Legend-color-column .Legend-cell')).map(e => e.textContent)"
    )  # the colour legend: one cell per group
    assert sorted(colors) == sorted(f'"{x}"' for x in LANGS), colors
    assert "metric.context.lang" in chrome.js(
        "Array.from(document.querySelectorAll('.Legend-color-column')).map(e => e.textContent).join(' ')"
    )
    text = chrome.js("document.body.innerText")
    assert "xnli_fine-tune" in text and "xnli_feature-extraction" in text  # one chart per experiment
    png = chrome.screenshot(tmp_path / "metrics-by-lang.png")
    keep_screenshot(png, "metrics-by-lang.png")


# ------------------------------------------------------------------------------------------------
# B, C. crafted runs "trained months ago", written while `syncer sync` follows the store

EXP = "xnli_zero-shot_winter"
NOTE = "Zero-shot cross-lingual transfer, trained in winter 2023/24"
# name, start (ms after T0 = 2023-11-14), final status, duration (ms), tags, Aim's duration text
CRAFTED = [
    ("mbert-finetune", 123, "FINISHED", 90 * 60_000, {"team": "nlp"}, "1hrs 30min"),
    ("deleted-run", 20 * DAY + 7, "FINISHED", 60_000, {}, None),
    ("xlmr-failed", 35 * DAY + 456, "FAILED", 45_250, {"team": "nlp"}, "45sec 250ms"),
    ("xlmr-killed", 70 * DAY + 789, "KILLED", 2 * DAY + 3 * 3_600_000, {}, "2day 3hrs"),
    ("sweep", 105 * DAY + 1, "FINISHED", 12 * 60_000, {"sweep": "lr"}, "12min"),
    ("sweep-fold-1", 105 * DAY + 5_001, "FINISHED", 6 * 60_000, {}, "6min"),  # nested under "sweep"
    ("still-running", 140 * DAY + 999, "RUNNING", None, {"team": "nlp"}, None),
]


def write_crafted(uri: str, between) -> dict:
    """Phase 1: every run created RUNNING with half its points; `between()`; phase 2: the rest of
    the points, final statuses and end times, a late tag, a deletion."""
    from mlflow.entities import Param

    client = client_for(uri)
    exp_id = client.create_experiment(EXP, tags={"mlflow.note.content": NOTE, "owner": "nlp-team"})
    runs = {}
    for name, offset, status, duration, tags, shown in CRAFTED:
        start = T0 + offset
        t = dict(tags)
        if name == "sweep-fold-1":
            t["mlflow.parentRunId"] = runs["sweep"]["run_id"]
        rid = client.create_run(exp_id, run_name=name, start_time=start, tags=t).info.run_id
        client.log_batch(
            rid, params=[Param("learning_rate", "5e-05"), Param("_name_or_path", "bert-base-multilingual-cased")]
        )
        acc = [(s, 0.3 + s / 50, start + 60_000 * s + 17) for s in range(10)]
        loss = [(s, 1.1 - s / 20, start + 60_000 * s + 18) for s in range(10)]
        log_points(client, rid, "eval_de_accuracy", acc[:5])
        log_points(client, rid, "eval_de_loss", loss[:5])
        runs[name] = dict(
            run_id=rid,
            start=start,
            status=status,
            end=None if duration is None else start + duration,
            tags=dict(tags),
            shown=shown,
            deleted=False,
            acc=acc,
            loss=loss,
        )
    between()
    for r in runs.values():
        log_points(client, r["run_id"], "eval_de_accuracy", r["acc"][5:])
        log_points(client, r["run_id"], "eval_de_loss", r["loss"][5:])
        if r["status"] != "RUNNING":
            client.set_terminated(r["run_id"], r["status"], end_time=r["end"])
    client.set_tag(runs["mbert-finetune"]["run_id"], "stage", "final")
    runs["mbert-finetune"]["tags"]["stage"] = "final"
    client.delete_run(runs["deleted-run"]["run_id"])
    runs["deleted-run"]["deleted"] = True
    return {"experiment_id": exp_id, "runs": runs}


def round_events(log: Path) -> list[dict]:
    """The "round" events of `syncer sync --log-format json --log-level debug`: one at the end of every round."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if doc.get("event") == "round":
                out.append(doc["round"])
    return out


def wait_rounds(log: Path, proc: subprocess.Popen, n: int = 2, timeout: float = 180) -> list[dict]:
    """Until `syncer sync` has ended n more rounds: the last of them started after everything written
    before this call. (The health file cannot tell: it is also touched after each run within a round.)"""
    want, deadline = len(round_events(log)) + n, time.monotonic() + timeout
    while len(rounds := round_events(log)) < want:
        if proc.poll() is not None:
            raise AssertionError(f"syncer sync exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"syncer sync did not end {n} rounds within {timeout} s")
        time.sleep(0.1)
    return rounds


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    """The crafted store, written while `syncer sync` follows it into `live` (started before the store
    exists), then backfilled into `backfilled` as if it had been written months ago."""
    d = tmp_path_factory.mktemp("crafted")
    store, live, health, log = d / "mlruns", d / "live", d / "health", d / "sync.log"
    proc = subprocess.Popen(
        syncer_cmd(
            "sync",
            "--mlflow-tracking-uri",
            str(store),
            "--aim-repo",
            str(live),
            "--interval",
            "1",
            "--health-file",
            str(health),
            "--log-format",
            "json",
            "--log-level",
            "debug",
        ),
        cwd=ROOT,
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    problem, phase1 = None, []
    try:

        def between():
            nonlocal problem, phase1
            try:
                phase1 = wait_rounds(log, proc)
            except AssertionError as e:
                problem = f"phase 1: {e}"

        logged = write_crafted(str(store), between)
        if problem is None:
            try:
                wait_rounds(log, proc)
            except AssertionError as e:
                problem = f"phase 2: {e}"
        if problem is None and not health.exists():
            problem = "no health file after good rounds"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
    backfilled = d / "backfilled"
    run_syncer("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(backfilled), check=True)
    return {
        **logged,
        "store": store,
        "live": live,
        "backfilled": backfilled,
        "sync_rc": rc,
        "sync_log": log,
        "problem": problem,
        "phase1_rounds": phase1,
        "rounds": round_events(log),
    }


@pytest.fixture(scope="module")
def crafted_web(crafted):
    with aim_up(crafted["backfilled"], crafted["backfilled"].parent / "aim-up-backfilled.log") as web:
        yield web


def hashes_of(sdk: dict, runs: dict) -> dict:
    return {name: sdk[r["run_id"]]["hash"] for name, r in runs.items()}


def test_times_status_labels_nesting_archive_order_in_sdk_and_web_api(crafted, crafted_web):
    web, runs = crafted_web, crafted["runs"]
    sdk = read_aim(crafted["backfilled"])
    assert set(sdk) == {r["run_id"] for r in runs.values()}
    h = hashes_of(sdk, runs)

    for name, r in runs.items():
        s, info = sdk[r["run_id"]], web.info(h[name])
        p = info["props"]
        for where, created, ended, active, archived in (
            ("sdk", s["created_at"], s["end_time"], s["active"], s["archived"]),
            ("web", p["creation_time"], p["end_time"], p["active"], p["archived"]),
        ):
            assert round(created * 1000) == r["start"], (name, where)
            assert (None if ended is None else round(ended * 1000)) == r["end"], (name, where)
            assert active is (r["status"] == "RUNNING"), (name, where)
            assert archived is r["deleted"], (name, where)
        assert p["name"] == name and p["experiment"]["name"] == EXP
        assert info["params"]["mlflow"]["status"] == r["status"]
        labels = sorted(f"{k}={v}" for k, v in r["tags"].items())
        assert sorted(t["name"] for t in p["tags"]) == labels == s["labels"], name
        assert info["params"]["tags"] == r["tags"]

    # run.mlflow.status is searchable; archived runs stay out of default searches
    for status in ("FINISHED", "FAILED", "KILLED", "RUNNING"):
        want = {h[n] for n, r in runs.items() if r["status"] == status and not r["deleted"]}
        assert set(web.runs(f'run.mlflow.status == "{status}"')) == want, status
    assert list(web.runs('run.mlflow.status == "FAILED"')) == [h["xlmr-failed"]]
    assert list(web.runs("run.archived == True")) == [h["deleted-run"]]
    assert h["deleted-run"] not in web.runs()
    kept = web.metrics('metric.name == "accuracy" and run.archived == True')  # archived, its data kept
    assert list(kept) == [h["deleted-run"]]
    assert kept[h["deleted-run"]]["traces"][0]["values"] == [v for _, v, _ in runs["deleted-run"]["acc"]]
    points = web.metrics('metric.name == "accuracy" and metric.context.lang == "de"')
    assert set(points) == {h[n] for n in runs if n != "deleted-run"}
    for r in points.values():
        name = r["props"]["name"]
        (t,) = r["traces"]
        assert t["context"] == {"subset": "eval", "dataset": "de", "lang": "de"}
        assert t["iters"] == [float(s) for s, _, _ in runs[name]["acc"]]
        assert [round(x * 1000) for x in t["timestamps"]] == [ts for _, _, ts in runs[name]["acc"]]
    assert list(web.runs('run.mlflow.status == "FINISHED" and run.archived == True')) == [h["deleted-run"]]

    # nesting
    assert list(web.runs('run.mlflow.parent_run_name == "sweep"')) == [h["sweep-fold-1"]]
    child = web.info(h["sweep-fold-1"])
    assert child["params"]["mlflow"]["parent_run_id"] == runs["sweep"]["run_id"]
    assert "(child of 'sweep')" in (child["props"]["description"] or "")

    # default order: MLflow start time, newest first
    visible = [n for n, r in runs.items() if not r["deleted"]]
    assert list(web.runs()) == [h[n] for n in sorted(visible, key=lambda n: runs[n]["start"], reverse=True)]

    # the experiment carries MLflow's description
    exp = {e["name"]: e for e in web.json("/api/experiments/")}[EXP]
    assert exp["description"] == NOTE
    assert {r["props"]["experiment"]["description"] for r in web.runs().values()} == {NOTE}


def test_no_tag_labels_keeps_tags_out_of_the_tags_column(crafted, tmp_path):
    repo = tmp_path / "nolabels"
    run_syncer(
        "backfill",
        "--mlflow-tracking-uri",
        str(crafted["store"]),
        "--aim-repo",
        str(repo),
        "--no-tag-labels",
        check=True,
    )
    runs = crafted["runs"]
    sdk = read_aim(repo)
    assert set(sdk) == {r["run_id"] for r in runs.values()}
    assert [r["labels"] for r in sdk.values()] == [[]] * len(runs)
    tagged = sdk[runs["mbert-finetune"]["run_id"]]
    assert tagged["params"]["tags"] == {"team": "nlp", "stage": "final"}  # the `tags` param stays
    with aim_up(repo, tmp_path / "aim-up.log") as web:
        for r in sdk.values():
            assert web.info(r["hash"])["props"]["tags"] == [], r["name"]
        assert web.info(tagged["hash"])["params"]["tags"] == {"team": "nlp", "stage": "final"}
        assert not web.json("/api/tags/")  # no Aim tags were created at all


def comparable(info: dict) -> dict:
    """A run's info minus what Aim generates per repo (the experiment's and the tags' uuids), tags sorted."""
    info = json.loads(json.dumps(info))
    info["props"]["experiment"].pop("id")
    for t in info["props"]["tags"]:
        t.pop("id")
    # Aim lists a run's tags in the order they were attached: live, a tag MLflow got later comes later
    info["props"]["tags"].sort(key=lambda t: t["name"])
    return info


def test_live_sync_and_backfill_show_the_same(crafted, crafted_web, tmp_path):
    assert crafted["problem"] is None, f"{crafted['problem']}\n{crafted['sync_log'].read_text()[-3000:]}"
    assert crafted["sync_rc"] == 0, crafted["sync_log"].read_text()[-3000:]
    # live, every point was sent once: half of them while all runs were RUNNING, the rest later
    assert sum(r["points"] for r in crafted["phase1_rounds"]) == len(CRAFTED) * 2 * 5
    assert sum(r["points"] for r in crafted["rounds"]) == len(CRAFTED) * 2 * 10
    assert not [r["errors"] for r in crafted["rounds"] if r["errors"]]
    back = crafted_web
    everything = "run.archived == True or run.archived == False"
    with aim_up(crafted["live"], tmp_path / "aim-up-live.log") as live:
        for q in (
            "",
            everything,
            'run.mlflow.status == "FAILED"',
            "run.archived == True",
            'run.mlflow.parent_run_name == "sweep"',
        ):
            assert list(live.runs(q)) == list(back.runs(q)), q
        hashes = list(back.runs(everything))
        assert len(hashes) == len(CRAFTED)
        for h in hashes:
            assert comparable(live.info(h)) == comparable(back.info(h)), h
        for q in ('metric.name != ""', 'metric.name != "" and run.archived == True'):
            got, want = live.metrics(q), back.metrics(q)
            assert list(got) == list(want) and len(want) == (6 if "True" not in q else 1), q
            for h in want:
                assert got[h]["traces"] == want[h]["traces"], (q, h)
                assert got[h]["params"] == want[h]["params"], (q, h)
        assert [e["description"] for e in live.json("/api/experiments/") if e["name"] == EXP] == [NOTE]


@needs_chromium
def test_runs_table_shows_mlflow_dates_and_durations_in_chromium(crafted, crafted_web, chrome, tmp_path):
    runs = crafted["runs"]
    visible = sorted((n for n, r in runs.items() if not r["deleted"]), key=lambda n: runs[n]["start"], reverse=True)
    chrome.open(
        crafted_web.base + "/runs",
        f"document.querySelectorAll('.Table__cell.date[class*=\"rowKey-\"]').length >= {len(visible)}",
    )
    table = chrome.table()
    assert [row["run"] for row in table] == visible  # newest MLflow start first; the deleted run hidden
    for row in table:
        r = runs[row["run"]]
        start = datetime.fromtimestamp(r["start"] / 1000, UTC)
        assert row["date"] == start.strftime("%H:%M:%S · %d %b, %y"), row  # MLflow's start: "22:13:20 · 14 Nov, 23"
        if r["shown"]:
            assert row["duration"] == r["shown"], row
        assert row["experiment"] == EXP
    running = next(row for row in table if row["run"] == "still-running")
    assert "day" in running["duration"]  # still running: counted up to now, from a start months ago
    text = chrome.js("document.body.innerText")
    assert "stage=final" in text and "team=nlp" in text and "sweep=lr" in text  # tags as labels
    png = chrome.screenshot(tmp_path / "runs-table.png")
    keep_screenshot(png, "runs-table.png")
