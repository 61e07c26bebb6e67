"""Process-wide logging: one line per event on stderr, text or JSON, credentials never printed."""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings

from .redact import redact


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        msg = redact(record.getMessage())
        if record.exc_info and record.levelno <= logging.DEBUG:
            msg += " | " + redact(self.formatException(record.exc_info)).replace("\n", " | ")
        return f"{ts} {record.levelname:<7} {record.name}: {msg}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for k in ("event", "round"):
            if hasattr(record, k):
                doc[k] = getattr(record, k)
        return redact(json.dumps(doc, default=str))


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


class OnceLog:
    """Messages said once per process (a run still failing the same way, a collision): the
    round driver and the pipeline share one."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._said: set[str] = set()

    def warning(self, message: str) -> None:
        """A warning the first time; DEBUG after."""
        self.logger.log(logging.DEBUG if message in self._said else logging.WARNING, message)
        self._said.add(message)
