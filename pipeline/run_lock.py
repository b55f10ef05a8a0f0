"""One run at a time per pipeline: an exclusive lock beside its ML Metadata store.

Two runs of one config would share one SQLite ML Metadata store and one pipeline root,
and each would push: the Pusher names a version by the clock at push time, so the run
that started first could push the higher version. The lock is `flock` on a file next
to the store (`tfx_metadata/<name>/run.lock`; the store is local even when the pipeline
root is a bucket). The kernel drops it when the process ends, SIGKILL included, so no
stale lock survives a crash. The file records who holds it, for the next run's message.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

EX_TEMPFAIL = 75  # sysexits.h: "try again later", what a scheduler may retry on
IF_RUNNING = ("exit", "wait")
LOCK_FILE = "run.lock"


class RunInProgress(RuntimeError):
    """Another process holds the pipeline's run lock (and this one would not wait longer)."""

    def __init__(self, message: str, holder: dict[str, Any]):
        super().__init__(message)
        self.holder = holder


def lock_path(metadata_path: str) -> str:
    """The run lock of the pipeline whose ML Metadata store is at metadata_path.

    flock needs a local file: for a store named by a URI the lock goes to the local temp
    folder, keyed by the URI, and so serializes the runs of this machine only.
    """
    if "://" in metadata_path:
        key = hashlib.sha256(metadata_path.encode()).hexdigest()[:16]
        return os.path.join(tempfile.gettempdir(), "hypernet-run-locks", key, LOCK_FILE)
    return os.path.join(os.path.dirname(os.path.abspath(metadata_path)), LOCK_FILE)


def _holder(fd: int) -> dict[str, Any]:
    """Who holds the lock, as it wrote itself into the file ({} while it is writing)."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder unknown"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, "
            f"started {holder.get('started')}")


@contextlib.contextmanager
def hold(path: str, pipeline: str, if_running: str = "exit", timeout: float | None = None,
         poll_seconds: float = 1.0) -> Iterator[dict[str, Any]]:
    """Hold the lock at `path` for the block; yields what this holder wrote into it.

    When another process holds it: "exit" raises RunInProgress at once; "wait" polls until
    it is free, and raises RunInProgress after `timeout` seconds (None: no limit).
    """
    if if_running not in IF_RUNNING:
        raise ValueError(f"if_running must be one of {IF_RUNNING}, got {if_running!r}")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by exec'd children
    try:
        waited_since = time.monotonic()
        announced = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _holder(fd)
                waited = time.monotonic() - waited_since
                if if_running == "exit" or (timeout is not None and waited >= timeout):
                    how = ("this run exits (--if-running=exit; --if-running=wait waits for it)"
                           if if_running == "exit" else f"gave up after waiting {waited:.0f} s")
                    raise RunInProgress(
                        f"another run of pipeline {pipeline} is in progress ({describe(holder)}; "
                        f"lock {path}): {how}", holder) from None
                if not announced:
                    print(f"waiting for another run of pipeline {pipeline} to finish "
                          f"({describe(holder)}; lock {path})", file=sys.stderr, flush=True)
                    announced = True
                time.sleep(poll_seconds)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "pipeline": pipeline,
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
        yield me
    finally:
        os.close(fd)  # releases the flock
