"""One settings object from flags and environment, and process-wide logging."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from .mapping import ContextMapper, load_rules
from .pipeline import DEFAULT_MAX_ARTIFACT_BYTES, Options
from .sink import repo_root

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
    "state": "SYNCER_STATE",
    "log_level": "SYNCER_LOG_LEVEL",
    "log_format": "SYNCER_LOG_FORMAT",
    "interval": "SYNCER_INTERVAL",
    "no_watch": "SYNCER_NO_WATCH",
    "health_file": "SYNCER_HEALTH_FILE",
    "workers": "SYNCER_WORKERS",
}

STATE_FILE = Path(".aim") / "mlflow-syncer" / "state.sqlite"


@dataclass
class Config:
    tracking_uri: str
    aim_repo: Path
    state_path: Path | None = None
    experiments: tuple[str, ...] = ()
    exclude_artifacts: tuple[str, ...] = ()
    artifacts: bool = True
    max_artifact_bytes: int = DEFAULT_MAX_ARTIFACT_BYTES
    context_map: Path | None = None
    context_mapping: bool = True
    tag_labels: bool = True
    interval: float = 10.0
    watch: bool = True
    health_file: Path | None = None
    log_level: str = "info"
    log_format: str = "text"

    def __post_init__(self) -> None:
        self.aim_repo = repo_root(self.aim_repo)
        if self.state_path is None:
            self.state_path = self.aim_repo / STATE_FILE

    def options(self, *, strict_experiments: bool) -> Options:
        rules = load_rules(self.context_map) if (self.context_map and self.context_mapping) else []
        return Options(
            experiments=self.experiments,
            artifacts=self.artifacts,
            exclude_artifacts=self.exclude_artifacts,
            max_artifact_bytes=self.max_artifact_bytes,
            mapper=ContextMapper(rules, enabled=self.context_mapping),
            tag_labels=self.tag_labels,
            strict_experiments=strict_experiments,
        )


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]i?b?|b)?\s*$", re.I)


def parse_size(text: str) -> int:
    """'10MB', '512k', '1048576' -> bytes."""
    m = _SIZE.match(str(text))
    if not m:
        raise ValueError(f"not a size: {text!r} (try 10MB, 512KB or a number of bytes)")
    n = float(m.group(1))
    unit = (m.group(2) or "b").lower()[0]
    return int(n * {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit])


# ---------------------------------------------------------------------------------------------
# logging: one line per event on stderr, credentials never printed

_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@", re.I)


def scrub(text: str) -> str:
    return _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:***@", text)


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        msg = scrub(record.getMessage())
        if record.exc_info and record.levelno <= logging.DEBUG:
            msg += " | " + scrub(self.formatException(record.exc_info)).replace("\n", " | ")
        return f"{ts} {record.levelname:<7} {record.name}: {msg}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        for k in ("event", "round"):
            if hasattr(record, k):
                doc[k] = getattr(record, k)
        return json.dumps(doc, default=str)


def configure_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = getattr(logging, level.upper())
    root.setLevel(lvl)
    # the libraries we drive are chatty at INFO; their warnings still show
    for noisy in ("mlflow", "alembic", "aim", "watchdog", "filelock"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    # "skipped: maximum number of running instances reached" is how we coalesce rounds
    logging.getLogger("apscheduler").setLevel(max(lvl, logging.ERROR))
    # connection retries are reported once, by us, as "MLflow ... is unreachable"
    logging.getLogger("urllib3").setLevel(max(lvl, logging.ERROR))
    logging.captureWarnings(True)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    logging.getLogger("py.warnings").setLevel(logging.ERROR)
