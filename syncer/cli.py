"""`syncer` commands: parse, validate, print. No sync logic lives here."""

from __future__ import annotations

import functools
import gc
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import click

from . import __version__
from .config import ENV, Config, parse_size
from .errors import Stopped, SyncerError
from .logs import configure_logging
from .redact import redact

log = logging.getLogger("syncer")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _env_option(*decls: str, env: str, **kw: Any) -> Callable[[F], F]:
    """A click option that also reads its environment variable (shown in --help)."""
    return click.option(*decls, envvar=ENV[env], show_envvar=True, **kw)


class CliError(click.ClickException):
    """A one-line error, exit code 2, no traceback, no credentials."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(redact(" ".join(str(message).split())))


class NameList(click.ParamType[str, str]):
    """An experiment or workspace name (or id); from the environment, several: space-separated or
    a JSON list."""

    name = "NAME"

    def __init__(self, env: str):
        self.env = env  # ENV's key of the variable

    def split_envvar_value(self, rv: str) -> list[str]:
        text = rv.strip()
        if text.startswith("["):
            import json

            try:
                names = json.loads(text)
            except ValueError as e:
                raise click.BadParameter(f"{ENV[self.env]} is not a JSON list: {e}") from None
            if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
                raise click.BadParameter(f"{ENV[self.env]} must be a JSON list of names")
            return [str(n) for n in names]
        return text.split()


class SizeType(click.ParamType[int, "str | int"]):
    name = "SIZE"

    def convert(self, value: str | int, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_size(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


def _common(f: F) -> F:
    """Options shared by `backfill` and `sync`; each also read from its environment variable."""
    opts = [
        _env_option(
            "--mlflow-tracking-uri",
            "tracking_uri",
            help="MLflow store: a folder (mlruns), file:, sqlite:///…, postgresql://…, http(s)://…",
            env="tracking_uri",
        ),
        _env_option(
            "--aim-repo",
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Aim repo (its root or its .aim folder); created when missing.",
            env="aim_repo",
        ),
        _env_option(
            "--experiment",
            "experiments",
            multiple=True,
            type=NameList("experiments"),
            help="Only this MLflow experiment (name or id). Repeatable; env: space-separated names, or a JSON "
            'list for names with spaces: \'["xnli fine tune", "other"]\'.',
            env="experiments",
        ),
        _env_option(
            "--workspace",
            "workspaces",
            multiple=True,
            type=NameList("workspaces"),
            help="Only this MLflow workspace (MLflow >= 3.10 servers and databases with workspaces; "
            "default: every workspace). Repeatable; env: space-separated names or a JSON list.",
            env="workspaces",
        ),
        _env_option(
            "--exclude-artifacts",
            multiple=True,
            metavar="GLOB",
            help="Skip artifacts whose path or file name matches. Repeatable.",
            env="exclude_artifacts",
        ),
        _env_option("--no-artifacts", is_flag=True, help="Do not convert or list artifacts.", env="no_artifacts"),
        _env_option(
            "--max-artifact-size",
            "max_artifact_bytes",
            type=SizeType(),
            default="10MB",
            show_default=True,
            help="Larger artifacts are listed, not copied.",
            env="max_artifact_size",
        ),
        _env_option(
            "--context-map",
            type=click.Path(dir_okay=False, path_type=Path),
            help="TOML rules (regex with named groups) tried before the defaults.",
            env="context_map",
        ),
        _env_option(
            "--no-context-map",
            is_flag=True,
            help="Keep MLflow metric keys as Aim names, with empty contexts.",
            env="no_context_map",
        ),
        _env_option(
            "--no-tag-labels",
            is_flag=True,
            help="Do not add MLflow tags as key=value labels in Aim's Tags column.",
            env="no_tag_labels",
        ),
        _env_option(
            "--no-label-tag",
            "no_label_tags",
            multiple=True,
            metavar="KEY",
            help="Keep this MLflow tag (a glob on its key) out of Aim's labels; it stays in the `tags` param. "
            "Tags whose value is a UUID or a hex digest (per-run ids) are left out by default. Repeatable.",
            env="no_label_tags",
        ),
        _env_option(
            "--label-tag",
            "label_tags",
            multiple=True,
            metavar="KEY",
            help="Make this MLflow tag (a glob on its key) a label whatever its value. Repeatable.",
            env="label_tags",
        ),
        _env_option(
            "--state",
            "state_path",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Cursor database [default: <aim-repo>/.aim/mlflow-syncer/state.sqlite].",
            env="state",
        ),
        _env_option(
            "--log-level",
            type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
            default="info",
            show_default=True,
            env="log_level",
        ),
        _env_option(
            "--log-format",
            type=click.Choice(["text", "json"]),
            default="text",
            show_default=True,
            help="One line per event, on stderr.",
            env="log_format",
        ),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _config(kw: dict[str, Any], **extra: Any) -> Config:
    configure_logging(kw["log_level"], kw["log_format"])
    if not kw.get("tracking_uri"):
        raise CliError("no MLflow tracking URI: pass --mlflow-tracking-uri or set MLFLOW_TRACKING_URI")
    if kw.get("context_map") and not kw["context_map"].is_file():
        raise CliError(f"context-map file {kw['context_map']} does not exist")
    experiments = tuple(kw.pop("experiments"))
    workspaces = tuple(kw.pop("workspaces"))
    return Config(
        tracking_uri=kw.pop("tracking_uri"),
        aim_repo=kw.pop("aim_repo"),
        state_path=kw.pop("state_path"),
        experiments=experiments,
        workspaces=workspaces,
        exclude_artifacts=tuple(kw.pop("exclude_artifacts")),
        artifacts=not kw.pop("no_artifacts"),
        max_artifact_bytes=kw.pop("max_artifact_bytes"),
        context_map=kw.pop("context_map"),
        context_mapping=not kw.pop("no_context_map"),
        tag_labels=not kw.pop("no_tag_labels"),
        no_label_tags=tuple(kw.pop("no_label_tags")),
        label_tags=tuple(kw.pop("label_tags")),
        **kw,
        **extra,
    )


def _one_line_errors(f: Callable[..., None]) -> Callable[..., None]:
    """Known failures (syncer.errors) become one-line errors with exit code 2."""

    @functools.wraps(f)
    def wrapper(*a: Any, **kw: Any) -> None:
        try:
            f(*a, **kw)
        except SyncerError as e:
            raise CliError(str(e)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="syncer")
def cli() -> None:
    """Sync MLflow experiments into an Aim repo: faithfully and incrementally."""


# the default of --workers: workers.default_workers
_WORKERS = _env_option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes writing runs side by side (a helper costs a start-up, ~2 CPU s). Default: 1, plus one for "
    "every ~8 CPU s the round is estimated to take (30 ms a run, 2 us a point), at most 4 and the CPUs "
    "(1,000 short runs: 2 on 2 CPUs; 40 runs: 1); never for fewer than 8 runs.",
    env="workers",
)


@cli.command()
@_common
@_WORKERS
@_env_option(
    "--full-disk-wait",
    type=click.FloatRange(min=0.0),
    default=60.0,
    show_default=True,
    help="Seconds to wait for space when the Aim repo's filesystem fills up, before stopping with exit code 2 "
    "(what was written stays; run it again once there is space).",
    env="full_disk_wait",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Write nothing: print the runs that would be written and how each MLflow key maps to Aim "
    "(name, context, the rule that matched, how many runs).",
)
@_one_line_errors
def backfill(workers: int | None, full_disk_wait: float, dry_run: bool, **kw: Any) -> None:
    """Convert a whole MLflow store into an Aim repo, once.

    Safe to repeat and to kill: a second run writes only what is new."""
    from .runner import heal, open_driver

    cfg = _config(kw)
    if dry_run:
        from .preview import dry_run as preview
        from .runner import options_from

        preview(cfg, options_from(cfg, strict_experiments=True), click.echo)
        return
    driver = open_driver(cfg, strict_experiments=True, must_exist=True, workers=workers, progress=_progress_bar)
    stopped = _stop_on_signals(driver.stop)
    gc.freeze()  # what start-up made (MLflow, Aim) lives until the end: no collection looks at it again
    try:
        heal(driver)
        stats = driver.round(full=True, room_wait=full_disk_wait)  # a full disk: waited for, then exit 2
    except Stopped:
        log.warning("backfill stopped at a safe point; run it again to finish (nothing is sent twice)")
        sys.exit(128 + (stopped[0] if stopped else signal.SIGTERM))
    finally:
        driver.close()
    click.echo(f"backfill: {stats.summary()}")
    failing = len(stats.errors) + len(stats.still_failing) + len(stats.locked)
    if failing:
        log.warning("backfill: %d run(s) had errors or were held by another writer; see the warnings above", failing)
        sys.exit(1)


@cli.command()
@_common
@_env_option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    help="Seconds between rounds.",
    env="interval",
)
@_env_option(
    "--no-watch", is_flag=True, help="Do not start a round on file events (local stores); poll only.", env="no_watch"
)
@_env_option(
    "--health-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Touched after each good round (Docker HEALTHCHECK, systemd).",
    env="health_file",
)
@_WORKERS
@_env_option(
    "--full-scan-interval",
    type=click.FloatRange(min=1.0),
    default=60.0,
    show_default=True,
    help="Seconds between full listings of the store (edits of finished runs, deletions); "
    "other rounds look only at what can have changed. A full listing that takes long puts the "
    "next one ten times as far off.",
    env="full_scan_interval",
)
@_env_option(
    "--metrics-port",
    type=click.IntRange(min=1, max=65535),
    help="Serve Prometheus metrics (/metrics) and probes (/healthz: liveness, /readyz: readiness) on "
    "this port [default: off].",
    env="metrics_port",
)
@_env_option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics port listens on (0.0.0.0 in a container, for probes and Prometheus).",
    env="metrics_host",
)
@_one_line_errors
def sync(interval: float, no_watch: bool, health_file: Path | None, full_scan_interval: float, **kw: Any) -> None:
    """Convert what exists, then keep following the MLflow store until stopped (SIGINT/SIGTERM)."""
    from .daemon import run_daemon

    # --metrics-port, --metrics-host and --workers reach Config by their names, in kw
    cfg = _config(
        kw, interval=interval, watch=not no_watch, health_file=health_file, full_scan_interval=full_scan_interval
    )
    sys.exit(run_daemon(cfg))


@cli.command()
@_env_option(
    "--aim-repo",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Aim repo (its root or its .aim folder).",
    env="aim_repo",
)
@_env_option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Cursor database [default: <aim-repo>/.aim/mlflow-syncer/state.sqlite].",
    env="state",
)
@click.option(
    "--aim",
    "show_aim",
    is_flag=True,
    help="Also read the Aim repo back (Aim's SDK): runs and metrics with their contexts.",
)
@_one_line_errors
def status(aim_repo: Path, state_path: Path | None, show_aim: bool) -> None:
    """Per experiment: runs and points synced, the last round, runs in error."""
    from .state import State

    cfg = Config(tracking_uri="", aim_repo=aim_repo, state_path=state_path)
    if not cfg.state_file.exists():
        raise CliError(f"no sync state at {cfg.state_path}: nothing was synced into {cfg.aim_repo} yet")
    st = State(cfg.state_file, source="")
    try:
        rounds = st.last_rounds()
        rows = list(st.report())
        key_points = list(st.key_points()) if show_aim else []
    finally:
        st.close()
    from .report import print_rounds

    print_rounds(rounds, rows, click.echo)
    if show_aim:
        from .report import print_summary

        print_summary(cfg.aim_repo, key_points, click.echo)


def _stop_on_signals(stop: threading.Event) -> list[int]:
    """SIGTERM / SIGINT stop a backfill at its next safe point; returns the signals received."""
    got: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        got.append(signum)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return got


def _progress_bar(items: Iterable[T]) -> Iterator[T]:
    if not sys.stderr.isatty():
        yield from items
        return
    with click.progressbar(items, label="syncing runs", file=sys.stderr, show_pos=True) as bar:
        yield from bar


def main() -> None:
    cli(prog_name="syncer")
