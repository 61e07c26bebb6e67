"""Aim's structured database (``<repo>/.aim/run_metadata.sqlite``): runs, experiments, tags.

The same tables ``aim.storage.structured.sql_engine.entities.ModelMappedRun`` writes.  What
the UI takes from here:

* creation time = the ``run.created_at`` column (naive UTC); the runs table is ordered by it
  (``ORDER BY created_at DESC``), ``creation_time`` in the web API is its timestamp;
  ``finalized_at`` is only a fallback for the end time (which lives in the meta tree) and is
  kept equal to it;
* name, description, experiment (with its description), tags (the Tags column);
* notes (the run page's Notes tab shows the one updated last, ``note`` table);
* the archived flag: ``Run.metrics()`` / ``Repo.query_metrics(q)`` / ``query_runs(q)`` add
  ``run.archived == False`` to every query that does not mention ``run.archived``, so an
  archived run (MLflow deleted) lists no metrics there, as with Aim's own SDK.  Its Run page
  shows them (``collect_sequence_info``); read them with ``iter_metrics_info()`` +
  ``get_metric()`` or a query with ``run.archived == True``.

A writer collects its run's row changes in a :class:`RunRow` and commits them in one
transaction when it flushes or closes.
"""

from __future__ import annotations

import datetime as _dt
from contextlib import nullcontext
from typing import Any

from ..retry import retrying
from .repo import get_repo

# commit retries when an experiment / tag was created meanwhile by another process
COMMIT_ATTEMPTS = 3

_MISSING = object()


def utc_naive(ts: float) -> _dt.datetime:
    """Seconds since the epoch -> naive UTC datetime, as Aim's structured DB stores them."""
    return _dt.datetime.fromtimestamp(float(ts), tz=_dt.UTC).replace(tzinfo=None)


class RunRow:
    """One run's row in the structured DB: changes collected, then committed in one
    transaction (creating the row, with its experiment, when missing)."""

    def __init__(self, repo: Any, run_hash: str, *, experiment: str | None, exists: bool | None = None) -> None:
        self._repo = repo
        self.hash = run_hash
        self.pending: dict[str, Any] = {}  # changes not committed yet
        self._committed: dict[str, Any] = {}  # times as last committed
        if not (repo.structured_db.find_run(run_hash) if exists is None else exists):
            self.pending["create"] = True
        if experiment is not None:
            self.pending["experiment"] = str(experiment)

    @property
    def is_new(self) -> bool:
        """Whether the row is not in the DB yet (created by the next :meth:`commit`)."""
        return bool(self.pending.get("create"))

    def set_info(
        self, *, name: str, description: str | None, archived: bool, labels: list[str], labels_remove: list[str]
    ) -> None:
        """The run's name, description, archived flag and tags: ``labels`` are attached when
        missing, ``labels_remove`` detached when attached (other tags are left alone)."""
        self.pending.update(
            name=name, description=description, archived=archived, labels=labels, labels_remove=labels_remove
        )

    def set_note(self, text: str | None, *, before: str | None) -> None:
        """The run note this writer keeps: the note whose text is ``before`` (what it wrote last
        time) becomes ``text``; none such: a new note; ``text`` None: that note is removed.
        Nothing pending when the note is as written last time."""
        if text != before:
            self.pending.update(note=text, note_before=before)

    def set_times(self, created_at: float, ended_at: float | None) -> None:
        """Creation and end time (seconds); nothing pending when they are as last committed (a
        writer kept open commits them once, not every sync)."""
        times = {
            "created_at": utc_naive(created_at),
            "finalized_at": utc_naive(ended_at) if ended_at is not None else None,
        }
        if any(self._committed.get(k, _MISSING) != v for k, v in times.items()):
            self.pending.update(times)

    def commit(self) -> None:
        """Apply the pending changes in one transaction; nothing to do: no DB access."""
        commit_rows(self._repo, [self])

    def committed(self) -> None:
        """The pending changes are in the DB now."""
        p = self.pending
        self._committed.update((k, p[k]) for k in ("created_at", "finalized_at") if k in p)
        self.pending = {}


def commit_rows(repo: Any, rows: list[RunRow]) -> None:
    """Apply the pending changes of several runs' rows in one transaction (a batch of runs pays
    for one commit); rows with nothing pending cost nothing."""
    rows = [r for r in rows if r.pending]
    if not rows:
        return
    from sqlalchemy.exc import IntegrityError

    db = repo.structured_db
    creating = any(r.pending.get("create") for r in rows)

    def attempt() -> None:
        session = db.get_session()
        try:
            with repo._sdb_lock if creating else nullcontext():
                _apply(session, rows)
                session.commit()
        except BaseException:
            session.rollback()
            raise

    # an experiment or tag created meanwhile by another process: look again
    for tried in retrying(IntegrityError, attempts=COMMIT_ATTEMPTS, first_wait=0.0, max_wait=0.0):
        with tried:
            attempt()
    for r in rows:
        r.committed()


def existing_rows(repo: Any, run_hashes: list[str]) -> set[str]:
    """Which of these runs have a row in the structured DB (a query per 500 runs)."""
    from aim.storage.structured.sql_engine.models import Run as RunModel

    session = get_repo(repo).structured_db.get_session()
    try:
        found: set[str] = set()
        for i in range(0, len(run_hashes), 500):
            part = run_hashes[i : i + 500]
            found.update(h for (h,) in session.query(RunModel.hash).filter(RunModel.hash.in_(part)))
        return found
    finally:
        session.close()


def _apply(session: Any, rows: list[RunRow]) -> None:
    """The rows' changes in an open session: the runs, experiments and tags they name looked up
    once for all of them."""
    from aim.storage.structured.sql_engine.models import Experiment as ExperimentModel
    from aim.storage.structured.sql_engine.models import Run as RunModel
    from aim.storage.structured.sql_engine.models import Tag as TagModel
    from aim.storage.structured.sql_engine.models import run_tags

    hashes = [r.hash for r in rows]
    models = {m.hash: m for m in session.query(RunModel).filter(RunModel.hash.in_(hashes))}
    exp_names = {r.pending.get("experiment") or "default" for r in rows}
    exps = {e.name: e for e in session.query(ExperimentModel).filter(ExperimentModel.name.in_(exp_names))}
    tag_names = {t for r in rows for t in r.pending.get("labels", ())}
    tags = {t.name: t for t in session.query(TagModel).filter(TagModel.name.in_(tag_names))} if tag_names else {}
    new = []
    for r in rows:
        if r.hash not in models:
            models[r.hash] = m = RunModel(r.hash, r.pending.get("created_at"))
            m.tags, m.notes = [], []  # known empty: never loaded from the DB
            session.add(m)
            new.append(r.hash)
    if new:
        session.flush()  # their ids: SQLite hands out the id of a removed last row again
        # `aim runs rm` deletes the run row but leaves its tag links: a new row with the same id
        # would inherit them (or fail on them), so drop links to these ids first
        session.execute(run_tags.delete().where(run_tags.c.run_id.in_([models[h].id for h in new])))
    for r in rows:
        _apply_row(session, models[r.hash], r.pending, r.hash in new, exps, tags)


def _apply_row(
    session: Any, model: Any, p: dict[str, Any], new: bool, exps: dict[str, Any], tags: dict[str, Any]
) -> None:
    from aim.storage.structured.sql_engine.models import Experiment as ExperimentModel
    from aim.storage.structured.sql_engine.models import Tag as TagModel

    exp_name = p.get("experiment") or ("default" if new else None)
    if exp_name is not None and (model.experiment is None or model.experiment.name != exp_name):
        exp = exps.get(exp_name)
        if exp is None:
            exp = exps[exp_name] = ExperimentModel(exp_name)
            session.add(exp)
        model.experiment = exp
    for attr in ("name", "description", "created_at", "finalized_at"):
        if attr in p and getattr(model, attr) != p[attr]:
            setattr(model, attr, p[attr])
    if "archived" in p and bool(model.is_archived) != p["archived"]:
        model.is_archived = p["archived"]
    if "note" in p:
        _apply_note(session, model, p["note"], p["note_before"])
    if "labels" in p:
        attached = {t.name: t for t in model.tags}
        for tag_name in p["labels_remove"]:
            if tag_name in attached:
                model.tags.remove(attached.pop(tag_name))
        for tag_name in p["labels"]:
            if tag_name not in attached:
                tag = tags.get(tag_name)
                if tag is None:
                    tag = tags[tag_name] = TagModel(tag_name)
                    session.add(tag)
                model.tags.append(tag)
                attached[tag_name] = tag


def _apply_note(session: Any, model: Any, text: str | None, before: str | None) -> None:
    """Aim's `Run.add_note` / `update_note` / `remove_note` (sql_engine.entities), on the run's
    row in this session; an audit-log entry each, as Aim writes."""
    from aim.storage.structured.sql_engine.models import Note as NoteModel
    from aim.storage.structured.sql_engine.models import NoteAuditLog

    ours = next((n for n in model.notes if before is not None and n.content == before), None)
    if ours is None and text is not None:
        ours = next((n for n in model.notes if n.content == text), None)  # already there (a crash after)
        if ours is not None:
            return
        note = NoteModel(text)
        session.add(note)
        model.notes.append(note)
        session.flush()  # its id, for the audit log
        session.add(_audit(NoteAuditLog, note.id, "Created", None, text))
    elif ours is not None and text is None:
        from sqlalchemy import delete

        session.add(_audit(NoteAuditLog, ours.id, "Deleted", None, None))
        # as Aim's remove_note: a plain DELETE (the ORM would detach the audit log from the note)
        session.execute(delete(NoteModel).where(NoteModel.id == ours.id))
        session.expire(model, ["notes"])
    elif ours is not None and ours.content != text:
        session.add(_audit(NoteAuditLog, ours.id, "Updated", ours.content, text))
        ours.content = text


def _audit(model: Any, note_id: Any, action: str, before: str | None, after: str | None) -> Any:
    entry = model(action=action, before=before, after=after)
    entry.note_id = note_id
    return entry


def set_experiment_description(repo: Any, name: str, description: str | None) -> None:
    """Set the description of Aim experiment ``name`` (created when missing)."""
    db = get_repo(repo).structured_db
    exp = next((e for e in db.experiments() if e.name == name), None)
    if exp is None:
        try:
            exp = db.create_experiment(name)
        except ValueError:  # created meanwhile
            exp = next(e for e in db.experiments() if e.name == name)
    if exp.description != description:
        exp.description = description
