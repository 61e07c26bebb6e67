"""Table tests for the pure mapping layer: metric keys, params, tags, user rules."""

import math

import pytest
from syncer.mapping import (
    ContextMapper,
    RulesFileError,
    hf_eval_sets,
    load_rules,
    parse_param,
    split_tags,
    system_metric,
    tag_labels,
)

HF_KEYS = [
    "loss",
    "learning_rate",
    "grad_norm",
    "epoch",
    "eval_de_loss",
    "eval_de_accuracy",
    "eval_de_runtime",
    "eval_de_samples_per_second",
    "eval_en_loss",
    "eval_en_accuracy",
    "eval_xnli_zh_loss",
    "eval_xnli_zh_accuracy",
    "eval_wiki_loss",
    "eval_wiki_f1",
    "train_loss",
    "train_runtime",
]


@pytest.mark.parametrize(
    "key, name, context",
    [
        # rule 1: Hugging Face per-dataset eval keys
        ("eval_de_accuracy", "accuracy", {"subset": "eval", "dataset": "de", "lang": "de"}),
        ("eval_de_loss", "loss", {"subset": "eval", "dataset": "de", "lang": "de"}),
        ("eval_de_samples_per_second", "samples_per_second", {"subset": "eval", "dataset": "de", "lang": "de"}),
        ("eval_en_accuracy", "accuracy", {"subset": "eval", "dataset": "en", "lang": "en"}),
        ("eval_xnli_zh_accuracy", "accuracy", {"subset": "eval", "dataset": "xnli_zh"}),  # not an ISO code
        ("eval_wiki_f1", "f1", {"subset": "eval", "dataset": "wiki"}),
        # rule 2: subset prefixes
        ("train_loss", "loss", {"subset": "train"}),
        ("train_runtime", "runtime", {"subset": "train"}),
        ("eval_fr_accuracy", "fr_accuracy", {"subset": "eval"}),  # fr has no eval_fr_loss in this run
        # no rule
        ("loss", "loss", {}),
        ("learning_rate", "learning_rate", {}),
        ("epoch", "epoch", {}),
    ],
)
def test_hf_run_keys(key, name, context):
    m = ContextMapper().for_run(HF_KEYS).map(key)
    assert (m.name, m.context, m.system) == (name, context, False)


@pytest.mark.parametrize(
    "key, name, context",
    [
        ("train/loss", "loss", {"subset": "train"}),
        ("eval/accuracy", "accuracy", {"subset": "eval"}),
        ("eval_loss", "loss", {"subset": "eval"}),
        ("val_loss", "loss", {"subset": "val"}),
        ("val/acc", "acc", {"subset": "val"}),
        ("validation_loss", "loss", {"subset": "val"}),
        ("test_f1", "f1", {"subset": "test"}),
        ("test/f1", "f1", {"subset": "test"}),
        ("train_", "train_", {}),  # nothing left after the prefix: untouched
        ("training_loss", "training_loss", {}),
        ("eval", "eval", {}),
        ("accuracy/de", "accuracy/de", {}),
    ],
)
def test_subset_prefixes(key, name, context):
    m = ContextMapper().for_run([key]).map(key)
    assert (m.name, m.context) == (name, context)


@pytest.mark.parametrize(
    "key, aim_name, context, system",
    [
        # the names Aim's System tab shows (aim_ui config/systemMetrics)
        ("system/cpu_utilization_percentage", "__system__cpu", {}, True),
        ("system/system_memory_usage_percentage", "__system__memory_percent", {}, True),
        ("system/disk_usage_percentage", "__system__disk_percent", {}, True),
        ("system/gpu_0_utilization_percentage", "__system__gpu", {"gpu": 0}, True),
        ("system/gpu_1_memory_usage_percentage", "__system__gpu_memory_percent", {"gpu": 1}, True),
        ("system/gpu_0_power_usage_watts", "__system__gpu_power_watts", {"gpu": 0}, True),
        # the others keep their readable MLflow name: a raw `__system__...` would land in the Metrics tab
        ("system/system_memory_usage_megabytes", "system/system_memory_usage_megabytes", {}, False),
        ("system/disk_usage_megabytes", "system/disk_usage_megabytes", {}, False),
        ("system/disk_available_megabytes", "system/disk_available_megabytes", {}, False),
        ("system/network_receive_megabytes", "system/network_receive_megabytes", {}, False),
        ("system/network_transmit_megabytes", "system/network_transmit_megabytes", {}, False),
        ("system/gpu_3_memory_usage_megabytes", "system/gpu_memory_usage_megabytes", {"gpu": 3}, False),
        # a multi-node job's metrics (MLFLOW_SYSTEM_METRICS_NODE_ID): the node kept as a context, like the GPU
        ("system/node-1/cpu_utilization_percentage", "__system__cpu", {"node": "node-1"}, True),
        ("system/node-1/gpu_2_utilization_percentage", "__system__gpu", {"node": "node-1", "gpu": 2}, True),
        ("system/worker0/disk_usage_megabytes", "system/disk_usage_megabytes", {"node": "worker0"}, False),
    ],
)
def test_system_metrics(key, aim_name, context, system):
    m = ContextMapper().for_run([key]).map(key)
    assert (m.aim_name, m.context, m.system) == (aim_name, context, system)
    assert system_metric(key) == (aim_name, context)
    assert m.aim_name.startswith("__system__") == system  # never a raw internal name in the Metrics tab


def test_mlflow3_dataset_name_becomes_context():
    run = ContextMapper().for_run(["accuracy", "eval_de_loss", "eval_de_accuracy"])
    assert run.map("accuracy", "holdout").context == {"dataset": "holdout"}
    # a rule that already named the dataset keeps it
    assert run.map("eval_de_accuracy", "other").context["dataset"] == "de"
    assert run.map("accuracy", None).context == {}


def test_eval_sets_prefer_longest():
    keys = ["eval_xnli_loss", "eval_xnli_de_loss", "eval_xnli_de_accuracy"]
    assert hf_eval_sets(keys) == {"xnli", "xnli_de"}
    m = ContextMapper().for_run(keys).map("eval_xnli_de_accuracy")
    assert (m.name, m.context) == ("accuracy", {"subset": "eval", "dataset": "xnli_de"})


def test_mapping_off_keeps_keys():
    m = ContextMapper(enabled=False).for_run(HF_KEYS).map("eval_de_accuracy", "ds")
    assert (m.name, m.context, m.system) == ("eval_de_accuracy", {}, False)
    assert ContextMapper(enabled=False).for_run(["system/cpu"]).map("system/cpu").system is False


def test_user_rules_first(tmp_path):
    f = tmp_path / "rules.toml"
    f.write_text(
        """
[[rule]]
pattern = '^(?P<lang>[a-z]{2})/(?P<name>[a-z_]+)$'
context = { task = "xnli" }

[[rule]]
pattern = '^eval_(?P<lang>de)_(?P<metric>accuracy)$'
name = "acc"
"""
    )
    mapper = ContextMapper(load_rules(f))
    run = mapper.for_run(HF_KEYS + ["de/accuracy"])
    assert run.map("de/accuracy").context == {"task": "xnli", "lang": "de"}
    assert run.map("de/accuracy").name == "accuracy"
    m = run.map("eval_de_accuracy")  # the user rule wins over rule 1
    assert (m.name, m.context) == ("acc", {"lang": "de", "metric": "accuracy"})
    assert run.map("eval_en_accuracy").context["lang"] == "en"  # defaults still apply


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[rule]]\npattern = '('\nname='x'", "bad pattern"),
        ("[[rule]]\npattern = 'x'", "needs a `name`"),
        ("[[rule]]\nname = 'x'", "needs a string `pattern`"),
        ("rule = 3 3", "not valid TOML"),
        ("", "no [[rule]]"),
    ],
)
def test_bad_rules_files(tmp_path, text, message):
    f = tmp_path / "rules.toml"
    f.write_text(text)
    with pytest.raises(RulesFileError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_rules(f)


def test_missing_rules_file(tmp_path):
    with pytest.raises(RulesFileError, match="cannot read"):
        load_rules(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("5e-05", 5e-05),
        ("0.1", 0.1),
        (".5", 0.5),
        ("1.", 1.0),
        ("-3.25", -3.25),
        ("8", 8),
        ("-2", -2),
        ("0", 0),
        ("False", False),
        ("True", True),
        ("true", True),
        ("None", None),
        ("null", None),
        ("[0, 1]", [0, 1]),
        ("[]", []),
        ('{"a": 1, "b": [1, 2]}', {"a": 1, "b": [1, 2]}),
        ("{'id2label': {'0': 'entailment'}}", {"id2label": {"0": "entailment"}}),
        ("('a', 'b')", ["a", "b"]),
        ("['x', None, True]", ["x", None, True]),
        # stays a string, untouched
        ("bert-base-multilingual-cased", "bert-base-multilingual-cased"),
        ("007", "007"),
        ("1_000", "1_000"),
        (" 5", " 5"),
        ("5 ", "5 "),
        ("nan", "nan"),
        ("inf", "inf"),
        ("1e999", "1e999"),
        ("99999999999999999999999", "99999999999999999999999"),
        ("{1, 2}", "{1, 2}"),  # a set is no JSON value
        ("{1: 'a'}", "{1: 'a'}"),  # non-string keys
        ("[1, 2", "[1, 2"),
        ("", ""),
        ("FALSE", "FALSE"),
        ("0x10", "0x10"),
        ("ünïcødé ✓", "ünïcødé ✓"),
        ("[" + "1," * 3000 + "1]", [1] * 3001),
    ],
)
def test_parse_param(raw, expected):
    got = parse_param(raw)
    assert got == expected and type(got) is type(expected)


def test_parse_param_long_string_untouched():
    s = "x" * 6000
    assert parse_param(s) is s


def test_parse_param_deep_nesting_stays_string():
    deep = "[" * 5000 + "]" * 5000
    assert parse_param(deep) == deep


def test_split_tags_and_labels():
    tags = {
        "mlflow.note.content": "my notes",
        "mlflow.runName": "r",
        "mlflow.user": "ann",
        "team": "nlp",
        "flag": "",
    }
    s = split_tags(tags)
    assert s.description == "my notes"
    assert s.user_tags == {"team": "nlp", "flag": ""}
    assert set(s.system_tags) == {"mlflow.note.content", "mlflow.runName", "mlflow.user"}
    assert tag_labels(s.user_tags) == ["flag", "team=nlp"]


def test_nan_like_values_never_parse_to_nan():
    for raw in ("NaN", "nan", "-inf", "Infinity"):
        v = parse_param(raw)
        assert not (isinstance(v, float) and (math.isnan(v) or math.isinf(v)))


@pytest.mark.parametrize(
    "text, secret",
    [
        ("http://user:s3cr/tPASS@host:5000/x", "s3cr/tPASS"),
        ("http://user:p@ss@host", "p@ss"),
        ("https://u:pa?ss@host/api", "pa?ss"),
        ("https://u:pa#ss@host/api", "pa#ss"),
        ("https://u:pa ss@host/api", "pa ss"),
        ("https://TOKENONLY@host", "TOKENONLY"),
        ("failed: MLflow at 'http://u:x/y@z@host:80' is unreachable (refused)", "x/y@z"),
        ("http://host/x?run=1&token=TOK1", "TOK1"),
        ("http://host/x#access_token=TOK2", "TOK2"),
        ("http://host/x?Pass=TOK3&a=1", "TOK3"),
        ("http://host/x?jwt=TOK4", "TOK4"),
        ("http://host/x?tk=TOK5", "TOK5"),
        ("s3://b/k?X-Amz-Signature=TOK6&X-Amz-Credential=TOK7", "TOK6"),
        ("s3://b/k?X-Amz-Signature=TOK6&X-Amz-Credential=TOK7", "TOK7"),
        # one slash, or none, after the scheme: a typo users make (issue 27)
        ("cannot use the database postgresql:/user:PW8@localhost/db: Could not parse", "PW8"),
        ("postgresql+psycopg2:/user:P/W9@localhost/db", "P/W9"),
        ("postgresql:user:PW10@localhost/db", "PW10"),
        ("mysql:/PW11@host/db", "PW11"),
        ("http://host/x?pw=PW12", "PW12"),
        ("postgresql://u@host/db?sslmode=require&pw=PW13", "PW13"),
    ],
)
def test_redact_hides_every_credential_it_can_find(text, secret):
    from syncer.redact import redact

    out = redact(text)
    assert secret not in out, out
    assert redact(out) == out  # stable


def test_redact_keeps_what_is_no_secret():
    from syncer.redact import redact

    assert redact("http://alice:s3cr/t@host:5000/x?run=1&token=abc") == "http://alice:***@host:5000/x?run=1&token=***"
    assert redact("file:///tmp/mlruns/0/abc/metrics/loss") == "file:///tmp/mlruns/0/abc/metrics/loss"
    assert redact("http://host:5000/api?run_id=1&step=2") == "http://host:5000/api?run_id=1&step=2"
    assert redact("postgresql:/alice:PW@host/db") == "postgresql:/alice:***@host/db"
    assert redact("2026-12-07T09:32:51 WARNING C:/Users/x@y") == "2026-12-07T09:32:51 WARNING C:/Users/x@y"
