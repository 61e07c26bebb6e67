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
# points of metric chunks that wait for one write (``SequenceTracker.settle``) at most
SETTLE_POINTS = 20_000


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
        self._ctxs: dict[Any, Any] = {}  # context items -> aim Context
        # chunks of points waiting for settle(): (series, context, name, steps, values, times)
        self._pending: list[tuple[_SeqInfo, Any, str, list[int], np.ndarray, np.ndarray]] = []
        self._pending_points = 0

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
        """One chunk of a metric series, validated. Without epochs (what the syncer writes) it
        waits with the other series' chunks for :meth:`settle`, which writes them all in one batch
        of each chunk; with epochs it is written now."""
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
        ctx = self._context(context)
        info = self._seq_info(ctx.idx, name)
        step_list = enc.int_list(steps, f"metric {name!r}: steps")
        enc.check_steps(step_list, f"metric {name!r}")
        vals = np.asarray(values, dtype=np.float64).reshape(n)
        times = np.asarray(timestamps, dtype=np.float64).reshape(n)
        if epochs is not None:
            self.settle()
            self._write_series_each(info, step_list, vals, times, enc.encode_epochs(epochs, n))
            self._write_meta([(info, ctx, name, step_list, vals)])
            return
        self._pending.append((info, ctx, name, step_list, vals, times))
        self._pending_points += n
        if self._pending_points >= SETTLE_POINTS:
            self.settle()

    def _context(self, context: dict[str, Any] | None) -> Any:
        """Aim's ``Context`` of a context dict (made once per distinct context: it hashes)."""
        from aim.storage.context import Context

        try:
            key: Any = tuple(sorted((context or {}).items()))
            hash(key)
        except TypeError:  # unhashable values: made every time
            return Context(cast(Any, dict(context or {})))
        ctx = self._ctxs.get(key)
        if ctx is None:
            ctx = self._ctxs[key] = Context(cast(Any, dict(context or {})))
        return ctx

    def settle(self) -> None:
        """Write the chunks of points waiting: their points in one batch of the seqs chunk (built
        with numpy: ``encoding.batch_rep``), then their series' bookkeeping in one batch of the
        meta chunk -- in that order, so a crash in between leaves metadata that lags, never
        metadata pointing at missing points (re-sending the chunks repairs it)."""
        pending, self._pending, self._pending_points = self._pending, [], 0
        if not pending:
            return
        try:
            self._settle(pending)
        except BaseException:  # nothing of them is known written (a full disk): they wait, so that
            # a later settle writes them or the writer's close fails, and no cursor gets ahead of them
            self._pending = pending + self._pending
            self._pending_points += sum(len(p[3]) for p in pending)
            raise

    def _settle(self, pending: list[tuple[_SeqInfo, Any, str, list[int], np.ndarray, np.ndarray]]) -> None:
        flags: list[tuple[bytes, bytes]] = []
        columns: list[tuple[bytes, np.ndarray, np.ndarray]] = []
        seen: set[int] = set()
        none = np.frombuffer(enc.NONE_ENC, dtype=np.uint8).reshape(1, -1)
        points = 0
        for info, _ctx, _name, steps, vals, times in pending:
            if id(info) not in seen:  # array flags (TreeArrayView.allocate); idempotent
                seen.add(id(info))
                flags += [(col, enc.ARRAY_FLAG) for col in info.prefixes]
            pv, ps, pe, pt = info.prefixes
            keys = enc.step_key_array(steps)
            n = len(steps)
            columns += [
                (pv, keys, enc.encode_column_array(enc.FLOAT_TAG, vals)),
                (ps, keys, enc.encode_column_array(enc.INT_TAG, np.asarray(steps, dtype=np.int64))),
                (pe, keys, np.broadcast_to(none, (n, none.shape[1]))),
                (pt, keys, enc.encode_column_array(enc.FLOAT_TAG, times)),
            ]
            points += n
        self._chunks.write_seqs_rep(enc.batch_rep(flags, columns), points)
        self._write_meta([p[:5] for p in pending])

    def _write_series_each(
        self, info: _SeqInfo, steps: list[int], vals: np.ndarray, times: np.ndarray, e_enc: list[bytes]
    ) -> None:
        """The points of one chunk with epochs: one put at a time, into one batch of the seqs chunk."""
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
        self._chunks.write_seqs(batch, len(steps))

    def _write_meta(self, chunks: list[tuple[_SeqInfo, Any, str, list[int], np.ndarray]]) -> None:
        """The bookkeeping of the series these chunks belong to, in one batch of the meta chunk."""
        mbatch = self._chunks.meta.batch()
        urgent = False
        for info, ctx, name, steps, vals in chunks:
            # a new sequence must reach the index soon (readers find sequences there); new points
            # of a known one are read from the seqs chunk, only its last value / step lag
            urgent |= info.new
            self._series_meta(mbatch, info, ctx, name, steps, vals)
        self._chunks.commit_meta(mbatch, urgent=urgent)

    def _series_meta(
        self, mbatch: Any, info: _SeqInfo, ctx: Any, name: str, steps: list[int], vals: np.ndarray
    ) -> None:
        """One chunk's share of its series' bookkeeping: first / last value and step, min, max
        (and, for a new series, its context, type and version)."""
        n = len(steps)
        lo_step, hi_step = min(steps), max(steps)
        lo = n - 1 - steps[::-1].index(lo_step)  # last occurrence of the smallest step
        hi = n - 1 - steps[::-1].index(hi_step)  # last occurrence of the largest step
        lo_val, hi_val = float(vals[lo]), float(vals[hi])
        vmin, vmax = info.min, info.max
        ok = ~np.isnan(vals)  # Aim's min/max comparisons skip NaN
        if ok.any():
            vmax = max(vmax, float(vals[ok].max()))
            vmin = min(vmin, float(vals[ok].min()))

        ctx_idx = ctx.idx
        chunks = self._chunks
        mput = mbatch.put
        tprefix = enc.encode_path(("meta", "chunks", self.hash, "traces", ctx_idx, name))

        def meta_put(key: str, value: Any) -> None:
            # a put, not RocksContainer.set: that also deletes the key's twin in the blob domain,
            # a tombstone per key in the chunk; a metric's keys have no twin (the only blobs in a
            # meta chunk are media objects' data, under their own series)
            mput(tprefix + enc.encode_key(key) + enc.PATH_SENTINEL, enc.encode(value))

        if info.new:
            # put, not set: a context's index is the hash of its dict (an old entry there is the
            # same dict) and the type flags are scalars; Aim's own tracker clears each first,
            # which leaves a range tombstone per series in the chunk that every read skips
            if ctx_idx not in self._contexts:
                cd = ctx.to_dict()
                chunks.tree_put(mbatch, ("meta", "contexts", ctx_idx), cd)
                chunks.tree_put(mbatch, ("meta", "chunks", self.hash, "contexts", ctx_idx), cd)
                self._contexts.add(ctx_idx)
            chunks.tree_put(mbatch, ("meta", "traces_types", "float", ctx_idx, name), 1)
            chunks.tree_put(mbatch, ("meta", "chunks", self.hash, "typed_traces", "metric", ctx_idx, name), 1)
            meta_put("dtype", "float")
            meta_put("version", 2)
            info.new = False
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

    def write_objects(
        self, name: str, context: dict[str, Any] | None, step: int, timestamp: float, obj: Any, epoch: int | None
    ) -> None:
        """One object at ``step``, through Aim's ``RunTracker``; not into a metric series."""
        self.settle()
        ctx = self._context(context)
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
