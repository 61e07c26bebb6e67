"""Table tests for what a synced run's Aim page is made of (pure mapping): Aim's `__system_params`
from MLflow's tags and logged environment files, labels without per-run ids, `<name>_<lang>` media,
the artifacts listing under `mlflow`, the note."""

import pytest
from syncer.mapping import ContextMapper, LabelPolicy, is_identifier, run_meta
from syncer.mapping.system_params import (
    arguments,
    git_info,
    merge_packages,
    parse_conda,
    parse_python_env,
    parse_requirements,
    requirement,
    system_params,
)
from syncer.sources.records import Experiment, RunRecord

SHA = "aec8973b59036a4c73b0cb5289879c13b2bd8c4c"


def record(tags: dict[str, str]) -> RunRecord:
    return RunRecord(
        run_id="r1",
        experiment_id="1",
        name="run",
        status="FINISHED",
        start_time=1_700_000_000_000,
        end_time=1_700_000_060_000,
        lifecycle_stage="active",
        user="ann",
        artifact_uri="file:///tmp/a",
        params={"lr": "0.1"},
        tags=tags,
        datasets=[],
        metric_marks={},
    )


def test_git_info_from_mlflow_tags():
    tags = {
        "mlflow.source.git.commit": SHA,
        "mlflow.source.git.branch": "main",
        "mlflow.source.git.repoURL": "https://example.com/x.git",
    }
    assert git_info(tags) == {
        "branch": "main",
        "remote_origin_url": "https://example.com/x.git",
        "commit": {"hash": SHA},  # MLflow records no commit time or author: absent, not ""
    }
    assert git_info({"mlflow.source.git.commit": SHA}) == {"commit": {"hash": SHA}}
    assert git_info({"mlflow.source.git.branch": "main"}) == {}  # no commit: no git info at all
    assert git_info({"mlflow.source.git.commit": SHA, "mlflow.gitRepoURL": "u"})["remote_origin_url"] == "u"


def test_arguments_are_what_mlflow_knows_of_the_command():
    assert arguments({"mlflow.source.name": "train.py", "mlflow.source.type": "LOCAL"}) == ["train.py"]
    project = {
        "mlflow.source.name": "https://example.com/proj",
        "mlflow.source.type": "PROJECT",
        "mlflow.project.entryPoint": "main",
    }
    assert arguments(project) == ["https://example.com/proj", "-e", "main"]
    assert arguments({}) == []


@pytest.mark.parametrize(
    "line, expected",
    [
        ("numpy==2.4.6", ("numpy", "2.4.6")),
        ("PyYAML == 6.0.2", ("pyyaml", "6.0.2")),
        ("nvidia_ml_py==12.5", ("nvidia-ml-py", "12.5")),
        ("torch>=2.0,<3", ("torch", ">=2.0,<3")),
        ("scikit-learn~=1.9", ("scikit-learn", "~=1.9")),
        ("pkg===1.0", ("pkg", "1.0")),
        ("uvicorn[standard]==0.30 ; python_version >= '3.8'", ("uvicorn", "0.30")),
        ("mlflow==3.17.2  # pinned", ("mlflow", "3.17.2")),
        ("requests", None),  # no version: nothing to show
        ("-r requirements.txt", None),
        ("--index-url https://x", None),
        ("git+https://example.com/x.git#egg=x", None),
        ("# comment", None),
        ("", None),
    ],
)
def test_requirement_lines(line, expected):
    assert requirement(line) == expected


def test_environment_files():
    assert parse_requirements("mlflow==3.17.2\nnumpy==2.4.6\nnumpy==1.0\n") == {"mlflow": "3.17.2", "numpy": "2.4.6"}
    python_env = "python: 3.11.7\nbuild_dependencies:\n- pip==26.3\n- wheel\ndependencies:\n- -r requirements.txt\n"
    assert parse_python_env(python_env) == {"pip": "26.3"}
    conda = (
        "channels:\n- conda-forge\ndependencies:\n- python=3.11.7\n- pip<=26.3\n"
        "- pip:\n  - mlflow==3.17.2\n  - scikit-learn==1.9.1\nname: mlflow-env\n"
    )
    assert parse_conda(conda) == {"mlflow": "3.17.2", "scikit-learn": "1.9.1"}
    assert parse_conda("not: [valid") == {} and parse_python_env(": :") == {}
    merged, used = merge_packages(
        [("requirements.txt", {"torch": "2.13.0"}), ("empty", {}), ("m/requirements.txt", {"torch": "1", "a": "2"})]
    )
    assert merged == {"a": "2", "torch": "2.13.0"} and list(merged) == ["a", "torch"]
    assert used == ["requirements.txt", "m/requirements.txt"]


def test_system_params_leave_out_what_mlflow_did_not_record():
    assert system_params({}, None) == {}
    assert system_params({}, {}) == {}
    got = system_params({"mlflow.source.name": "t.py", "mlflow.source.git.commit": SHA}, {"numpy": "2"})
    assert got == {"arguments": ["t.py"], "packages": {"numpy": "2"}, "git_info": {"commit": {"hash": SHA}}}
    assert "executable" not in got and "env_variables" not in got  # MLflow records neither


@pytest.mark.parametrize(
    "value, ident",
    [
        ("018cd84ba8f9", True),  # training/'s config_id
        (SHA, True),
        ("3f2b8c1e-1d2a-4e5f-9a0b-123456789abc", True),
        ("e7211732c9a04972830a2626a8e120a6", True),  # an MLflow run id
        ("fine-tune", False),
        ("nlp", False),
        ("12345678", False),  # a number
        ("deadbeef", False),  # hex letters only: a word
        ("abc123", False),  # too short
        ("", False),
    ],
)
def test_identifiers(value, ident):
    assert is_identifier(value) == ident


def test_label_policy():
    tags = {"technique": "fine-tune", "config_id": "018cd84ba8f9", "sweep_id": "d4546502", "team": "nlp", "flag": ""}
    assert LabelPolicy().labels(tags) == ["flag", "team=nlp", "technique=fine-tune"]
    assert LabelPolicy(exclude=("team", "fl*")).labels(tags) == ["technique=fine-tune"]
    forced = ["flag", "sweep_id=d4546502", "team=nlp", "technique=fine-tune"]
    assert LabelPolicy(include=("sweep_id",)).labels(tags) == forced


def test_media_named_name_lang_get_the_lang_a_metric_gets():
    keys = ["eval_de_loss", "eval_de_accuracy", "eval_fr_loss", "loss"]
    run = ContextMapper().for_run(keys)
    assert run.langs == {"de", "fr"}
    m = run.map_media("confusion_matrix_de")
    assert (m.name, m.context) == ("confusion_matrix", {"lang": "de"})
    assert run.map("eval_de_accuracy").context["lang"] == "de"  # what the metric gets
    assert (run.map_media("plots/cm_fr").name, run.map_media("plots/cm_fr").context) == ("plots/cm", {"lang": "fr"})
    # a language the run's metrics do not have, an ISO code that is a common suffix: left alone
    for key in ("confusion_matrix_es", "model_id", "sample_predictions"):
        assert (run.map_media(key).name, run.map_media(key).context) == (key, {})
    # metric keys are untouched by it
    assert run.map("accuracy_de").name == "accuracy_de"
    assert ContextMapper(enabled=False).for_run(keys).map_media("confusion_matrix_de").name == "confusion_matrix_de"


def test_run_meta_moves_the_listing_under_mlflow_and_fills_system_params():
    tags = {
        "mlflow.source.name": "train.py",
        "mlflow.source.git.commit": SHA,
        "mlflow.note.content": "# notes\nfirst try",
        "config_id": "018cd84ba8f9",
        "technique": "fine-tune",
    }
    listing = [{"path": "requirements.txt", "size": 10, "uri": "file:///tmp/a/requirements.txt", "copied_as": "text"}]
    meta = run_meta(
        Experiment("1", "xnli"),
        record(tags),
        {},
        listing,
        tracking_uri="file:///tmp",
        packages={"numpy": "2"},
        packages_from=["requirements.txt"],
    )
    assert "artifacts" not in meta.params
    assert meta.params["mlflow"]["artifacts"] == listing
    assert meta.params["mlflow"]["packages_from"] == ["requirements.txt"]
    assert meta.params["__system_params"] == {
        "arguments": ["train.py"],
        "packages": {"numpy": "2"},
        "git_info": {"commit": {"hash": SHA}},
    }
    assert meta.note == "# notes\nfirst try" and meta.description == "# notes\nfirst try"
    assert meta.labels == ["technique=fine-tune"]
    assert meta.params["tags"]["config_id"] == "018cd84ba8f9"  # still searchable
    bare = run_meta(Experiment("1", "xnli"), record({}), {}, [], tracking_uri="file:///tmp")
    assert "__system_params" not in bare.params and "artifacts" not in bare.params["mlflow"]
    assert bare.note is None
