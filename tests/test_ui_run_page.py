"""A synced run's page in Aim's UI, next to a run Aim tracked itself, in headless Chromium (`aim up`):
the Overview shows the git commit, the CLI arguments and the packages where the Aim-tracked run shows
them, and opens on the hyperparameters (the artifacts listing is under `mlflow`); the Notes tab shows
MLflow's note; the System tab shows the system metrics Aim has names for and the Metrics tab no raw
`__system__...` name. Two screenshots: the synced run's Overview and the Aim-tracked run's; with
UPDATE_UI_SCREENSHOTS=1 they are also copied to docs/run-page-synced.png and docs/run-page-aim.png.
"""

from __future__ import annotations

import pytest

from conftest import run_syncer, store_uri
from run_page_runs import NOTE, aim_tracked_run, make_checkout, mlflow_runs
from test_ui import Chrome, aim_up, keep_screenshot, needs_chromium

pytestmark = pytest.mark.slow

OVERVIEW_CARDS = ("CLI Arguments", "Packages", "Git Info")  # aim_ui RunOverviewTab's cards for __system_params


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from syncer.aim import fresh_repo, index_missing

    tmp = tmp_path_factory.mktemp("ui-run-page")
    uri = store_uri("file", tmp)
    checkout = make_checkout(tmp / "checkout")
    ids = mlflow_runs(checkout, uri)
    repo = tmp / "aim"
    run_syncer("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), check=True)
    aim_hash = aim_tracked_run(checkout, repo)
    index_missing(repo)
    r = fresh_repo(repo)
    runs = {r.get_run(h).name: r.get_run(h) for h in r.list_all_runs()}
    synced = runs["sklearn"]
    out = {
        "synced": synced.hash,
        "aim": aim_hash,
        "commit": synced["__system_params"]["git_info"]["commit"]["hash"],
        "aim_commit": runs["aim-tracked"]["__system_params"]["git_info"]["commit"]["hash"],
        "ids": ids,
    }
    with aim_up(repo, tmp / "aim-up.log") as web:
        out["web"] = web
        yield out


def text_has(*parts: str) -> str:
    """A JS condition: the page's text holds every part."""
    return " && ".join(f"document.body.innerText.includes({p!r})" for p in parts)


@needs_chromium
def test_synced_run_page_as_full_as_aims_own(page, tmp_path):
    chrome = Chrome(width=1400, height=2000)  # tall enough for the Overview down to its Git Info card
    try:
        check_pages(chrome, page, tmp_path)
    finally:
        chrome.close()


def check_pages(chrome: Chrome, page: dict, tmp_path) -> None:
    base = page["web"].base
    # the synced run: git commit (MLflow's full hash), CLI arguments and packages in the Overview
    chrome.open(f"{base}/runs/{page['synced']}", text_has(page["commit"], *OVERVIEW_CARDS))
    text = chrome.js("document.body.innerText")
    assert "train.py" in text and "scikit-learn" in text
    synced_png = chrome.screenshot(tmp_path / "run-page-synced.png")
    first = text[text.index("Parameters") :] if "Parameters" in text else text
    assert "artifacts" not in first.split("mlflow")[0], "the artifacts listing comes before the hyperparameters"
    # the run Aim tracked itself, in the same checkout: the same cards
    chrome.open(f"{base}/runs/{page['aim']}", text_has(page["aim_commit"], *OVERVIEW_CARDS))
    aim_png = chrome.screenshot(tmp_path / "run-page-aim.png")
    keep_screenshot(synced_png, "run-page-synced.png")
    keep_screenshot(aim_png, "run-page-aim.png")

    # MLflow's note in the Notes tab
    chrome.open(f"{base}/runs/{page['synced']}/notes", text_has(NOTE.splitlines()[0]))
    # the system metrics Aim has names for on the System tab; the others readable in the Metrics tab
    chrome.open(f"{base}/runs/{page['synced']}/system", text_has("CPU (%)", "Memory (%)", "Disk (%)"))
    chrome.open(
        f"{base}/runs/{page['synced']}/metrics",
        text_has("system/disk_usage_megabytes", "system/network_receive_megabytes", "loss"),
    )
    assert "__system__" not in chrome.js("document.body.innerText")
