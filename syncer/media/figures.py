"""Plotly figures -> `aim.Figure`, only where that is faithful: a plotly JSON document (`fig.to_json()`,
`write_json`, `mlflow.log_dict(fig.to_dict(), ...)`), or the HTML plotly's `write_html` writes
(what `mlflow.log_figure` writes for `.html`) when it holds exactly one figure and no frames.
Plotly (optional) validates the figure; without it nothing is converted."""

from __future__ import annotations

import json
from typing import Any

_NEW_PLOT = "Plotly.newPlot("


class NotAFigure(ValueError):
    """The file is not (only) one plotly figure; the reason says why."""


def plotly_available() -> bool:
    try:
        import plotly.io  # noqa: F401
    except ImportError:
        return False
    return True


def figure_from_json(data: bytes) -> Any:
    doc = json.loads(data.decode("utf-8"))
    if not (isinstance(doc, dict) and isinstance(doc.get("data"), list) and set(doc) <= {"data", "layout", "frames"}):
        raise NotAFigure("not a plotly figure")
    return _figure(doc)


def figure_from_html(data: bytes) -> Any:
    text = data.decode("utf-8", "replace")
    start = text.find(_NEW_PLOT)
    if start < 0 or text.find(_NEW_PLOT, start + 1) >= 0:
        raise NotAFigure("not one plotly figure")
    if "Plotly.addFrames" in text:
        raise NotAFigure("a plotly animation (frames are not kept by aim.Figure)")
    decoder = json.JSONDecoder()
    pos = start + len(_NEW_PLOT)
    args = []
    for _ in range(3):  # the div id, the data, the layout
        pos = _skip(text, pos)
        value, pos = decoder.raw_decode(text, pos)
        args.append(value)
        pos = _skip(text, pos)
        if text[pos : pos + 1] == ",":
            pos += 1
    _div, traces, layout = args
    if not isinstance(traces, list) or not isinstance(layout, dict):
        raise NotAFigure("not a plotly figure")
    return _figure({"data": traces, "layout": layout})


def _figure(doc: dict[str, Any]) -> Any:
    import plotly.io
    from aim.sdk.objects.figure import Figure

    try:
        fig = plotly.io.from_json(json.dumps(doc))
    except ValueError as e:
        raise NotAFigure(f"not a valid plotly figure ({str(e).splitlines()[0][:120]})") from None
    return Figure(fig)


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos].isspace():
        pos += 1
    return pos
