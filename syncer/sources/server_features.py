"""What an MLflow server offers the HTTP source, found once per source: its version
(`GET /version`, MLflow >= 2.1) says which endpoints and filters it has. A server that does not
say (MLflow 2.0, a proxy in front of it) is asked whether it has logged models and the history
endpoints (a 404 that is not MLflow's JSON: `mlflow_compat.EndpointMissing`, never a JSON 404
of a run not there) and searched only with filters every 2.x takes. Boundaries, from the
release wheels' code and real servers:

| what                                    | from MLflow | before that                              |
|-----------------------------------------|-------------|------------------------------------------|
| logged models (`logged-models/search`)  | 3.0         | none: a run has no logged models         |
| `get-history-bulk` (a key of many runs) | 2.2         | histories read run by run                |
| ... with up to 100 run ids              | 2.11        | 20 run ids a request                     |
| `get-history-bulk-interval`             | 2.11        | new points by paging `get-history`       |
| `run_id NOT IN (...)` in a search       | 2.3         | the quiet runs left out after the search |
| workspaces (`server-info`)              | 3.10        | none: one unnamed workspace              |
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

UNKNOWN_BULK_RUNS = 20  # what every server with get-history-bulk takes
NO_RUN = "0" * 32  # a run id no server has: a probe's answer is MLflow's "not there", or a 404 page


@dataclass
class ServerFeatures:
    version: tuple[int, ...] | None = None  # None: the server does not say
    workspaces: bool = False  # `mlflow server --enable-workspaces` (MLflow >= 3.10)
    logged_models: bool = True
    bulk_runs: int = 100  # run ids get-history-bulk takes in one request; 0: no such endpoint
    bulk_interval: bool = True
    not_in: bool = True  # `attributes.run_id NOT IN (...)` in search filters

    @classmethod
    def of_version(cls, version: tuple[int, ...] | None) -> ServerFeatures:
        if version is None:  # endpoints found missing as they are used; filters every 2.x takes
            return cls(None, bulk_runs=UNKNOWN_BULK_RUNS, not_in=False)
        v = version[:2]
        return cls(
            version,
            logged_models=v >= (3, 0),
            bulk_runs=100 if v >= (2, 11) else UNKNOWN_BULK_RUNS if v >= (2, 2) else 0,
            bulk_interval=v >= (2, 11),
            not_in=v >= (2, 3),
        )

    @property
    def may_have_workspaces(self) -> bool:
        return self.version is None or self.version[:2] >= (3, 10)

    @property
    def name(self) -> str:
        return "MLflow " + ".".join(map(str, self.version)) if self.version else "MLflow (version not said)"

    def lacks(self) -> list[str]:
        """What the server does not offer, said once when a source starts."""
        out = []
        if self.version is None:
            out.append("no /version (MLflow < 2.1, or a proxy): asked what it has")
        if not self.logged_models:
            out.append("no logged models (MLflow >= 3.0): none are read")
        if self.bulk_runs == 0:
            out.append("no get-history-bulk (MLflow >= 2.2): new runs' histories are read run by run")
        elif self.bulk_runs < 100:
            out.append(f"get-history-bulk takes {self.bulk_runs} runs a request (100 from MLflow 2.11)")
        if not self.bulk_interval:
            out.append("no get-history-bulk-interval (MLflow >= 2.11): a key with new points is read whole")
        if not self.not_in:
            out.append("no NOT IN in searches (MLflow >= 2.3): quiet RUNNING runs are left out after the search")
        return out

    def summary(self, display: str) -> tuple[int, str]:
        """The line said when a source starts, and its level: INFO when the server lacks
        something or has workspaces."""
        lacks = self.lacks()
        line = f"{self.name} at {display}" + ("; workspaces: on" if self.workspaces else "")
        line += "".join(f"; {x}" for x in lacks)
        return (logging.INFO if lacks or self.workspaces else logging.DEBUG), line


def discover(rest: Any, calls: Any, client: Any) -> ServerFeatures:
    """Ask the server (`rest`: mlflow_compat.RestInternals; `calls`: http_calls.Calls; `client`:
    an MlflowClient for it): its version; where it may have workspaces, whether they are on;
    where it does not say its version, whether it has logged models and the history endpoints."""
    from .mlflow_compat import endpoint_missing

    features = ServerFeatures.of_version(calls.run(rest.version))
    if features.may_have_workspaces:
        features.workspaces = bool(calls.run(rest.server_info).get("workspaces_enabled"))
    if features.version is None:
        probe = {"run_id": [NO_RUN], "metric_key": "loss", "max_results": 1}
        features.bulk_runs = UNKNOWN_BULK_RUNS if calls.run(rest.has, rest.BULK_RUNS, probe) else 0
        probe = {"run_ids": NO_RUN, "metric_key": "loss", "max_results": 1}
        features.bulk_interval = calls.run(rest.has, rest.BULK_INTERVAL, probe)
        try:
            calls.run(client.search_logged_models, experiment_ids=["0"], max_results=1)
        except Exception as e:  # any other answer says the endpoint is there
            features.logged_models = not endpoint_missing(e)
    return features


def requests_made(features: ServerFeatures) -> int:
    """How many requests `discover` made to find these."""
    return 1 + features.may_have_workspaces + 3 * (features.version is None)
