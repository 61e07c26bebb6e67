"""A key's Aim name and context, fixed once its first points are in Aim. Pure.

Rule 1 of the defaults depends on the run's other keys (`eval_de_accuracy` is `accuracy {subset:
eval, dataset: de, lang: de}` only once the run has `eval_de_loss`), and rules files change: a key
mapped afresh each round would send its later points to another series than its first ones. So
the pipeline keeps, with each key's cursor, where its points went (`pin`), and maps the keys it
has synced before through `Pinned`: a key keeps its series for the run's whole life (restarts
included); a new key is mapped as the rules say now."""

from __future__ import annotations

import json
from typing import Any, Protocol

from .keys import MappedMetric

RULE_PINNED = "kept: where the key's first points went"


class _Mapper(Protocol):
    def map(self, key: str, dataset_name: str | None = None) -> MappedMetric: ...


def pin(m: MappedMetric) -> str:
    """What is kept of a key's mapping (the state stores it as text)."""
    return json.dumps([m.name, m.context, m.system], sort_keys=True)


def unpin(text: str) -> MappedMetric | None:
    """The mapping `pin` kept; None for text this version cannot read (the key is mapped afresh)."""
    try:
        name, context, system = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(name, str) or not isinstance(context, dict):
        return None
    return MappedMetric(name, context, bool(system), RULE_PINNED)


class Pinned:
    """A run's mapper whose keys synced before keep the Aim name and context they were synced
    under (an MLflow 3 point's dataset still goes to the context, as rule 4 says)."""

    def __init__(self, mapper: _Mapper, pins: dict[str, str]):
        self.mapper = mapper
        self.pins: dict[str, MappedMetric] = {}
        for key, text in pins.items():
            m = unpin(text)
            if m is not None:
                self.pins[key] = m

    def map(self, key: str, dataset_name: str | None = None) -> MappedMetric:
        m = self.pins.get(key)
        if m is None:
            return self.mapper.map(key, dataset_name)
        if dataset_name and "dataset" not in m.context:
            context: dict[str, Any] = {**m.context, "dataset": dataset_name}
            return MappedMetric(m.name, context, m.system, m.rule)
        return m
