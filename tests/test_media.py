"""The pure parts of media: MLflow's step-image file names (both spellings), what each listed file
is, where it lands in Aim (rules, collisions), tables as text, plotly figures, SVG; and the
regular-file reader the conversions go through."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from syncer.mapping import ContextMapper, MappedMetric, Rule
from syncer.mapping.media_names import Media, media_name, media_of, parse_step_image, targets
from syncer.media.figures import NotAFigure, figure_from_html, figure_from_json, plotly_available
from syncer.media.images import svg_image
from syncer.media.tables import table_text
from syncer.sources.local_artifacts import read_regular

UID = "c89b4b0b-b5b4-462d-99f4-af0a50cfbf19"
needs_plotly = pytest.mark.skipif(not plotly_available(), reason="plotly is not installed (pip install plotly)")


@pytest.mark.parametrize(
    "path, key, step, ts, compressed",
    [
        (
            f"images/eval~de~samples+step+3+timestamp+1796195231630+{UID}.png",
            "eval/de/samples",
            3,
            1796195231630,
            False,
        ),
        (
            f"images/eval~de~samples+step+3+timestamp+1796195231630+{UID}+compressed.webp",
            "eval/de/samples",
            3,
            1796195231630,
            True,
        ),
        (f"images/dogs%step%12%timestamp%1700000000000%{UID}.png", "dogs", 12, 1700000000000, False),  # MLflow 2.x
        (f"images/val#cats%step%0%timestamp%1700000000001%{UID}%compressed.webp", "val/cats", 0, 1700000000001, True),
        (f"images/a b.c-d_e+step+-1+timestamp+5+{UID}.png", "a b.c-d_e", -1, 5, False),
    ],
)
def test_step_image_names_of_both_mlflow_spellings_give_key_step_and_timestamp(path, key, step, ts, compressed):
    si = parse_step_image(path)
    assert si is not None
    assert (si.key, si.step, si.timestamp, si.uid, si.compressed) == (key, step, ts, UID, compressed)


@pytest.mark.parametrize(
    "path",
    [
        "images/dogs.png",
        "plots/images/x+step+1+timestamp+2+u.png",
        f"images/sub/x+step+1+timestamp+2+{UID}.png",
        f"images/x+step+1+timestamp+2+{UID}.jpg",
    ],
)
def test_other_files_are_not_step_images(path):
    assert parse_step_image(path) is None


def test_compressed_twins_and_table_cells_are_left_out_and_each_file_gets_a_kind():
    png = f"images/k+step+1+timestamp+10+{UID}.png"
    lone_webp = f"images/k+step+2+timestamp+11+{UID}+compressed.webp"  # its png is missing: it is the image
    paths = [
        png,
        png[:-4] + "+compressed.webp",
        lone_webp,
        "table_images/preds/1.png",
        "preds.json",
        "notes.json",
        "fig.svg",
        "fig.html",
        "song.wav",
        "model.bin",
        "confusion_matrix_de.png",
    ]
    tags = {"mlflow.loggedArtifacts": json.dumps([{"path": "preds.json", "type": "table"}])}
    media, left = media_of(paths, tags)
    assert set(left) == {png[:-4] + "+compressed.webp", "table_images/preds/1.png"}
    kinds = {p: m.kind for p, m in media.items()}
    assert kinds == {
        png: "image",
        lone_webp: "image",
        "preds.json": "table",
        "notes.json": "text",
        "fig.svg": "image",
        "fig.html": "figure",
        "song.wav": "audio",
        "confusion_matrix_de.png": "image",
    }
    assert media[png].owner == "k" and media[png].step == 1 and media[png].timestamp == 10
    assert media["confusion_matrix_de.png"].key == "confusion_matrix_de" == media_name("confusion_matrix_de.png")


def test_a_json_tag_that_is_not_a_list_names_no_table():
    media, _ = media_of(["t.json"], {"mlflow.loggedArtifacts": "{broken"})
    assert media["t.json"].kind == "text"


def test_media_names_go_through_the_metric_key_rules():
    rules = [
        Rule(re.compile(r"^(?P<subset>eval)/(?P<lang>[a-z]{2})/(?P<name>.+)$")),
        Rule(re.compile(r"^(?P<name>confusion_matrix)_(?P<lang>[a-z]{2})$")),
    ]
    mapper = ContextMapper(rules).for_run([])
    media = [
        Media(f"images/eval~de~samples+step+1+timestamp+1+{UID}.png", "image", "eval/de/samples", 1, 1),
        Media("confusion_matrix_de.png", "image", "confusion_matrix_de.png"),
        Media("eval/report.txt", "text", "eval/report.txt"),
    ]
    got = targets(media, mapper, [])
    eval_samples = got["eval/de/samples"]
    assert (eval_samples.name, eval_samples.context) == ("samples", {"subset": "eval", "lang": "de"})
    assert (got["confusion_matrix_de.png"].name, got["confusion_matrix_de.png"].context) == (
        "confusion_matrix",
        {"lang": "de"},
    )
    assert (got["eval/report.txt"].name, got["eval/report.txt"].context) == ("report", {"subset": "eval"})


def test_a_medium_never_lands_on_a_metric_or_on_another_medium():
    mapper = ContextMapper().for_run(["loss"])
    media = [Media("loss.txt", "text", "loss.txt"), Media("a.png", "image", "a.png"), Media("a.txt", "text", "a.txt")]
    got = targets(media, mapper, [MappedMetric("loss", {})])
    assert (got["loss.txt"].name, got["loss.txt"].context, got["loss.txt"].collided) == (
        "loss.txt",
        {"kind": "text"},
        True,
    )
    assert (got["a.png"].name, got["a.png"].context) == ("a", {})  # the first by name keeps it
    assert (got["a.txt"].name, got["a.txt"].context) == ("a.txt", {"kind": "text"})


def test_a_medium_already_in_aim_keeps_its_sequence_when_a_newcomer_collides():
    mapper = ContextMapper().for_run([])
    media = [Media("a.png", "image", "a.png"), Media("a.txt", "text", "a.txt")]
    got = targets(media, mapper, [], first={"a.txt"})
    assert (got["a.txt"].name, got["a.png"].name) == ("a", "a.png")


def test_a_logged_table_reads_as_an_aligned_text_table():
    doc = {
        "columns": ["inputs", "outputs", "score", "image"],
        "data": [
            [
                "What is MLflow?",
                "MLflow is …",
                0.5,
                {"type": "image", "filepath": "table_images/t/1.png", "compressed_filepath": "table_images/t/1.webp"},
            ],
            ["x" * 100, None, 1, None],
        ],
    }
    text = table_text(json.dumps(doc).encode())
    lines = text.splitlines()
    assert lines[0].split(" | ")[0].strip() == "inputs" and "score" in lines[0]
    assert set(lines[1]) <= {"-", "+"}
    assert "[image table_images/t/1.png]" in lines[2] and "0.5" in lines[2]
    assert "x" * 59 + "…" in lines[3]
    assert lines[-1] == "(2 rows, 4 columns)"
    assert len({line.index("|") for line in lines[:1] + lines[2:4]}) == 1  # columns aligned


def test_a_json_that_is_not_a_table_is_refused():
    with pytest.raises(ValueError):
        table_text(b'{"a": 1}')


@needs_plotly
def test_plotly_html_and_json_become_aim_figures_with_the_same_data(tmp_path):
    import plotly.graph_objects as go

    fig = go.Figure(go.Scatter(x=[1, 2, 3], y=[4, 1, 2], name="loss"), layout={"title": {"text": "t"}})
    fig.write_html(tmp_path / "f.html", include_plotlyjs="cdn", auto_open=False)
    from_html = figure_from_html((tmp_path / "f.html").read_bytes())
    from_json = figure_from_json(fig.to_json().encode())
    for aim_fig in (from_html, from_json):
        back = aim_fig.to_plotly_figure()
        assert list(back.data[0].x) == [1, 2, 3] and list(back.data[0].y) == [4, 1, 2]
        assert back.layout.title.text == "t"


@needs_plotly
@pytest.mark.parametrize("content", [b"<html><body>hello</body></html>", b'{"data": 3}', b'{"config": {}}'])
def test_files_that_only_look_like_figures_are_not_converted(content):
    with pytest.raises((NotAFigure, ValueError)):
        (figure_from_html if content.startswith(b"<") else figure_from_json)(content)


def test_an_svg_stays_vector_with_its_size_in_pixels():
    svg = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="460.8pt" height="345.6pt" viewBox="0 0 460.8 345.6">'
        b'<rect width="10" height="10"/></svg>'
    )
    img = svg_image(svg, "fig.svg")
    assert img.storage["format"] == "svg+xml" and bytes(img.storage["data"].load()) == svg
    assert (img.storage["width"], img.storage["height"]) == (614, 461)
    with pytest.raises(ValueError):
        svg_image(b"<html/>", "x.svg")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_the_reader_refuses_a_fifo_at_once_and_a_file_over_the_limit(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # nobody writes: a blocking open would hang forever
    with pytest.raises(OSError, match="FIFO"):
        read_regular(fifo)
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 100)
    assert read_regular(big, 100) == b"x" * 100
    with pytest.raises(OSError, match="larger"):
        read_regular(big, 99)
    with pytest.raises(OSError, match="device"):
        read_regular("/dev/zero", 10)


# ------------------------------------------------------------------------------------------------
# logged models, read from each kind of store by the function the source calls


def _record(client, run_id: str):
    from syncer.sources import RunRecord

    info = client.get_run(run_id).info
    return RunRecord(
        run_id,
        info.experiment_id,
        info.run_name,
        info.status,
        info.start_time,
        info.end_time,
        info.lifecycle_stage,
        info.user_id,
        info.artifact_uri,
        {},
        {},
        [],
        {},
    )


def _models_of(kind: str, uri: str, client, run_id: str):
    from syncer.sources.logged_models import FileStoreModels, client_logged_models, sql_logged_models

    run = _record(client, run_id)
    if kind == "file":
        from syncer.sources.file_meta import FileStoreInternals

        root = Path(uri)
        return FileStoreModels(FileStoreInternals(root)).of(run, root / run.experiment_id / run_id)
    if kind == "sqlite":
        from syncer.sources.sql_schema import open_read_only

        engine, tables = open_read_only(uri)
        try:
            return sql_logged_models(engine, tables, run)
        finally:
            engine.dispose()
    return client_logged_models(client, run)


@pytest.mark.slow
def test_every_store_kind_gives_the_runs_models_with_steps_flavors_params_and_linked_metrics(any_store, tmp_path):
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from conftest import client_for

    kind, uri = any_store
    client = client_for(uri)
    location = (tmp_path / "art").as_uri() if uri.startswith("sqlite:") else None
    exp = client.create_experiment(f"models-{kind}-{os.getpid()}", artifact_location=location)
    mlflow.set_tracking_uri(uri)
    x = np.arange(20, dtype=float).reshape(10, 2)
    ids = {}
    with mlflow.start_run(experiment_id=exp) as run:
        for step in (1, 2):
            info = mlflow.sklearn.log_model(
                LogisticRegression().fit(x, x[:, 0] > 9),
                name="clf",
                step=step,
                params={"C": "1.0"},
                pip_requirements=["scikit-learn"],
            )
            mlflow.log_metric("acc", 0.5 + step / 10, step=step, model_id=info.model_id)
            ids[step] = info.model_id
    other = client.create_run(exp, run_name="scorer").info.run_id
    client.log_metric(other, "accuracy", 0.8, step=2, model_id=ids[2], dataset_name="xnli-de", dataset_digest="d1")
    models = sorted(_models_of(kind, uri, client, run.info.run_id), key=lambda m: m.step or 0)
    assert [(m.model_id, m.name, m.step, m.status) for m in models] == [
        (ids[1], "clf", 1, "READY"),
        (ids[2], "clf", 2, "READY"),
    ]
    for m in models:
        assert m.run_id == run.info.run_id and "sklearn" in m.flavors and m.params == {"C": "1.0"}
        assert ("acc", 0.5 + m.step / 10, m.step, run.info.run_id) in {
            (x.key, x.value, x.step, x.run_id) for x in m.metrics
        }
    assert ("accuracy", 0.8, 2, "xnli-de", "d1", other) in {
        (x.key, x.value, x.step, x.dataset_name, x.dataset_digest, x.run_id) for x in models[1].metrics
    }
    assert _models_of(kind, uri, client, other) == []


@pytest.mark.slow
def test_a_model_scored_after_its_run_was_synced_gets_the_score_by_the_next_full_listing(any_store, tmp_path):
    """Train, sync, then evaluate: the score an evaluation run logs to the model reaches the
    training run's Aim run (its `mlflow.logged_models` and a `{model: ...}` series) once a full
    listing looks at the finished training run again; nothing else is written again."""
    import mlflow
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from syncer.config import Config
    from syncer.runner import open_driver

    from conftest import client_for, read_aim

    kind, uri = any_store
    client = client_for(uri)
    location = (tmp_path / "art").as_uri() if not uri.startswith("http") else None
    name = f"scored-later-{kind}-{os.getpid()}-{tmp_path.name}"
    exp = client.create_experiment(name, artifact_location=location)
    mlflow.set_tracking_uri(uri)
    x = np.arange(20, dtype=float).reshape(10, 2)
    with mlflow.start_run(experiment_id=exp, run_name="train") as run:
        mlflow.log_metric("loss", 0.5, step=1)
        info = mlflow.sklearn.log_model(
            LogisticRegression().fit(x, x[:, 0] > 9), name="clf", pip_requirements=["scikit-learn"]
        )
    s = open_driver(
        Config(tracking_uri=uri, aim_repo=tmp_path / "aim", experiments=(name,), full_scan_interval=1e9),
        strict_experiments=False,
        must_exist=True,
        role="daemon",
    )
    try:
        s.round()
        scorer = client.create_run(exp, run_name="scorer").info.run_id
        client.log_metric(
            scorer, "accuracy", 0.8, step=3, model_id=info.model_id, dataset_name="xnli-de", dataset_digest="d1"
        )
        client.set_terminated(scorer, "FINISHED")
        quick = s.round()  # the scorer arrives (and, where the store says it moved, the training run)
        s.listing.full_every_s = 0.0
        full = s.round()
        # the scorer, and the training run once: its metadata and models, no history read again
        assert quick.runs_written + full.runs_written == 2, (quick.as_dict(), full.as_dict())
        assert full.read["histories"] == 0, full.as_dict()
        got = read_aim(tmp_path / "aim")[run.info.run_id]
        (model,) = got["params"]["mlflow"]["logged_models"]
        assert ("accuracy", 0.8, "xnli-de") in {(m["key"], m["value"], m["dataset_name"]) for m in model["metrics"]}
        series = got["metrics"][("accuracy", (("dataset", "xnli-de"), ("model", "clf")))]
        assert series["steps"] == [3] and series["values"] == [0.8]
        assert s.round().runs_written == 0  # and it is not written again
    finally:
        s.close()
