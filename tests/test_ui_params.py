"""Aim's params explorer over a training sweep: `make demo`'s grid (both techniques x both tiny models
x two learning rates x two batch sizes, read from the Makefile's DEMO_TRAIN), trained offline,
converted by `syncer backfill` (the CLI, as a subprocess), served by `aim up`, and opened in headless
Chromium with the sweep's params and the final accuracies pre-selected (screenshot).

By default the runs are shortened (fewer pairs, fewer steps: the same grid, in seconds); with
UPDATE_UI_SCREENSHOTS=1 they are exactly `make demo`'s and the screenshot is also copied to
docs/params-explorer.png (the committed one was made that way).
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

from conftest import ROOT, client_for, run_syncer
from test_ui import CHROMIUM, Chrome, aim64, aim_up, keep_screenshot, needs_chromium

pytestmark = pytest.mark.slow

TECHNIQUES = ("fine-tune", "feature-extraction")
SHORTER = ["--num-train-samples", "60", "--num-train-epochs", "2", "--eval-steps", "5"]  # later flags win
# the params explorer's columns, left to right: the sweep's axes, then the final accuracy in two languages
PARAMS = ("hparams.learning_rate", "hparams.per_device_train_batch_size", "hparams.model_name", "tags.technique")
LANGS = ("en", "de")


def demo_train_args(logs: Path) -> list[str]:
    """DEMO_TRAIN as the Makefile has it, with LOGS=logs."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    p = subprocess.run(
        ["make", "-s", "-f", "Makefile", "-f", "-", "_print_demo_train", f"LOGS={logs}"],
        input="_print_demo_train:\n\t@echo $(DEMO_TRAIN)\n",
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    return shlex.split(p.stdout)


def flag_values(args: list[str], flag: str) -> list[str]:
    i = args.index(flag) + 1
    return list(itertools.takewhile(lambda a: not a.startswith("--"), args[i:]))


def params_explorer_url(params, metric: str, contexts: list[dict], color: list[str]) -> str:
    """The params explorer's URL as the UI writes it (utils/app/updateURL.ts): `select` holds the chosen
    columns (params by path; metrics by name and context, their key and label derived by the UI,
    utils/app/getCompatibleSelectConfig.ts) and `grouping` the colour grouping, each aim64-encoded."""
    options = [{"type": "params", "label": p, "key": p, "group": "Params"} for p in params]
    options += [{"type": "metrics", "group": metric, "value": {"option_name": metric, "context": c}} for c in contexts]
    select = {"options": options, "query": "", "advancedMode": False, "advancedQuery": ""}
    grouping = {
        "color": color,
        "stroke": [],
        "chart": [],
        "reverseMode": {"color": False, "stroke": False, "chart": False},
        "isApplied": {"color": True, "stroke": True, "chart": True},
        "persistence": {"color": False, "stroke": False},
        "seed": {"color": 10, "stroke": 10},
        "paletteIndex": 0,
    }
    return "/params?" + urllib.parse.urlencode({"grouping": aim64(grouping), "select": aim64(select)})


@pytest.fixture(scope="module")
def sweep_ui(tmp_path_factory):
    logs = tmp_path_factory.mktemp("sweep-logs")
    args = demo_train_args(logs)
    if os.environ.get("UPDATE_UI_SCREENSHOTS") != "1":
        args += SHORTER
    env = {**os.environ, "MLFLOW_ALLOW_FILE_STORE": "true", "XNLI_TINY_HOME": str(logs / "tiny-models")}
    env.pop("MLFLOW_TRACKING_URI", None)
    for technique in TECHNIQUES:  # as the Makefile's $(LOGS)/.trained recipe does
        p = subprocess.run(
            [sys.executable, "-m", "training", technique, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert p.returncode == 0, f"training {technique} failed:\n{p.stdout}\n{p.stderr[-3000:]}"
    store = logs / "mlruns"
    repo = tmp_path_factory.mktemp("sweep-aim") / "repo"
    run_syncer("backfill", "--mlflow-tracking-uri", str(store), "--aim-repo", str(repo), check=True)
    grid = {
        (t, m, float(lr), int(bs))
        for t in TECHNIQUES
        for m in flag_values(args, "--model-names")
        for lr in flag_values(args, "--learning-rate")
        for bs in flag_values(args, "--batch-size")
    }
    with aim_up(repo, repo.parent / "aim-up.log") as web:
        yield {"web": web, "store": store, "grid": grid}


def test_the_sweep_reaches_aim_with_its_params(sweep_ui):
    web, grid = sweep_ui["web"], sweep_ui["grid"]
    assert len(grid) >= 16  # 2 techniques x 2 models x 2 learning rates x 2 batch sizes
    runs = web.runs()
    seen = {
        (
            r["params"]["tags"]["technique"],
            r["params"]["hparams"]["model_name"],
            r["params"]["hparams"]["learning_rate"],
            r["params"]["hparams"]["per_device_train_batch_size"],
        )
        for r in runs.values()
    }
    assert len(runs) == len(grid) and seen == grid
    client = client_for(str(sweep_ui["store"]))
    for r in runs.values():
        mlrun = client.get_run(r["params"]["mlflow"]["run_id"])
        hp = r["params"]["hparams"]
        assert (
            r["props"]["name"]
            == mlrun.info.run_name
            == (f"{hp['model_name']}-lr{hp['learning_rate']:g}-bs{hp['per_device_train_batch_size']}-s73")
        )
        assert r["props"]["experiment"]["name"] == f"xnli_{r['params']['tags']['technique']}"
        assert r["params"]["tags"]["sweep_id"] == mlrun.data.tags["sweep_id"]


@pytest.fixture
def tall_chrome():
    """Tall enough for the chart and all 16 rows of the table under it."""
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (`make test-deps` installs it with apt-get when run as root)")
    c = Chrome(width=1600, height=1300)
    yield c
    c.close()


@needs_chromium
def test_params_explorer_shows_the_sweep_in_chromium(sweep_ui, tall_chrome, tmp_path):
    web, grid, chrome = sweep_ui["web"], sweep_ui["grid"], tall_chrome
    api = web.runs()
    contexts = [{"subset": "eval", "dataset": lang, "lang": lang} for lang in LANGS]
    url = params_explorer_url(PARAMS, "accuracy", contexts, color=[])
    columns = len(PARAMS) + len(LANGS)
    ready = (
        f"document.querySelectorAll('.Params__container .Line').length >= {len(grid)} && "
        f"document.querySelectorAll('.Params__container .Axis').length == {columns} && "
        f"document.querySelectorAll('.Table__cell.run[class*=\"rowKey-\"]').length >= {len(grid)}"
    )
    chrome.open(web.base + url, ready)
    assert chrome.js("document.querySelectorAll('.Params__container .Line').length") == len(grid)  # a line per run
    text = chrome.js("document.querySelector('.Params__container').innerText")
    for p in PARAMS:
        assert p in text, p
    assert 'accuracy dataset="en"' in text and 'accuracy dataset="de"' in text
    # each axis: the values the sweep took (tick labels carry the full value in their title)
    axes = chrome.js(
        "Array.from(document.querySelectorAll('.Params__container .Axis')).map(a => "
        "Array.from(a.querySelectorAll('.tick .yAxisLabel')).map(t => t.getAttribute('title')))"
    )
    lrs, bss = sorted({lr for *_, lr, _ in grid}), sorted({bs for *_, bs in grid})
    assert float(axes[0][0]) == lrs[0] and float(axes[0][-1]) == lrs[-1], axes[0]
    assert float(axes[1][0]) == bss[0] and float(axes[1][-1]) == bss[-1], axes[1]
    assert set(axes[2]) == {f'"{m}"' for _, m, _, _ in grid}, axes[2]
    assert set(axes[3]) == {f'"{t}"' for t in TECHNIQUES}, axes[3]
    # the table under the chart: every run of the sweep, by name
    table = chrome.table()
    assert sorted(row["hash"] for row in table) == sorted(api)
    assert sorted(row["run"] for row in table) == sorted(r["props"]["name"] for r in api.values())
    png = chrome.screenshot(tmp_path / "params-explorer.png")
    keep_screenshot(png, "params-explorer.png")
