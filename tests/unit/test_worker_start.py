"""A backfill's helper process that gets Ctrl-C (or SIGTERM) while it is still starting keeps
it as a stop instead of dying in its initializer (which broke the whole process pool: a
traceback and exit 1 instead of 130). Run in a child process: the initializer installs signal
handlers and a parent watch."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

CHILD = """
import os, signal, threading
from syncer import workers

class Driver:
    def __init__(self):
        self.stop = threading.Event()

def open_worker(cfg):
    os.kill(os.getpid(), {sig})  # the signal arrives while the worker is being made
    return Driver()

class Cfg:
    log_level, log_format = "WARNING", "text"

workers._worker_init(Cfg(), threading.Event(), open_worker)
print("stop set:", workers._worker.stop.is_set())
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_while_a_helper_starts_is_kept_as_its_stop(sig):
    p = subprocess.run([sys.executable, "-c", CHILD.format(sig=int(sig))], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "stop set: True", p.stdout + p.stderr
