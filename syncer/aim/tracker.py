"""A run's sequences: metric series written in batches, objects through Aim's ``RunTracker``.

What ``aim.sdk.tracker.RunTracker`` does for ``Run.track``, for a whole chunk of points at a
time: the points go to the seqs chunk (``seqs/v2/chunks/<hash>/<ctx>/<name>/<col>/<step key>``,
one RocksDB batch), then the series' bookkeeping to the meta chunk (``traces/<ctx>/<name>``:
dtype, version, first / last value and step, min, max; ``contexts``; ``typed_traces``) -- in that
order, so a crash in between leaves metadata that lags, never metadata pointing at missing
points; re-sending the chunk repairs it.

Caveat (Aim 3.29): metric min/max are running aggregates: overwriting a point with a different
value does not shrink them (Aim's own tracker behaves the same).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from . import encoding as enc
from .chunks import RunChunks

_METRIC_DTYPES = ("float", "int", "float64", "number")


@dataclass
class _SeqInfo:
    """What the meta tree says about one metric series (kept in memory between chunks)."""

    new: bool
    first_step: int | None = None
    last_step: int | None = None
    min: float = math.inf
    max: float = -math.inf
    prefixes: tuple[bytes, ...] = (b"", b"", b"", b"")  # val, step, epoch, time


class SequenceTracker:
    """Writes the sequences of one run into its (open) chunks; see ``AimRunWriter.write_points``
    and ``AimRunWriter.write_objects``."""

    def __init__(self, chunks: RunChunks, *, new_run: bool = False) -> None:
        self._chunks = chunks
        self.hash = chunks.hash
        self._new_run = new_run  # no chunk before this writer: only its own series to look up
        self._objects: set[tuple[int, str]] = set()  # object sequences written through here
        self._seqs: dict[tuple[int, str], _SeqInfo] = {}  # metric series written through here
        self._contexts: set[int] = set()  # contexts stored through here

    def _seq_info(self, ctx_idx: int, name: str) -> _SeqInfo:
        key = (ctx_idx, name)
        info = self._seqs.get(key)
        if info is not None:
            return info
        try:
            known = not self._new_run or key in self._objects
            meta = self._chunks.meta_run_tree.subtree(("traces", ctx_idx, name)).collect() if known else None
        except KeyError:
            meta = None
        if not meta:
            info = _SeqInfo(new=True)
        else:
            dtype = meta.get("dtype", "float")
            if dtype not in _METRIC_DTYPES:
                raise ValueError(
                    f"Aim sequence {name!r} {self._ctx_repr(ctx_idx)} holds {dtype!r} objects, not metric values"
                )
            if meta.get("version", 1) != 2:
                raise ValueError(
                    f"Aim metric {name!r} uses the pre-3.11 storage layout; run `aim storage upgrade 3.11+`"
                )
            info = _SeqInfo(
                new=False,
                first_step=meta.get("first_step"),
                last_step=meta.get("last_step"),
                min=meta.get("min", math.inf),
                max=meta.get("max", -math.inf),
            )
            if dtype != "float":
                info.new = True  # rewrite dtype bookkeeping as float
        path = ("seqs", "v2", "chunks", self.hash, ctx_idx, name)
        info.prefixes = tuple(enc.column_prefix(path, col) for col in ("val", "step", "epoch", "time"))
        self._seqs[key] = info
        return info

    def _ctx_repr(self, ctx_idx: int) -> str:
        try:
            return f"context {self._chunks.meta_tree['contexts', ctx_idx]!r}"
        except KeyError:
            return f"context #{ctx_idx}"

    def write_points(
        self,
        name: str,
        context: dict[str, Any] | None,
        steps: Sequence[int],
        values: Sequence[float],
        timestamps: Sequence[float],
        epochs: Sequence[int | None] | None,
    ) -> None:
        """One chunk of a metric series: validated, then written in one RocksDB batch."""
        if not isinstance(name, str) or not name:
            raise ValueError("metric name must be a non-empty string")
        n = len(steps)
        if len(values) != n or len(timestamps) != n or (epochs is not None and len(epochs) != n):
            raise ValueError(
                f"metric {name!r}: steps/values/timestamps/epochs lengths differ "
                f"({n}, {len(values)}, {len(timestamps)}, {None if epochs is None else len(epochs)})"
            )
        if n == 0:
            return
        from aim.storage.context import Context

        ctx = Context(cast(Any, dict(context or {})))
        info = self._seq_info(ctx.idx, name)
        step_list = enc.int_list(steps, f"metric {name!r}: steps")
        enc.check_steps(step_list, f"metric {name!r}")
        vals = np.asarray(values, dtype=np.float64).reshape(n)
        times = np.asarray(timestamps, dtype=np.float64).reshape(n)
        self._write_series(info, step_list, vals, times, epochs)
        self._write_series_meta(info, ctx, name, step_list, vals)

    def _write_series(self, info: _SeqInfo, steps: list[int], vals: np.ndarray, times: np.ndarray, epochs: Any) -> None:
        """The points: one batch into the seqs chunk, built with numpy (`encoding.batch_rep`)
        when no point has an epoch (what the syncer writes), else one put at a time."""
        if epochs is None:
            pv, ps, pe, pt = info.prefixes
            keys = enc.step_key_array(steps)
            rep = enc.batch_rep(
                [(col, enc.ARRAY_FLAG) for col in info.prefixes],  # array flags (TreeArrayView.allocate)
                [
                    (pv, keys, enc.encode_column_array(enc.FLOAT_TAG, vals)),
                    (ps, keys, enc.encode_column_array(enc.INT_TAG, np.asarray(steps, dtype=np.int64))),
                    (pe, keys, np.broadcast_to(np.frombuffer(enc.NONE_ENC, dtype=np.uint8), (len(steps), 1))),
                    (pt, keys, enc.encode_column_array(enc.FLOAT_TAG, times)),
                ],
            )
            self._chunks.write_seqs_rep(rep, len(steps))
            return
        self._write_series_each(info, steps, vals, times, enc.encode_epochs(epochs, len(steps)))

    def _write_series_each(
        self, info: _SeqInfo, steps: list[int], vals: np.ndarray, times: np.ndarray, e_enc: list[bytes]
    ) -> None:
        pv, ps, pe, pt = info.prefixes
        keys = enc.step_keys(steps)
        v_enc = enc.encode_column(enc.FLOAT_TAG, vals)
        s_enc = enc.encode_column(enc.INT_TAG, np.asarray(steps, dtype=np.int64))
        t_enc = enc.encode_column(enc.FLOAT_TAG, times)
        batch = self._chunks.seqs().batch()
        put = batch.put
        for col in info.prefixes:
            put(col, enc.ARRAY_FLAG)  # array flags (TreeArrayView.allocate); idempotent
        for k, v, s, e, t in zip(keys, v_enc, s_enc, e_enc, t_enc):
            put(pv + k, v)
            put(ps + k, s)
            put(pe + k, e)
            put(pt + k, t)
        # series data first, then its metadata: a crash in between leaves metadata that lags
        # (never metadata pointing at missing points); re-sending the chunk repairs it.
        self._chunks.write_seqs(batch, len(steps))

    def _write_series_meta(self, info: _SeqInfo, ctx: Any, name: str, steps: list[int], vals: np.ndarray) -> None:
        """The series' bookkeeping in the meta chunk: first / last value and step, min, max
        (and, for a new series, its context, type and version)."""
        n = len(steps)
        st = np.asarray(steps, dtype=np.int64)
        lo = n - 1 - int(np.argmin(st[::-1]))  # last occurrence of the smallest step
        hi = n - 1 - int(np.argmax(st[::-1]))  # last occurrence of the largest step
        lo_step, lo_val = steps[lo], float(vals[lo])
        hi_step, hi_val = steps[hi], float(vals[hi])
        vmin, vmax = info.min, info.max
        ok = ~np.isnan(vals)  # Aim's min/max comparisons skip NaN
        if ok.any():
            vmax = max(vmax, float(vals[ok].max()))
            vmin = min(vmin, float(vals[ok].min()))

        ctx_idx = ctx.idx
        chunks = self._chunks
        mbatch = chunks.meta.batch()
        mset = chunks.meta.set
        tprefix = enc.encode_path(("meta", "chunks", self.hash, "traces", ctx_idx, name))

        def meta_put(key: str, value: Any) -> None:
            mset(tprefix + enc.encode_key(key) + enc.PATH_SENTINEL, enc.encode(value), store_batch=mbatch)

        if info.new:
            if ctx_idx not in self._contexts:
                cd = ctx.to_dict()
                self._chunks.tree_set(mbatch, ("meta", "contexts", ctx_idx), cd)
                self._chunks.tree_set(mbatch, ("meta", "chunks", self.hash, "contexts", ctx_idx), cd)
                self._contexts.add(ctx_idx)
            self._chunks.tree_set(mbatch, ("meta", "traces_types", "float", ctx_idx, name), 1)
            self._chunks.tree_set(mbatch, ("meta", "chunks", self.hash, "typed_traces", "metric", ctx_idx, name), 1)
            meta_put("dtype", "float")
            meta_put("version", 2)
        if info.first_step is None or lo_step <= info.first_step:
            meta_put("first", lo_val)
            meta_put("first_step", lo_step)
            info.first_step = lo_step
        if info.last_step is None or hi_step >= info.last_step:
            meta_put("last", hi_val)
            meta_put("last_step", hi_step)
            info.last_step = hi_step
        if vmax > info.max:
            meta_put("max", vmax)
            info.max = vmax
        if vmin < info.min:
            meta_put("min", vmin)
            info.min = vmin
        # a new sequence must reach the index soon (readers find sequences there); new points
        # of a known one are read from the seqs chunk, only its last value / step lag
        self._chunks.commit_meta(mbatch, urgent=info.new)
        info.new = False

    def write_objects(
        self, name: str, context: dict[str, Any] | None, step: int, timestamp: float, obj: Any, epoch: int | None
    ) -> None:
        """One object at ``step``, through Aim's ``RunTracker``; not into a metric series."""
        from aim.storage.context import Context

        ctx = Context(cast(Any, dict(context or {})))
        if (ctx.idx, name) in self._seqs:
            raise ValueError(f"Aim sequence {name!r} in context {ctx.to_dict()!r} holds metric values")
        dtype = self._chunks.meta_run_tree.get(("traces", ctx.idx, name, "dtype"), None)
        if dtype in _METRIC_DTYPES:
            raise ValueError(f"Aim sequence {name!r} in context {ctx.to_dict()!r} holds metric values")
        self._objects.add((ctx.idx, name))
        self._chunks.track_object(
            obj,
            float(timestamp),
            name,
            operator.index(step),
            None if epoch is None else operator.index(epoch),
            ctx.to_dict(),
        )
