"""What the newest run produced: blessing, eval metrics overall and per slice, pushed model.

    python -m pipeline.summary [--config FILE] [--run RUN_ID] [--json]

Reads ML Metadata (the artifacts of the newest pipeline run, or the given one), so it
reports what TFX recorded, not what a log line claimed. Files in the pipeline root are
read through tf.io.gfile (it may be a bucket).
"""

from __future__ import annotations

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import argparse
import json
import os
import sys
from typing import Any

from pipeline import configs
from pipeline.configs import REPORT_FILE, VERDICT_FILE
from trainer.eval_results import slice_metrics


def run_artifacts(metadata_path: str, run_id: str | None = None) -> dict[str, list[Any]]:
    """Output artifacts of the newest (or the given) pipeline run, by output key
    ("model", "evaluation", "deployment_blessing", "pushed_model", ...)."""
    from ml_metadata import metadata_store
    from tfx.orchestration import metadata

    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(metadata_path))
    runs = store.get_contexts_by_type("pipeline_run")
    if run_id:
        runs = [c for c in runs if c.name == run_id]
    if not runs:
        return {}
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    execution_ids = [e.id for e in store.get_executions_by_context(run.id)]
    events = [e for e in store.get_events_by_execution_ids(execution_ids)
              if e.type == e.OUTPUT]
    keys = {e.artifact_id: e.path.steps[0].key for e in events if e.path.steps}
    out: dict[str, list[Any]] = {"_run": [run.name]}
    for art in store.get_artifacts_by_id(sorted(keys)):
        out.setdefault(keys[art.id], []).append(art)
    return out


def _prop(artifact: Any, key: str) -> Any:
    if key not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[key]
    return value.string_value if value.HasField("string_value") else value.int_value


def run_report_path(config: configs.PipelineConfig, run_id: str) -> str:
    """RunReport's page for one run (report.html is the newest run's), named by RunReport."""
    from components.report import run_report_file

    return os.path.join(config.pipeline_root, run_report_file(run_id))


def summarize(config: configs.PipelineConfig, run_id: str | None = None) -> dict[str, Any]:
    import tensorflow as tf

    arts = run_artifacts(config.metadata_path, run_id)
    summary: dict[str, Any] = {"pipeline": config.name, "run": (arts.get("_run") or [None])[0],
                               "gate_metric": config.gate_metric.result_key}
    for art in arts.get("examples", []):  # ExampleGen's: the (newest) span it read
        if "span" in art.properties:
            summary["span"] = art.properties["span"].int_value
    for art in arts.get("deployment_blessing", []):  # ModelVerdict's: the final decision
        summary["blessed"] = bool(_prop(art, "blessed"))
        own = os.path.join(art.uri, VERDICT_FILE)  # this run's, not the newest in the root
        if tf.io.gfile.exists(own):
            with tf.io.gfile.GFile(own) as f:
                summary["verdict"] = json.load(f)
    for art in arts.get("evaluation", []):
        summary["evaluation_uri"] = art.uri
        summary["metrics"] = slice_metrics(art.uri)
    for art in arts.get("model", []):
        summary["model_uri"] = art.uri
    for art in arts.get("pushed_model", []):
        summary["pushed"] = bool(_prop(art, "pushed"))
        summary["pushed_destination"] = _prop(art, "pushed_destination") or None
    for art in arts.get("pushed_target_networks", []):
        summary["target_networks_destination"] = _prop(art, "pushed_destination") or None
    report = os.path.join(config.pipeline_root, REPORT_FILE)
    if arts.get("pushed_target_networks") and tf.io.gfile.exists(report):
        summary["report"] = report
    if summary["run"] and tf.io.gfile.exists(run_report_path(config, summary["run"])):
        summary["run_report"] = run_report_path(config, summary["run"])
    return summary


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="Summarise the newest pipeline run")
    parser.add_argument("--config", default=None)
    parser.add_argument("--run", default=None, help="a pipeline run id (default: the newest)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    config = configs.load(args.config)
    if not os.path.exists(config.metadata_path):
        print(f"no ML Metadata at {config.metadata_path}: run the pipeline first", file=sys.stderr)
        return 1
    summary = summarize(config, args.run)
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
        return 0
    show(config, summary)
    return 0


def show(config: configs.PipelineConfig, summary: dict[str, Any]) -> None:
    """The summary as `make run` and `make retrain` print it."""
    overall = summary.get("metrics", {}).get("overall", {})
    print(f"pipeline {config.name}, run {summary.get('run')}: blessed={summary.get('blessed')} "
          f"pushed={summary.get('pushed')}")
    print(f"  pushed model: {summary.get('pushed_destination') or '(nothing pushed)'}")
    print(f"  pushed target networks: {summary.get('target_networks_destination') or '(none)'}")
    if summary.get("blessed") is False:
        for reason in summary.get("verdict", {}).get("reasons", []):
            print(f"  rejected: {reason}")
    print("  test split, overall: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(overall.items())))
    if summary.get("report"):
        print(f"  report: {summary['report']}")
    if summary.get("run_report"):
        print(f"  this run's report: {summary['run_report']}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
