"""Artifacts -> Aim media: what each listed file is (a step image, a table, a figure, an image,
a text, an audio clip, or nothing Aim shows), and the Aim sequence it lands in. Pure.

MLflow's own spellings, read from `MlflowClient.log_image` / `log_table` / `log_figure`:

- `log_image(image, key=K, step=S)` (MLflow >= 2.12) writes `images/<K>+step+<S>+timestamp+<ms>+<uuid>.png`
  and a smaller twin `...+<uuid>+compressed.webp`, `/` in K spelled `~`; before MLflow 3.x the
  separator was `%` and `/` was spelled `#` (`images/<K>%step%<S>%timestamp%<ms>%<uuid>.png`).
- `log_table(data, "x.json")` writes pandas' `orient="split"` JSON and lists the file in the run
  tag `mlflow.loggedArtifacts` (`[{"path": "x.json", "type": "table"}]`); image cells go to
  `table_images/<table>/<uuid>.png` (+ `.webp`).
- `log_figure` writes what the figure library writes: png/jpeg/svg/pdf for matplotlib, html (or
  an image through kaleido) for plotly.

Names go through the metric-key mapper (`keys.RunContextMapper.map_media`): a step image's key, any
other file's path without its extension; `<name>_<lang>` with a language the run's metrics carry
gets the `{lang: ...}` they get. When two sequences (or a sequence and a metric of the run)
would land on the same name and context, the first keeps it and the others are written under
their MLflow name (the key, or the path) with context `{kind: <kind>}`."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .artifact_kinds import artifact_kind
from .keys import MappedMetric, RunContextMapper

LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
TABLE_IMAGES = "table_images/"
FIGURE_EXT = {".html", ".htm"}  # plotly's write_html (an aim.Figure when it holds one plotly figure)
VECTOR_EXT = {".svg"}  # shown by Aim's UI as an image (svg+xml)

_STEP_IMAGE = (  # (pattern, how `/` is spelled in the key)
    re.compile(
        r"^images/(?P<key>[^/+%]+)\+step\+(?P<step>-?\d+)\+timestamp\+(?P<ts>-?\d+)\+(?P<uid>[0-9A-Za-z-]+)"
        r"(?P<compressed>\+compressed)?\.(?P<ext>png|webp)$"
    ),
    re.compile(
        r"^images/(?P<key>[^/+%]+)%step%(?P<step>-?\d+)%timestamp%(?P<ts>-?\d+)%(?P<uid>[0-9A-Za-z-]+)"
        r"(?P<compressed>%compressed)?\.(?P<ext>png|webp)$"
    ),
)


@dataclass(frozen=True)
class StepImage:
    """One file of `mlflow.log_image(key=..., step=...)`."""

    key: str
    step: int
    timestamp: int  # ms, MLflow's
    uid: str
    compressed: bool  # the `.webp` twin MLflow writes for its own UI


def parse_step_image(path: str) -> StepImage | None:
    """The key, step, timestamp and uuid in a step image's file name (either spelling), or None."""
    for pattern in _STEP_IMAGE:
        m = pattern.match(path)
        if m:
            key = m.group("key").replace("~", "/").replace("#", "/")
            return StepImage(key, int(m.group("step")), int(m.group("ts")), m.group("uid"), bool(m.group("compressed")))
    return None


def logged_tables(tags: dict[str, str]) -> set[str]:
    """Paths of the `mlflow.log_table` artifacts, from the run's `mlflow.loggedArtifacts` tag."""
    try:
        items = json.loads(tags.get(LOGGED_ARTIFACTS_TAG) or "[]")
    except ValueError:
        return set()
    if not isinstance(items, list):
        return set()
    return {
        i["path"] for i in items if isinstance(i, dict) and i.get("type") == "table" and isinstance(i.get("path"), str)
    }


@dataclass(frozen=True)
class Media:
    """A listed artifact Aim can show, and where it goes. `owner` is what names the sequence:
    the MLflow key of a step image, the path of any other file."""

    path: str
    kind: str  # image | text | audio | table | figure (aim.Image / Text / Audio / Text / Figure)
    owner: str
    step: int = 0
    timestamp: int | None = None  # ms: a step image's own; None: the run's time
    uid: str = ""

    @property
    def step_image(self) -> bool:
        return self.owner != self.path

    @property
    def key(self) -> str:
        """What the metric-key mapper maps: a step image's key, a file's path without extension."""
        return self.owner if self.step_image else media_name(self.path)


def media_of(paths: Iterable[str], tags: dict[str, str]) -> tuple[dict[str, Media], dict[str, str]]:
    """({path: Media} for what Aim can show, {path: why not} for files left out on purpose:
    compressed twins of step images, a table's image cells)."""
    paths = list(paths)
    listed = set(paths)
    tables = logged_tables(tags)
    media: dict[str, Media] = {}
    left: dict[str, str] = {}
    for path in paths:
        si = parse_step_image(path)
        if si is not None:
            if si.compressed and _full_size(path) in listed:
                left[path] = "the compressed copy of a step image"
                continue
            media[path] = Media(path, "image", si.key, si.step, si.timestamp, si.uid)
            continue
        if path.startswith(TABLE_IMAGES) and tables:
            left[path] = "an image cell of a logged table (the table names it)"
            continue
        kind = _kind(path, tables)
        if kind is not None:
            media[path] = Media(path, kind, path)
    return media, left


def full_size_of(path: str) -> str | None:
    """The full-size step image a compressed `.webp` twin stands for; None for any other file."""
    si = parse_step_image(path)
    return _full_size(path) if si is not None and si.compressed else None


def _full_size(compressed_path: str) -> str:
    sep = "%" if compressed_path.endswith("%compressed.webp") else "+"
    return compressed_path[: -len(f"{sep}compressed.webp")] + ".png"


def _kind(path: str, tables: set[str]) -> str | None:
    if path in tables:
        return "table"
    ext = os.path.splitext(path)[1].lower()
    if ext in FIGURE_EXT:
        return "figure"
    if ext in VECTOR_EXT:
        return "image"
    return artifact_kind(path)


def media_name(path: str) -> str:
    """The name a file's sequence is mapped from: its path without the extension."""
    stem, _ext = os.path.splitext(path)
    return stem or path


@dataclass(frozen=True)
class Target:
    """The Aim sequence an owner's media land in."""

    name: str
    context: dict[str, Any]
    collided: bool = False  # kept its MLflow name: the mapped one was taken


def targets(
    media: Iterable[Media], mapper: RunContextMapper, metrics: Iterable[MappedMetric], *, first: Iterable[str] = ()
) -> dict[str, Target]:
    """{owner: Target} for one run's media (`metrics`: where the run's metrics land). The
    metrics keep their places; of two owners that would share a sequence, one in `first` (it
    has media in Aim already), else the first by name, keeps it and the other gets its MLflow
    name with `{kind: ...}`. An owner with no safe place at all is left out (listed, not copied)."""
    taken = {_slot(m.aim_name, m.context) for m in metrics}
    owners: dict[str, Media] = {}
    for m in media:
        owners.setdefault(m.owner, m)
    early = set(first)
    out: dict[str, Target] = {}
    for owner in sorted(owners, key=lambda o: (o not in early, o)):
        m = owners[owner]
        mapped = mapper.map_media(m.key)
        target = Target(mapped.name, dict(mapped.context))
        if _slot(target.name, target.context) in taken:
            target = Target(owner, {"kind": aim_kind(m.kind)}, collided=True)
            if _slot(target.name, target.context) in taken:
                continue
        taken.add(_slot(target.name, target.context))
        out[owner] = target
    return out


def aim_kind(kind: str) -> str:
    """The Aim object a media kind becomes: a table is text."""
    return "text" if kind == "table" else kind


def _slot(name: str, context: dict[str, Any]) -> tuple[str, str]:
    return name, json.dumps(context, sort_keys=True, default=str)
