"""`<pipeline_root>/runs.jsonl`: one JSON line per run, for a scheduler or a morning check.

Every run of `pipeline.local_runner` adds one line when it ends, failed and skipped runs
included, so "what happened last week" is one file to read, not an ML Metadata query.
Written through tf.io.gfile: the pipeline root may be a bucket, and not every filesystem
appends, so the file is read and rewritten whole (a line a night stays small), under a
local lock beside the ML Metadata store so two writers cannot lose a line.
"""

from __future__ import annotations

import json
import os
from typing import Any

from components.storage import replace_file
from pipeline import configs, run_lock

STATUSES = ("succeeded", "failed", "skipped")


def history_path(config: configs.PipelineConfig) -> str:
    return os.path.join(config.pipeline_root, configs.RUNS_FILE)


def record(config: configs.PipelineConfig, *, run_id: str | None, status: str, exit_code: int,
           started: str, ended: str, summary: dict[str, Any] | None = None,
           span: int | None = None, error: str | None = None) -> dict[str, Any]:
    """One run's line: what a scheduler needs to act on it without opening ML Metadata.

    `summary` is pipeline.summary.summarize()'s view of the run (absent when it never
    started); `span` is used when ML Metadata recorded none (a run that failed before
    ExampleGen finished).
    """
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    summary = summary or {}
    verdict = summary.get("verdict") or {}
    destination = summary.get("pushed_destination")
    return {
        "run_id": run_id,
        "pipeline": config.name,
        "status": status,
        "exit_code": exit_code,
        "error": error,
        "span": summary.get("span", span),
        "blessed": summary.get("blessed"),  # None: the run ended before the verdict
        "pushed": bool(summary.get("pushed")),
        "version": os.path.basename(destination) if destination else None,
        "pushed_destination": destination,
        "gate_metric": config.gate_metric.result_key,
        "value": verdict.get("value"),
        "baseline_value": verdict.get("baseline_value"),
        "reasons": verdict.get("reasons", []),
        "report": summary.get("run_report"),
        "started": started,
        "ended": ended,
        "config": config.source,
    }


def append(config: configs.PipelineConfig, line: dict[str, Any]) -> str:
    """Add `line` to the pipeline's runs.jsonl; returns the file's path."""
    import tensorflow as tf

    path = history_path(config)
    text = json.dumps(line, sort_keys=True) + "\n"
    lock = run_lock.lock_path(config.metadata_path) + ".history"
    with run_lock.hold(lock, config.name, if_running="wait", timeout=60):
        old = ""
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path, "r") as f:
                old = f.read()
            if old and not old.endswith("\n"):
                old += "\n"  # a torn last line stays one line of its own
        replace_file(path, old + text)
    return path


def read(config: configs.PipelineConfig) -> list[dict[str, Any]]:
    """Every line of the pipeline's runs.jsonl, oldest first ([] before the first run)."""
    import tensorflow as tf

    path = history_path(config)
    if not tf.io.gfile.exists(path):
        return []
    with tf.io.gfile.GFile(path, "r") as f:
        return [json.loads(line) for line in f.read().splitlines() if line.strip()]
