"""The sync state: pure bookkeeping in sqlite, tested apart from any store."""

from __future__ import annotations

import sqlite3

import pytest
from syncer.errors import BadInput
from syncer.sources.cursors import FileCursor
from syncer.state import SCHEMA_VERSION, State


def test_a_state_of_the_previous_schema_is_upgraded_in_place_keeping_its_cursors(tmp_path):
    """A state written before the logged models' digest was kept (schema 2) opens, gains the
    column, and keeps every run and cursor: nothing is sent again."""
    path = tmp_path / "state.sqlite"
    st = State(path, "file:///store")
    st.save_run("r1", "hash1", "exp", "fp1", "FINISHED", name="one")
    st.save_cursors("r1", [("loss", FileCursor(120, 10, 120))])
    st.close()
    with sqlite3.connect(path) as db:  # as schema 2 left it
        db.execute("ALTER TABLE runs DROP COLUMN models_digest")
        db.execute("ALTER TABLE metrics DROP COLUMN aim")
        db.execute("UPDATE meta SET value='2' WHERE key='schema'")

    st = State(path, "file:///store")
    try:
        assert st.run("r1").fingerprint == "fp1" and st.run("r1").models_digest is None
        assert st.cursors("r1") == {"loss": FileCursor(120, 10, 120)}
        st.save_run("r1", "hash1", "exp", "fp1", "FINISHED", name="one", models_digest="m1")
        st.save_run("r1", "hash1", "exp", "fp2", "FINISHED", name="one")  # models not read this time: kept
        assert (st.run("r1").fingerprint, st.run("r1").models_digest) == ("fp2", "m1")
        assert st.key_names("r1") == {}  # where its points went is kept from the next write on
        st.save_cursors("r1", [("loss", FileCursor(130, 11, 130))], {"loss": "A"})
        st.save_cursors("r1", [("loss", FileCursor(140, 12, 140))], {"loss": "B"})  # the first one stays
        assert st.key_names("r1") == {"loss": "A"} and st.cursors("r1") == {"loss": FileCursor(140, 12, 140)}
    finally:
        st.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key='schema'").fetchone() == (str(SCHEMA_VERSION),)


def test_a_state_of_a_newer_syncer_is_refused_in_one_line(tmp_path):
    path = tmp_path / "state.sqlite"
    State(path, "file:///store").close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value=? WHERE key='schema'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(BadInput, match="newer syncer"):
        State(path, "file:///store")
