"""MLflow's media and logged models, end to end with real MLflow and real Aim: a RUNNING run
logs step images for two keys (one with slashes) while `syncer backfill` (the CLI) runs twice,
then a table, matplotlib figures (png, svg), a plotly figure, a text that collides with a metric,
and a sklearn model at two steps, plus an evaluation run that scores the model; read back through
Aim's SDK: one image sequence per key with MLflow's steps, contexts and timestamps, nothing twice
after more syncs, the models under `mlflow.logged_models`, the model's metric in Aim. Then Aim's
Images explorer in headless Chromium (screenshot; UPDATE_UI_SCREENSHOTS=1 copies it to docs/)."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from conftest import T0, client_for, log_points, read_aim, run_syncer

pytestmark = pytest.mark.slow

RULES = """
[[rule]]   # eval/de/samples -> samples {subset: eval, lang: de}
pattern = '^(?P<subset>eval)/(?P<lang>[a-z]{2})/(?P<name>.+)$'

[[rule]]   # plots/confusion_matrix_de -> confusion_matrix {lang: de}
pattern = '^plots/(?P<name>confusion_matrix)_(?P<lang>[a-z]{2})$'
"""
EVAL_KEY, TRAIN_KEY = "eval/de/samples", "train_samples"
EVAL_CTX, TRAIN_CTX = (("lang", "de"), ("subset", "eval")), (("subset", "train"),)


def has_plotly() -> bool:
    try:
        import plotly  # noqa: F401
    except ImportError:
        return False
    return True


def picture(seed: int, size: int = 48):
    """A small picture that differs per step: a gradient with a moving bar."""
    import numpy as np

    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[..., 0] = np.linspace(0, 255, size, dtype=np.uint8)[None, :]
    img[..., 2] = 120
    x = (seed * 7) % size
    img[:, x : x + 6, 1] = 255
    return img


def log_image(client, run_id: str, key: str, step: int, extra: int = 0) -> int:
    ts = T0 + 60_000 * step + 17 + extra
    client.log_image(run_id, picture(step + 3 * extra), key=key, step=step, timestamp=ts, synchronous=True)
    return ts


def log_model(run_id: str, step: int) -> str:
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.arange(40, dtype=float).reshape(20, 2)
    model = LogisticRegression(C=step).fit(x, (x[:, 0] > 20).astype(int))
    with mlflow.start_run(run_id=run_id):
        info = mlflow.sklearn.log_model(
            model, name="clf", step=step, params={"C": str(step)}, pip_requirements=["scikit-learn"]
        )
        mlflow.log_metric("train_accuracy", 0.5 + step / 10, step=step, model_id=info.model_id)
    return info.model_id


def write_phase_1(uri: str) -> dict:
    import mlflow

    client = client_for(uri)
    mlflow.set_tracking_uri(uri)
    exp = client.create_experiment("media")
    run_id = client.create_run(exp, run_name="vision", start_time=T0).info.run_id
    log_points(client, run_id, "loss", [(s, 1.0 / (s + 1), T0 + 60_000 * s) for s in range(3)])
    stamps = {
        EVAL_KEY: {0: [log_image(client, run_id, EVAL_KEY, 0)], 1: [log_image(client, run_id, EVAL_KEY, 1)]},
        TRAIN_KEY: {0: [log_image(client, run_id, TRAIN_KEY, 0)]},
    }
    models = {1: log_model(run_id, 1)}
    return {"client": client, "exp": exp, "run_id": run_id, "stamps": stamps, "models": models}


def write_phase_2(logged: dict, tmp: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    client, run_id, stamps = logged["client"], logged["run_id"], logged["stamps"]
    stamps[EVAL_KEY][2] = [log_image(client, run_id, EVAL_KEY, 2), log_image(client, run_id, EVAL_KEY, 2, extra=1)]
    stamps[TRAIN_KEY][1] = [log_image(client, run_id, TRAIN_KEY, 1)]
    client.log_table(
        run_id,
        {"premise": ["Der Hund bellt", "Es regnet"], "pred": ["entailment", "neutral"], "score": [0.9, 0.4]},
        "eval/predictions.json",
    )
    fig, ax = plt.subplots(figsize=(3, 3))
    ax.imshow([[40, 3], [5, 52]], cmap="Blues")
    client.log_figure(run_id, fig, "plots/confusion_matrix_de.png")
    client.log_figure(run_id, fig, "plots/curve.svg")
    plt.close(fig)
    if has_plotly():
        import plotly.graph_objects as go

        client.log_figure(run_id, go.Figure(go.Scatter(x=[0, 1, 2], y=[1.0, 0.5, 0.33])), "plots/interactive.html")
    client.log_text(run_id, "a text named like a metric\n", "loss.txt")
    logged["models"][2] = log_model(run_id, 2)
    # an evaluation run scores the step-2 model on a dataset: a model metric the training run did not log
    ev = client.create_run(logged["exp"], run_name="evaluate", start_time=T0 + 5_000_000).info.run_id
    client.log_metric(
        ev,
        "accuracy",
        0.81,
        timestamp=T0 + 5_000_100,
        step=2,
        model_id=logged["models"][2],
        dataset_name="xnli-de",
        dataset_digest="d1",
    )
    client.set_terminated(ev, "FINISHED", end_time=T0 + 5_000_200)
    logged["eval_run"] = ev


def media_of_run(repo: Path, run_id: str) -> dict:
    """{(name, context items): {"type", "steps", "timestamps", "values"}} of every object sequence."""
    from syncer.aim import fresh_repo

    repo_ = fresh_repo(repo)
    run = next(
        repo_.get_run(h)
        for h in repo_.list_all_runs()
        if (repo_.get_run(h).get("mlflow") or {}).get("run_id") == run_id
    )
    out = {}
    types = ("aim.image", "aim.text", "aim.audio", "aim.figure")
    for name, ctx, _ in run.iter_sequence_info_by_type(types):
        for getter in (run.get_image_sequence, run.get_text_sequence, run.get_figure_sequence):
            with contextlib.suppress(Exception):
                seq = getter(name, ctx)
                if seq is None:
                    continue
                steps, (values, _epochs, timestamps) = seq.data.items_list()
                out[(name, tuple(sorted(ctx.to_dict().items())))] = {
                    "type": type(seq).__name__,
                    "steps": list(steps),
                    "timestamps": list(timestamps),
                    "values": list(values),
                }
                break
    repo_.close()
    return out


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    uri, repo, rules = str(d / "mlruns"), d / "aim", d / "rules.toml"
    rules.write_text(RULES)
    sync = ("backfill", "--mlflow-tracking-uri", uri, "--aim-repo", str(repo), "--context-map", str(rules))
    logged = write_phase_1(uri)
    first = run_syncer(*sync, check=True)
    after_first = media_of_run(repo, logged["run_id"])
    first_models = read_aim(repo)[logged["run_id"]]["params"]["mlflow"].get("logged_models")
    write_phase_2(logged, d)
    second = run_syncer(*sync, check=True)
    after_second = media_of_run(repo, logged["run_id"])
    third = run_syncer(*sync, check=True)  # nothing new
    logged["client"].set_terminated(logged["run_id"], "FINISHED", end_time=T0 + 4_000_000)
    fourth = run_syncer(*sync, check=True)  # the run ended: metadata again, media not again
    return {
        **logged,
        "uri": uri,
        "repo": repo,
        "rules": rules,
        "sync": sync,
        "outputs": (first, second, third, fourth),
        "after_first": after_first,
        "after_second": after_second,
        "first_models": first_models,
    }


def test_each_step_image_key_is_one_image_sequence_with_mlflows_steps_contexts_and_timestamps(synced):
    media = media_of_run(synced["repo"], synced["run_id"])
    images = {k: v for k, v in media.items() if v["type"] == "Images" and k[0] == "samples"}
    assert set(images) == {("samples", EVAL_CTX), ("samples", TRAIN_CTX)}
    for key, ctx in ((EVAL_KEY, EVAL_CTX), (TRAIN_KEY, TRAIN_CTX)):
        seq, logged = images[("samples", ctx)], synced["stamps"][key]
        assert seq["steps"] == sorted(logged)
        assert [round(t * 1000) for t in seq["timestamps"]] == [max(logged[s]) for s in sorted(logged)]
    # two images logged at one step: both there, as a list, in logged order
    at2 = images[("samples", EVAL_CTX)]["values"][2]
    assert isinstance(at2, list) and len(at2) == 2 and all(i.caption == EVAL_KEY for i in at2)
    first = images[("samples", EVAL_CTX)]["values"][0]
    first = first[0] if isinstance(first, list) else first
    assert first.to_pil_image().size == (48, 48)
    assert not any("images/" in name or name.endswith(".webp") for name, _ in media)  # no twin, no file names


def test_other_media_land_named_by_the_rules_tables_as_text_figures_as_images_and_figures(synced):
    media = media_of_run(synced["repo"], synced["run_id"])
    cm = media[("confusion_matrix", (("lang", "de"),))]
    assert cm["type"] == "Images" and cm["steps"] == [0]
    svg = media[("plots/curve", ())]["values"][0]
    svg = svg[0] if isinstance(svg, list) else svg
    assert svg.format == "svg+xml" and bytes(svg.storage["data"].load()).lstrip().startswith(b"<?xml")
    table = media[("predictions", (("subset", "eval"),))]
    assert table["type"] == "Texts"
    text = table["values"][0][0].data if isinstance(table["values"][0], list) else table["values"][0].data
    assert "premise" in text.splitlines()[0] and "Der Hund bellt" in text and "(2 rows, 3 columns)" in text
    if has_plotly():
        fig = media[("plots/interactive", ())]
        assert fig["type"] == "Figures"
        value = fig["values"][0][0] if isinstance(fig["values"][0], list) else fig["values"][0]
        assert list(value.to_plotly_figure().data[0].y) == [1.0, 0.5, 0.33]
    # a text whose mapped name is a metric's keeps its MLflow name; the metric is untouched
    assert media[("loss.txt", (("kind", "text"),))]["type"] == "Texts"
    run = read_aim(synced["repo"])[synced["run_id"]]
    assert run["metrics"][("loss", ())]["steps"] == [0, 1, 2]


def test_the_artifacts_param_says_what_each_file_became(synced):
    listed = {a["path"]: a for a in read_aim(synced["repo"])[synced["run_id"]]["params"]["artifacts"]}
    twins = [a for p, a in listed.items() if p.endswith("+compressed.webp")]
    assert len(twins) == 6 and all(a["copied_as"] is None and "compressed" in a["note"] for a in twins)
    full = [a for p, a in listed.items() if p.startswith("images/") and p.endswith(".png")]
    assert len(full) == 6 and {(a["name"], json.dumps(a["context"], sort_keys=True)) for a in full} == {
        ("samples", '{"lang": "de", "subset": "eval"}'),
        ("samples", '{"subset": "train"}'),
    }
    assert listed["eval/predictions.json"]["copied_as"] == "table"
    assert listed["plots/curve.svg"]["copied_as"] == "image"
    if has_plotly():
        assert listed["plots/interactive.html"]["copied_as"] == "figure"


def test_nothing_is_copied_twice_by_later_syncs(synced):
    first, second, third, fourth = synced["outputs"]
    assert " 0 artifacts" not in first.stdout and " 0 artifacts" not in second.stdout
    assert " 0 artifacts " in third.stdout and " 0 artifacts " in fourth.stdout

    def shape(media: dict) -> dict:
        return {
            k: (v["type"], v["steps"], v["timestamps"], [len(x) if isinstance(x, list) else 1 for x in v["values"]])
            for k, v in media.items()
        }

    assert shape(media_of_run(synced["repo"], synced["run_id"])) == shape(synced["after_second"])
    # the first sync, while the run was RUNNING, had only what was logged by then
    early = shape(synced["after_first"])
    assert early[("samples", EVAL_CTX)][1] == [0, 1] and early[("samples", TRAIN_CTX)][1] == [0]
    assert set(early) == {("samples", EVAL_CTX), ("samples", TRAIN_CTX)}


def test_logged_models_land_under_mlflow_logged_models_and_their_metrics_in_aim(synced):
    run = read_aim(synced["repo"])[synced["run_id"]]
    models = run["params"]["mlflow"]["logged_models"]
    assert [(m["name"], m["step"], m["model_id"]) for m in models] == [
        ("clf", 1, synced["models"][1]),
        ("clf", 2, synced["models"][2]),
    ]
    assert [m["step"] for m in synced["first_models"]] == [1]  # the step-2 model arrived with the next sync
    for m in models:
        assert m["status"] == "READY" and "sklearn" in m["flavors"] and m["copied"] is False
        assert m["params"] == {"C": m["step"]}  # typed like the run's params
        assert m["artifact_location"].endswith(f"{m['model_id']}/artifacts")
        keys = {(x["key"], x["dataset_name"]) for x in m["metrics"]}
        assert ("train_accuracy", None) in keys
    assert ("accuracy", "xnli-de") in {(x["key"], x["dataset_name"]) for x in models[1]["metrics"]}
    # the evaluation run's score of the model: in the training run, with the model and dataset as context
    series = run["metrics"][("accuracy", (("dataset", "xnli-de"), ("model", "clf")))]
    assert series["steps"] == [2] and series["values"] == [0.81] and series["timestamps"] == [(T0 + 5_000_100) / 1000]
    # the run's own model-linked metric arrives once, as the run's metric
    assert run["metrics"][("accuracy", (("subset", "train"),))]["steps"] == [1, 2]
    assert not any(dict(ctx).get("model") and name != "accuracy" for name, ctx in run["metrics"])


def test_aim_search_finds_runs_by_their_logged_models(synced):
    from syncer.aim import fresh_repo

    repo = fresh_repo(synced["repo"])
    try:
        q = 'any(m["name"] == "clf" and "sklearn" in m["flavors"] for m in run.mlflow.logged_models)'
        found = [r.run.get("mlflow")["run_id"] for r in repo.query_runs(q, report_mode=0).iter_runs()]
    finally:
        repo.close()
    assert found == [synced["run_id"]]


# ------------------------------------------------------------------------------------------------
# Aim's Images explorer, in headless Chromium


def images_explorer_url(query: str, rows: list[str]) -> str:
    """The Images explorer's URL as the UI writes it: an advanced query, images grouped in rows."""
    import urllib.parse

    from test_ui import aim64

    select = {"options": [], "query": "", "advancedMode": True, "advancedQuery": query}
    grouping = {"row": rows, "reverseMode": {"row": False}, "isApplied": {"row": True}}
    return "/images?" + urllib.parse.urlencode({"select": aim64(select), "grouping": aim64(grouping)})


def test_images_explorer_scrubs_through_a_synced_step_image_sequence(synced, tmp_path):
    from test_ui import CHROMIUM, Chrome, aim_up, keep_screenshot

    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (`make test-deps` installs it with apt-get when run as root)")
    with aim_up(synced["repo"], tmp_path / "aim-up.log") as web:
        found = web.stream(
            "images",
            'images.name == "samples"',
            record_range="0:3",
            index_range="0:2",
            record_density="50",
            index_density="5",
        )
        (run,) = found.values()
        traces = {json.dumps(t["context"], sort_keys=True): t for t in run["traces"]}
        assert set(traces) == {'{"lang": "de", "subset": "eval"}', '{"subset": "train"}'}
        assert [int(s) for s in traces['{"lang": "de", "subset": "eval"}']["iters"]] == [0, 1, 2]
        chrome = Chrome(width=1400, height=900)
        try:
            chrome.open(
                web.base + images_explorer_url('images.name == "samples"', ["context.subset"]),
                "document.querySelectorAll('.ImageBox img').length >= 6",
            )
            assert chrome.js("document.querySelectorAll('.ImageBox img').length") == 6  # 3 + 1 eval, 2 train
            text = " ".join(chrome.js("document.body.innerText").split())
            assert 'images.context.subset = "eval" eval/de/samples eval/de/samples eval/de/samples' in text
            assert 'images.context.subset = "train" train_samples train_samples' in text
            assert "Steps:0 - 2" in text
            png = chrome.screenshot(tmp_path / "images-explorer.png")
        finally:
            chrome.close()
    keep_screenshot(png, "images-explorer.png")
    assert os.path.getsize(png) > 10_000
