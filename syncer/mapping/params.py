"""MLflow param strings -> typed values for Aim. Pure."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any

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
