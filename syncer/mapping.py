"""Pure mapping from MLflow's vocabulary to Aim's. No I/O except reading a rules file.

- metric key  -> (Aim metric name, context dict)          `ContextMapper`
- param value -> typed Python value                       `parse_param`
- MLflow tags -> description, labels, user tags            `split_tags`
"""

from __future__ import annotations

import ast
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

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
# MLflow names per-GPU system metrics `system/gpu_<i>_<what>`; Aim keeps the device in the context.
_GPU_KEY = re.compile(r"^gpu_(?P<gpu>\d+)_(?P<what>.+)$")
_HF_EVAL_LOSS = re.compile(r"^eval_(?P<ds>.+)_loss$")


@dataclass(frozen=True)
class MappedMetric:
    name: str
    context: dict[str, Any]
    system: bool = False  # an Aim system metric (shown in Aim's System tab)


@dataclass(frozen=True)
class Rule:
    """A user rule: `pattern` must match the whole key; the named group `name` (or the
    `name` template) gives the Aim name, every other named group and `context` go to context."""

    pattern: re.Pattern[str]
    name: str | None = None
    context: dict[str, Any] = field(default_factory=dict)

    def apply(self, key: str) -> MappedMetric | None:
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
        return MappedMetric(name, ctx)


class RulesFileError(ValueError):
    pass


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
            raise RulesFileError(
                f"context-map file {path}: rule {i} needs a `name` group in its pattern or a `name`"
            )
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

    def for_run(self, keys: Iterable[str]) -> "RunContextMapper":
        return RunContextMapper(self, hf_eval_sets(keys) if self.enabled else frozenset())


class RunContextMapper:
    def __init__(self, mapper: ContextMapper, eval_sets: frozenset[str]):
        self._mapper = mapper
        # longest first: `eval_xnli_de_loss` must pick `xnli_de` over `xnli`
        self._eval_sets = sorted(eval_sets, key=len, reverse=True)

    def map(self, key: str, dataset_name: str | None = None) -> MappedMetric:
        if not self._mapper.enabled:
            return MappedMetric(key, {})
        mapped = self._map_key(key)
        if dataset_name and "dataset" not in mapped.context:  # rule 4 (MLflow 3 metric datasets)
            mapped = MappedMetric(mapped.name, {**mapped.context, "dataset": dataset_name}, mapped.system)
        return mapped

    def _map_key(self, key: str) -> MappedMetric:
        for rule in self._mapper.rules:
            hit = rule.apply(key)
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
                    return MappedMetric(key[len(prefix):], ctx)
        # rule 3: MLflow system metrics -> Aim system metrics
        if key.startswith(SYSTEM_PREFIX) and len(key) > len(SYSTEM_PREFIX):
            rest = key[len(SYSTEM_PREFIX):]
            m = _GPU_KEY.match(rest)
            if m:
                return MappedMetric(f"gpu_{m.group('what')}", {"gpu": int(m.group("gpu"))}, True)
            return MappedMetric(rest, {}, True)
        # rule 2: subset prefixes
        for prefix, subset in SUBSET_PREFIXES:
            if key.startswith(prefix) and len(key) > len(prefix):
                return MappedMetric(key[len(prefix):], {"subset": subset})
        return MappedMetric(key, {})


# ---------------------------------------------------------------------------------------------
# params

_INT = re.compile(r"[+-]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[+-]?((0|[1-9][0-9]*)\.[0-9]*|\.[0-9]+|0|[1-9][0-9]*)([eE][+-]?[0-9]+)?")
_BOOLS = {"True": True, "False": False, "true": True, "false": False}
_NONES = {"None", "null"}
_INT64 = 2**63


def _json_like(v: Any) -> bool:
    """Values Aim can store as params: JSON-ish scalars, lists and str-keyed dicts of them."""
    if v is None or isinstance(v, (bool, str)):
        return True
    if isinstance(v, int):
        return -_INT64 <= v < _INT64
    if isinstance(v, float):
        return True
    if isinstance(v, list):
        return all(_json_like(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _json_like(x) for k, x in v.items())
    return False


def _tuples_to_lists(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_tuples_to_lists(x) for x in v]
    if isinstance(v, dict):
        return {k: _tuples_to_lists(x) for k, x in v.items()}
    return v


def parse_param(raw: str) -> Any:
    """MLflow stores params as strings; give Aim the typed value when the string is
    unambiguously one. Anything else is returned untouched."""
    if not isinstance(raw, str):
        return raw
    if raw in _BOOLS:
        return _BOOLS[raw]
    if raw in _NONES:
        return None
    if _INT.fullmatch(raw):
        v = int(raw)
        return v if -_INT64 <= v < _INT64 else raw
    if _FLOAT.fullmatch(raw):
        f = float(raw)
        return f if math.isfinite(f) else raw
    if raw[:1] in "[{(" and raw[-1:] in "]})":
        for loader in (json.loads, ast.literal_eval):
            try:
                v = loader(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                continue
            if isinstance(v, (list, dict, tuple)):
                v = _tuples_to_lists(v)
                if _json_like(v):
                    return v
    return raw


def parse_params(params: dict[str, str]) -> dict[str, Any]:
    return {k: parse_param(v) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------
# tags

NOTE_TAG = "mlflow.note.content"
RUN_NAME_TAG = "mlflow.runName"
PARENT_TAG = "mlflow.parentRunId"
USER_TAG = "mlflow.user"
SOURCE_TAG = "mlflow.source.name"
GIT_COMMIT_TAG = "mlflow.source.git.commit"


@dataclass(frozen=True)
class TagSplit:
    description: str | None
    user_tags: dict[str, str]  # non-`mlflow.*` tags, verbatim
    system_tags: dict[str, str]  # `mlflow.*` tags


def split_tags(tags: dict[str, str]) -> TagSplit:
    user = {k: v for k, v in tags.items() if not k.startswith("mlflow.")}
    system = {k: v for k, v in tags.items() if k.startswith("mlflow.")}
    return TagSplit(tags.get(NOTE_TAG) or None, user, system)


def tag_labels(user_tags: dict[str, str]) -> list[str]:
    """Aim labels for the runs table's Tags column: `key=value` (just `key` when empty)."""
    return sorted(f"{k}={v}" if v != "" else k for k, v in user_tags.items())
