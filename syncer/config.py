"""One settings object from flags and environment. A leaf: it imports nothing of the pipeline."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

# Every flag can also come from the environment; the CLI documents these in --help.
ENV = {
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "aim_repo": "SYNCER_AIM_REPO",
    "experiments": "SYNCER_EXPERIMENTS",
    "exclude_artifacts": "SYNCER_EXCLUDE_ARTIFACTS",
    "no_artifacts": "SYNCER_NO_ARTIFACTS",
    "max_artifact_size": "SYNCER_MAX_ARTIFACT_SIZE",
    "context_map": "SYNCER_CONTEXT_MAP",
    "no_context_map": "SYNCER_NO_CONTEXT_MAP",
    "no_tag_labels": "SYNCER_NO_TAG_LABELS",
    "no_label_tags": "SYNCER_NO_LABEL_TAGS",
    "label_tags": "SYNCER_LABEL_TAGS",
    "state": "SYNCER_STATE",
    "log_level": "SYNCER_LOG_LEVEL",
    "log_format": "SYNCER_LOG_FORMAT",
    "interval": "SYNCER_INTERVAL",
    "no_watch": "SYNCER_NO_WATCH",
    "health_file": "SYNCER_HEALTH_FILE",
    "workers": "SYNCER_WORKERS",
    "full_scan_interval": "SYNCER_FULL_SCAN_INTERVAL",
    "workspaces": "SYNCER_WORKSPACES",
    "metrics_port": "SYNCER_METRICS_PORT",
    "metrics_host": "SYNCER_METRICS_HOST",
    "full_disk_wait": "SYNCER_FULL_DISK_WAIT",
}

STATE_FILE = Path(".aim") / "mlflow-syncer" / "state.sqlite"
DEFAULT_MAX_ARTIFACT_BYTES = 10 * 1024 * 1024


def repo_root(path: str | os.PathLike[str]) -> Path:
    """`logs/.aim` and `logs` name the same Aim repo: its root."""
    p = Path(path).expanduser()
    return p.parent if p.name == ".aim" else p


@dataclass
class Config:
    tracking_uri: str
    aim_repo: Path
    state_path: Path | None = None
    experiments: tuple[str, ...] = ()
    workspaces: tuple[str, ...] = ()  # MLflow workspaces to read (empty: every workspace)
    exclude_artifacts: tuple[str, ...] = ()
    artifacts: bool = True
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    context_map: Path | None = None
    context_mapping: bool = True
    tag_labels: bool = True
    no_label_tags: tuple[str, ...] = ()  # tag keys (globs) kept out of Aim's labels
    label_tags: tuple[str, ...] = ()  # tag keys (globs) made labels whatever their value
    interval: float = 10.0
    full_scan_interval: float = 60.0  # seconds between full listings of the store (edits, deletions)
    watch: bool = True
    health_file: Path | None = None
    metrics_port: int | None = None  # `sync`: serve /metrics, /healthz, /readyz on it (None: off)
    metrics_host: str = "127.0.0.1"
    log_level: str = "info"
    log_format: str = "text"
    workers: int | None = None  # processes writing a large round (None: workers.default_workers)

    def __post_init__(self) -> None:
        self.aim_repo = repo_root(self.aim_repo)
        if self.state_path is None:
            self.state_path = self.aim_repo / STATE_FILE

    @property
    def state_file(self) -> Path:
        assert self.state_path is not None  # set by __post_init__
        return self.state_path


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)


def parse_size(text: str) -> int:
    """'10MB', '512k', '1048576' -> bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (try 10MB, 512KB or a number of bytes)")
    n = float(m.group(1))
    unit = (m.group(2) or "b").lower()[0]
    return int(n * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])
