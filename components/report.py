"""RunReport: the run at a glance (components/report_html.py), one page per run.

In report_dir (the pipeline root): report-<run id>.html for every run, so a morning
check finds last week's runs in one place, and report.html, the newest.
"""

import datetime
import json
import os
import re
from typing import Any

import tensorflow as tf
from absl import logging
from tfx.dsl.components.base import base_executor, executor_spec
from tfx.dsl.components.base.base_component import BaseComponent
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.artifact import Artifact
from tfx.types.channel import BaseChannel
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components.report_html import (
    eval_metrics,
    plot_history,
    plot_projection,
    plot_slices,
    render,
    slice_view,
    split_anomalies,
    split_rows,
    weights_projection,
)
from components.storage import replace_file
from components.target_networks import SERVING_DIR
from pipeline.configs import HISTORY_FILE, MANIFEST_FILE, REPORT_FILE, VERDICT_FILE, WEIGHTS_FILE

A = standard_artifacts
INPUTS = {"statistics": A.ExampleStatistics, "anomalies": A.ExampleAnomalies,
          "model_run": A.ModelRun, "evaluation": A.ModelEvaluation, "blessing": A.ModelBlessing,
          "pushed_model": A.PushedModel, "target_networks": A.Model,
          "pushed_target_networks": A.PushedModel}


def _pushed(artifact: Artifact) -> str | None:
    if artifact.get_int_custom_property("pushed"):
        return artifact.get_string_custom_property("pushed_destination")
    return None


def run_report_file(run_id: str) -> str:
    """report-<run id>.html, the id as is (the local runner's hold ':', fine on Linux and
    in buckets); only a path separator, which would make a folder, becomes '-'."""
    stem, ext = os.path.splitext(REPORT_FILE)
    safe = re.sub(r"[/\\]", "-", run_id)
    return f"{stem}-{safe}{ext}"


def _json(path: str) -> dict[str, Any]:
    """A JSON file through tf.io.gfile ({} when absent)."""
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def write_report(artifacts: dict[str, Artifact], report_dir: str, config: str, gate_metric: str,
                 run_id: str) -> str:
    """Gather the run's artifacts, draw the plots, write report_dir/report-<run id>.html
    and the same page as report_dir/report.html (the newest). Returns the run's path."""
    a = artifacts
    settings = json.loads(config)
    context = settings.get("context") or []
    gates = settings["gates"]
    splits = artifact_utils.decode_split_names(a["statistics"].split_names)
    history = _json(os.path.join(a["model_run"].uri, HISTORY_FILE))
    with tf.io.gfile.GFile(os.path.join(a["blessing"].uri, VERDICT_FILE)) as f:
        verdict = json.load(f)
    metrics = eval_metrics(a["evaluation"].uri, context)
    # Thousands of context slices: the page shows the largest, marks the small ones.
    view = slice_view(metrics, int(gates.get("min_slice_examples") or 0),
                      int(settings.get("target_networks", {}).get("report_slices") or 20))
    exported = os.path.join(a["target_networks"].uri, SERVING_DIR)
    projection = weights_projection(os.path.join(exported, WEIGHTS_FILE))
    manifest = _json(os.path.join(exported, MANIFEST_FILE))
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    data = {
        "pipeline": settings["name"],
        "run": run_id,
        "written": now,
        "rows": split_rows(a["statistics"].uri, splits),
        "anomalies": split_anomalies(a["anomalies"].uri, splits),
        "history": history,
        "metrics": metrics,
        "slice_view": view,
        "gates": {"metric": gate_metric, "lower_bound": gates.get("lower_bound"),
                  "upper_bound": gates.get("upper_bound"),
                  "change_tolerance": gates.get("change_tolerance"),
                  "min_slice_examples": gates.get("min_slice_examples")},
        "verdict": verdict,
        "pushed": {"hypernetwork": _pushed(a["pushed_model"]),
                   "target networks": _pushed(a["pushed_target_networks"])},
        "projection": projection,
        "target_networks": {k: manifest.get(k) for k in (
            "contexts_total", "contexts_exported", "selection") if k in manifest},
    }
    data["plots"] = {
        "history": plot_history(history),
        "slices": plot_slices(metrics, gate_metric, gates.get("lower_bound"),
                              verdict.get("baseline_value"), upper_bound=gates.get("upper_bound"),
                              min_examples=view["min_examples"], limit=view["limit"]),
        "projection": plot_projection(projection) if projection else None,
    }
    page = render(data)
    path = os.path.join(report_dir, run_report_file(run_id))
    replace_file(path, page)  # a re-run of the same run id replaces its page
    replace_file(os.path.join(report_dir, REPORT_FILE), page)
    logging.info("run report: %s (and %s)", path, REPORT_FILE)
    return path


class RunReportExecutor(base_executor.BaseExecutor):
    """A class executor, not a function component: only an executor sees the run id."""

    def Do(self, input_dict: dict[str, list[Artifact]], output_dict: dict[str, list[Artifact]],
           exec_properties: dict[str, Any]) -> None:
        run_id = self._context.pipeline_run_id if self._context else None
        if not run_id:  # Kubeflow V2 gives its executors no run id: the time stands in
            run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            logging.warning("RunReport: no pipeline run id; naming the report by time %s",
                            run_id)
        write_report({k: artifact_utils.get_single_instance(v) for k, v in input_dict.items()},
                     exec_properties["report_dir"], exec_properties["config"],
                     exec_properties["gate_metric"], run_id)


class RunReportSpec(ComponentSpec):
    PARAMETERS = {"report_dir": ExecutionParameter(type=str),
                  "config": ExecutionParameter(type=str),
                  "gate_metric": ExecutionParameter(type=str)}
    INPUTS = {name: ChannelParameter(type=kind) for name, kind in INPUTS.items()}
    OUTPUTS: dict[str, ChannelParameter] = {}


class RunReport(BaseComponent):
    """Gather the run's artifacts into report_dir/report-<run id>.html and report.html."""

    SPEC_CLASS = RunReportSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(RunReportExecutor)

    def __init__(self, *, report_dir: str, config: str, gate_metric: str,
                 **channels: BaseChannel) -> None:
        super().__init__(spec=RunReportSpec(report_dir=report_dir, config=config,
                                            gate_metric=gate_metric, **channels))
