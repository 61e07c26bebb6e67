"""`mlflow.log_table` JSON (pandas' `orient="split"`: columns, data) -> a text table that reads
well in Aim's text explorer: one line per row, columns aligned, cells cut at a readable width;
image cells (`{"type": "image", "filepath": ...}`) named by their artifact path."""

from __future__ import annotations

import json
from typing import Any

MAX_CELL = 60  # characters a cell shows (the whole value stays in the artifact)


def table_text(data: bytes) -> str:
    doc = json.loads(data.decode("utf-8"))
    if not isinstance(doc, dict) or not isinstance(doc.get("columns"), list) or not isinstance(doc.get("data"), list):
        raise ValueError("not a table written by mlflow.log_table (no columns and data)")
    header = [_cell(c) for c in doc["columns"]]
    rows = [[_cell(v) for v in row] if isinstance(row, list) else [_cell(row)] for row in doc["data"]]
    width = [max([len(header[i])] + [len(r[i]) for r in rows if i < len(r)]) for i in range(len(header))]
    lines = [_line(header, width), "-+-".join("-" * w for w in width)]
    lines += [_line(r, width) for r in rows]
    lines.append(f"({_count(len(rows), 'row')}, {_count(len(header), 'column')})")
    return "\n".join(lines) + "\n"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _line(cells: list[str], width: list[int]) -> str:
    return " | ".join(c.ljust(w) for c, w in zip(cells, width)).rstrip()


def _cell(v: Any) -> str:
    if isinstance(v, dict) and v.get("type") == "image" and "filepath" in v:
        text = f"[image {v['filepath']}]"
    elif isinstance(v, str):
        text = v
    elif v is None:
        text = ""
    else:
        text = json.dumps(v, ensure_ascii=False, default=str)
    text = " ".join(text.split())
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"
