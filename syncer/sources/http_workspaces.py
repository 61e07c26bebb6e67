"""Which MLflow workspace each experiment and run of a server is in (MLflow >= 3.10 in workspace
mode; everything is in workspace None on other servers), for `http.HttpSource`: which workspaces
a listing reads, the workspace each request carries, and what a deleted workspace left behind."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from ..errors import BadInput
from .records import DEFAULT_WORKSPACE

log = logging.getLogger("syncer.sources.http")

# a workspace server's artifact URIs name the workspace they were made in
_ARTIFACTS_WORKSPACE = re.compile(r"^mlflow-artifacts:(?://[^/]*)?/workspaces/([^/]+)/")


class WorkspaceMap:
    """`wanted`: the workspaces to read (empty: every one); `strict`: one the server lacks is an
    error (a backfill), else a warning said once (the daemon: it may be made later)."""

    def __init__(self, display: str, wanted: tuple[str, ...], strict: bool):
        self.display = display
        self.wanted = wanted
        self.strict = strict
        self.of_experiment: dict[str, str | None] = {}  # experiment id -> workspace, as last listed
        self.experiment_of: dict[str, str] = {}  # run id -> experiment id, of every run seen
        self._warned: set[str] = set()  # workspaces wanted that the server lacks, said once
        self._left: set[str] = set()  # deleted workspaces whose artifacts were said to be left behind

    def of_run(self, run_id: str) -> str | None:
        exp = self.experiment_of.get(run_id)
        return self.of_experiment.get(exp) if exp is not None else None

    def by_workspace(self, exp_ids: list[str]) -> dict[str | None, list[str]]:
        groups: dict[str | None, list[str]] = {}
        for i in exp_ids:
            groups.setdefault(self.of_experiment.get(i), []).append(i)
        return groups

    def to_list(self, enabled: bool, names: Callable[[], list[str]]) -> list[str | None]:
        """The workspaces a listing reads (every one, or those wanted), from `names()` (the
        server's); [None] on a server without workspaces (everything is in its one, unnamed)."""
        if not enabled:
            other = [w for w in self.wanted if w != DEFAULT_WORKSPACE]
            if other:
                self._unknown(other, "the server has no workspaces: MLflow >= 3.10 in workspace mode")
            return [None] if not self.wanted or DEFAULT_WORKSPACE in self.wanted else []
        known = names()
        missing = [w for w in self.wanted if w not in known]
        if missing:
            self._unknown(missing, f"known: {', '.join(known)}")
        return [w for w in known if w in (self.wanted or known)]

    def _unknown(self, names: list[str], why: str) -> None:
        msg = f"unknown MLflow workspace(s) at {self.display}: {', '.join(repr(n) for n in names)} ({why})"
        if self.strict:
            raise BadInput(msg)
        if not set(names) <= self._warned:
            self._warned.update(names)
            log.warning("%s; looked for again every round", msg)

    def artifacts_left_behind(self, artifact_uri: str | None, workspace: str | None) -> bool:
        """A run moved out of a workspace deleted with SET_DEFAULT keeps its artifacts under the
        deleted workspace, and MLflow no longer serves them ("Artifact path targets workspace
        ..."): not read, said once per deleted workspace."""
        kept = _ARTIFACTS_WORKSPACE.search(artifact_uri or "") if workspace is not None else None
        if not kept or kept.group(1) == workspace:
            return False
        if kept.group(1) not in self._left:
            self._left.add(kept.group(1))
            log.warning(
                "runs moved to workspace %r when workspace %r was deleted keep their artifacts under it, "
                "which MLflow no longer serves: their artifacts are not read (copies made before stay)",
                workspace,
                kept.group(1),
            )
        return True
