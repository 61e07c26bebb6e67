"""Two MLflow keys of one run that map to the same Aim name and context (`train_loss` and
`train/loss` both -> `loss {subset: train}`) would overwrite each other's points. The first
keeps the mapping; each other one also gets `{mlflow_key: <its key>}` in its context, so both
arrive whole. "First" is stable over time: a key already synced keeps its place, then keys in
sorted order. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .keys import MappedMetric

KEY_CONTEXT = "mlflow_key"


class _Mapper(Protocol):
    def map(self, key: str, dataset_name: str | None = None) -> MappedMetric: ...


def _slot(m: MappedMetric) -> tuple[str, bool, tuple[tuple[str, Any], ...]]:
    return m.name, m.system, tuple(sorted((k, repr(v)) for k, v in m.context.items()))


@dataclass
class KeyNames:
    """The Aim name and context of each MLflow key of one run, collisions resolved."""

    mapper: _Mapper
    separated: set[str] = field(default_factory=set)  # keys that got the `mlflow_key` context
    collisions: list[str] = field(default_factory=list)  # one note per collision, naming the keys

    def of(self, key: str, dataset_name: str | None = None) -> MappedMetric:
        m = self.mapper.map(key, dataset_name)
        if key in self.separated:
            return MappedMetric(m.name, {**m.context, KEY_CONTEXT: key}, m.system, f"collision: {KEY_CONTEXT} added")
        return m


def resolve(mapper: _Mapper, keys: Iterable[str], *, known: set[str]) -> KeyNames:
    """`keys`: every metric key of the run; `known`: those already synced (they keep theirs)."""
    names = KeyNames(mapper)
    owner: dict[tuple[str, bool, tuple[tuple[str, Any], ...]], str] = {}
    for key in sorted(keys, key=lambda k: (k not in known, k)):
        slot = _slot(mapper.map(key))
        first = owner.setdefault(slot, key)
        if first != key:
            names.separated.add(key)
            context = dict(mapper.map(key).context)
            names.collisions.append(
                f"MLflow keys {first!r} and {key!r} both map to Aim metric {slot[0]!r} {context}; "
                f"{key!r} keeps its points under the context {{{KEY_CONTEXT}: {key!r}}}"
            )
    return names
