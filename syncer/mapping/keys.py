"""Metric keys -> (Aim name, context): the default rules, user rules from a TOML file, and
MLflow's system metrics as Aim's. Pure, except for reading a rules file."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadInput

# ISO 639-1 two-letter language codes. A Hugging Face eval set named after one of these gets
# a `lang` context, so Aim can group curves by language.
ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv
    cy da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht
    hu hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la
    lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj
    om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv
    sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)

# Rule 2: subset prefixes, longest first so `validation_` wins over `val_`.
SUBSET_PREFIXES: tuple[tuple[str, str], ...] = (
    ("validation_", "val"),
    ("validation/", "val"),
    ("train_", "train"),
    ("train/", "train"),
    ("eval_", "eval"),
    ("eval/", "eval"),
    ("test_", "test"),
    ("test/", "test"),
    ("val_", "val"),
    ("val/", "val"),
)

SYSTEM_PREFIX = "system/"
AIM_SYSTEM_PREFIX = "__system__"  # aim.ext.resource.configs.AIM_RESOURCE_METRIC_PREFIX
# MLflow names per-GPU system metrics `system/gpu_<i>_<what>`; Aim keeps the device in the context.
_GPU_KEY = re.compile(r"^gpu_(?P<gpu>\d+)_(?P<what>.+)$")
# MLflow system metric (without `system/` and the GPU index) -> the name Aim's resource tracker
# gives it, for those Aim's UI shows on its System tab (the others keep their MLflow name)
_SYSTEM_NAMES = {
    "cpu_utilization_percentage": "cpu",
    "system_memory_usage_percentage": "memory_percent",
    "disk_usage_percentage": "disk_percent",
    "gpu_utilization_percentage": "gpu",
    "gpu_memory_usage_percentage": "gpu_memory_percent",
    "gpu_power_usage_watts": "gpu_power_watts",
    "gpu_temperature_celsius": "gpu_temp",
}
_HF_EVAL_LOSS = re.compile(r"^eval_(?P<ds>.+)_loss$")
_LANG_SUFFIX = re.compile(r"^(?P<name>.+)_(?P<lang>[a-z]{2})$")

# what `MappedMetric.rule` says of the default rules (a user rule: "rule <i>: <pattern>")
RULE_HF = "default: Hugging Face eval sets"
RULE_SUBSET = "default: subset prefix"
RULE_SYSTEM = "default: system metrics"
RULE_DATASET = "default: metric dataset"
RULE_LANG = "default: artifact <name>_<lang>"
RULE_NONE = "none: kept as is"
RULE_DISABLED = "none (--no-context-map)"


@dataclass(frozen=True)
class MappedMetric:
    name: str
    context: dict[str, Any]
    system: bool = False  # an Aim system metric (shown in Aim's System tab)
    rule: str = field(default="", compare=False)  # which rule gave the name and context (the dry run says)

    @property
    def aim_name(self) -> str:
        """The name written to Aim: system metrics get Aim's `__system__` names."""
        return system_metric_name(self.name) if self.system else self.name


def system_metric(name: str) -> tuple[str, dict[str, Any]]:
    """MLflow system metric -> (Aim name, context).

    Aim's Run page shows on its *System* tab only the names its UI knows (aim_ui
    ``config/systemMetrics``: ``__system__cpu``, ``__system__p_memory_percent``,
    ``__system__memory_percent``, ``__system__disk_percent``, ``__system__gpu``,
    ``__system__gpu_memory_percent``, ``__system__gpu_power_watts``, ``__system__gpu_temp``);
    any other ``__system__`` name lands in the Metrics tab under its raw name. So the MLflow
    metrics Aim has a name for get it, and the others keep their readable MLflow name
    (``system/disk_usage_megabytes``, ``system/network_receive_megabytes``, ...).  Aim's own
    resource tracker keeps the GPU index in the context ``{"gpu": i}``, and so do both.
    Accepts ``system/gpu_0_utilization_percentage``, ``gpu_0_utilization_percentage`` or
    ``gpu_utilization_percentage`` (GPU index already moved to the context). A multi-node job's
    metrics (``system/<node id>/cpu_utilization_percentage``, MLflow's
    ``MLFLOW_SYSTEM_METRICS_NODE_ID``) keep the node as a context ``{"node": <id>}``, like the GPU."""
    if name.startswith(AIM_SYSTEM_PREFIX):
        return name, {}
    rest, ctx = split_system_key(name[len(SYSTEM_PREFIX) :] if name.startswith(SYSTEM_PREFIX) else name)
    aim = _SYSTEM_NAMES.get(rest)
    return (AIM_SYSTEM_PREFIX + aim, ctx) if aim is not None else (SYSTEM_PREFIX + rest, ctx)


def split_system_key(rest: str) -> tuple[str, dict[str, Any]]:
    """A system metric's key after ``system/`` -> (the metric, its node and GPU as context):
    ``node-1/gpu_0_utilization_percentage`` -> (``gpu_utilization_percentage``,
    ``{"node": "node-1", "gpu": 0}``)."""
    ctx: dict[str, Any] = {}
    if "/" in rest:
        node, metric = rest.split("/", 1)
        if node and metric:
            ctx["node"] = node
            rest = metric
    m = _GPU_KEY.match(rest)
    if m:
        ctx["gpu"] = int(m.group("gpu"))
        rest = f"gpu_{m.group('what')}"
    return rest, ctx


def system_metric_name(name: str) -> str:
    """The Aim system-metric name for an MLflow system metric name; see :func:`system_metric`."""
    return system_metric(name)[0]


@dataclass(frozen=True)
class Rule:
    """A user rule: `pattern` must match the whole key; the named group `name` (or the
    `name` template) gives the Aim name, every other named group and `context` go to context."""

    pattern: re.Pattern[str]
    name: str | None = None
    context: dict[str, Any] = field(default_factory=dict)

    def apply(self, key: str, label: str = "") -> MappedMetric | None:
        m = self.pattern.fullmatch(key)
        if not m:
            return None
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        if self.name is not None:
            name = self.name.format(**groups)
        else:
            name = groups.get("name") or key
        ctx = dict(self.context)
        ctx.update({k: v for k, v in groups.items() if k != "name"})
        return MappedMetric(name, ctx, rule=label)


class RulesFileError(BadInput):
    """A context-map file that cannot be read or used."""


def load_rules(path: str | Path) -> list[Rule]:
    """Read a TOML rules file::

    [[rule]]
    pattern = '^(?P<lang>[a-z]{2})/(?P<name>.+)$'   # named groups -> context, `name` -> metric
    context = { task = "xnli" }                       # optional constant context
    # name = "acc_{lang}"                             # optional name template instead of a group
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise RulesFileError(f"cannot read context-map file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise RulesFileError(f"context-map file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise RulesFileError(f"context-map file {path} is not valid TOML: {e}") from None
    rules = []
    for i, raw in enumerate(data.get("rule", []), 1):
        if not isinstance(raw, dict) or not isinstance(raw.get("pattern"), str):
            raise RulesFileError(f"context-map file {path}: rule {i} needs a string `pattern`")
        try:
            pattern = re.compile(raw["pattern"])
        except re.error as e:
            raise RulesFileError(f"context-map file {path}: rule {i} has a bad pattern: {e}") from None
        ctx = raw.get("context", {})
        if not isinstance(ctx, dict):
            raise RulesFileError(f"context-map file {path}: rule {i}: `context` must be a table")
        name = raw.get("name")
        if name is None and "name" not in pattern.groupindex:
            raise RulesFileError(f"context-map file {path}: rule {i} needs a `name` group in its pattern or a `name`")
        rules.append(Rule(pattern, name, ctx))
    if not rules:
        raise RulesFileError(f"context-map file {path} has no [[rule]] entries")
    return rules


def hf_eval_sets(keys: Iterable[str]) -> frozenset[str]:
    """Eval set names of a Hugging Face Trainer run with several eval datasets: every X in
    `eval_X_loss`."""
    out = set()
    for k in keys:
        m = _HF_EVAL_LOSS.match(k)
        if m:
            out.add(m.group("ds"))
    return frozenset(out)


class ContextMapper:
    """Maps one run's metric keys. Built per run because rule 1 depends on the run's key set."""

    def __init__(self, rules: list[Rule] | None = None, enabled: bool = True):
        self.rules = rules or []
        self.enabled = enabled

    def for_run(self, keys: Iterable[str]) -> RunContextMapper:
        return RunContextMapper(self, hf_eval_sets(keys) if self.enabled else frozenset())


class RunContextMapper:
    def __init__(self, mapper: ContextMapper, eval_sets: frozenset[str]):
        self._mapper = mapper
        # longest first: `eval_xnli_de_loss` must pick `xnli_de` over `xnli`
        self._eval_sets = sorted(eval_sets, key=len, reverse=True)

    @property
    def langs(self) -> frozenset[str]:
        """The languages the run's metrics get a `{lang: ...}` for (its eval sets named by an ISO
        639-1 code)."""
        return frozenset(ds for ds in self._eval_sets if ds in ISO_639_1)

    def map_media(self, key: str) -> MappedMetric:
        """A media sequence's name (an artifact's path without extension, a step image's key):
        as a metric key, and one that no rule maps named `<name>_<lang>`, with a language the
        run's metrics have (`confusion_matrix_de` beside `eval_de_loss`), gets the same
        `{lang: ...}`: `confusion_matrix {lang: de}`."""
        mapped = self.map(key)
        if mapped.rule != RULE_NONE:
            return mapped
        m = _LANG_SUFFIX.match(key)
        if m and m.group("lang") in self.langs:
            return MappedMetric(m.group("name"), {"lang": m.group("lang")}, rule=RULE_LANG)
        return mapped

    def map(self, key: str, dataset_name: str | None = None) -> MappedMetric:
        if not self._mapper.enabled:
            return MappedMetric(key, {}, rule=RULE_DISABLED)
        mapped = self._map_key(key)
        if dataset_name and "dataset" not in mapped.context:  # rule 4 (MLflow 3 metric datasets)
            rule = mapped.rule if mapped.rule != RULE_NONE else RULE_DATASET
            mapped = MappedMetric(mapped.name, {**mapped.context, "dataset": dataset_name}, mapped.system, rule)
        return mapped

    def _map_key(self, key: str) -> MappedMetric:
        for i, rule in enumerate(self._mapper.rules, 1):
            hit = rule.apply(key, f"rule {i}: {rule.pattern.pattern}")
            if hit is not None:
                return hit
        # rule 1: Hugging Face per-dataset eval keys
        if key.startswith("eval_"):
            for ds in self._eval_sets:
                prefix = f"eval_{ds}_"
                if key.startswith(prefix) and len(key) > len(prefix):
                    ctx: dict[str, Any] = {"subset": "eval", "dataset": ds}
                    if ds in ISO_639_1:
                        ctx["lang"] = ds
                    return MappedMetric(key[len(prefix) :], ctx, rule=RULE_HF)
        # rule 3: MLflow system metrics -> Aim system metrics (its System tab), or readable names
        if key.startswith(SYSTEM_PREFIX) and len(key) > len(SYSTEM_PREFIX):
            name, ctx = system_metric(key)
            if name.startswith(AIM_SYSTEM_PREFIX):
                metric, _ = split_system_key(key[len(SYSTEM_PREFIX) :])
                return MappedMetric(metric, ctx, True, RULE_SYSTEM)
            return MappedMetric(name, ctx, rule=RULE_SYSTEM)
        # rule 2: subset prefixes
        for prefix, subset in SUBSET_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                return MappedMetric(key[len(prefix) :], {"subset": subset}, rule=RULE_SUBSET)
        return MappedMetric(key, {}, rule=RULE_NONE)
