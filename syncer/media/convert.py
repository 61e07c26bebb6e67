"""One listed file -> the Aim object it becomes, by the kind `mapping.media_names` gave it."""

from __future__ import annotations

import os
from typing import Any

from ..sources.local_artifacts import read_regular
from .figures import NotAFigure, figure_from_html, figure_from_json, plotly_available
from .images import raster_image, svg_image
from .tables import table_text


class NotShown(Exception):
    """A file that turned out not to be what its name promised (an HTML page that holds no plotly
    figure, a figure while plotly is not installed): listed, not copied, and no error."""


def aim_object(kind: str, local_file: str, path: str, *, caption: str, max_bytes: int | None = None) -> tuple[Any, str]:
    """(the Aim object, the kind it was copied as) for one file. Raises NotShown, or any
    decoder's error for a file that is broken."""
    from aim.sdk.objects.audio import Audio
    from aim.sdk.objects.text import Text

    data = read_regular(local_file, max_bytes)
    ext = os.path.splitext(path)[1].lower()
    if kind == "image":
        return (svg_image if ext == ".svg" else raster_image)(data, caption), "image"
    if kind == "table":
        return Text(table_text(data)), "table"
    if kind == "figure":
        if not plotly_available():
            raise NotShown("a figure, but plotly is not installed where the syncer runs")
        try:
            return figure_from_html(data), "figure"
        except NotAFigure as e:
            raise NotShown(str(e)) from None
    if kind == "text":
        if ext == ".json" and plotly_available():
            try:
                return figure_from_json(data), "figure"
            except (NotAFigure, ValueError):
                pass  # any other JSON: text
        return Text(data.decode("utf-8", "replace")), "text"
    if kind == "audio":
        return Audio(data, format=ext.lstrip("."), caption=caption), "audio"
    raise ValueError(f"unknown media kind {kind!r}")


def aim_objects(objs: list[Any], *, steps: bool) -> Any:
    """What one step of a sequence holds. A step-image sequence holds a list at every step
    (MLflow may log several images at one step, and Aim types a sequence once: `list(aim.image)`);
    a file's own sequence holds its one object."""
    return list(objs) if steps else objs[0]
