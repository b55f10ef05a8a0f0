"""RunReport: <pipeline_root>/report.html, the run at a glance (components/report_html.py)."""

import datetime
import json
import os

import tensorflow as tf
from absl import logging
from tfx import v1 as tfx
from tfx.types import artifact_utils

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
from components.target_networks import SERVING_DIR
from pipeline.configs import HISTORY_FILE, MANIFEST_FILE, REPORT_FILE, VERDICT_FILE, WEIGHTS_FILE

A = tfx.types.standard_artifacts


def _pushed(artifact) -> str | None:
    if artifact.get_int_custom_property("pushed"):
        return artifact.get_string_custom_property("pushed_destination")
    return None


@tfx.dsl.components.component
def RunReport(
    statistics: tfx.dsl.components.InputArtifact[A.ExampleStatistics],
    anomalies: tfx.dsl.components.InputArtifact[A.ExampleAnomalies],
    model_run: tfx.dsl.components.InputArtifact[A.ModelRun],
    evaluation: tfx.dsl.components.InputArtifact[A.ModelEvaluation],
    blessing: tfx.dsl.components.InputArtifact[A.ModelBlessing],
    pushed_model: tfx.dsl.components.InputArtifact[A.PushedModel],
    target_networks: tfx.dsl.components.InputArtifact[A.Model],
    pushed_target_networks: tfx.dsl.components.InputArtifact[A.PushedModel],
    report_dir: tfx.dsl.components.Parameter[str],
    config: tfx.dsl.components.Parameter[str],
    gate_metric: tfx.dsl.components.Parameter[str],
) -> None:
    """Gather the run's artifacts, draw the plots, write report_dir/report.html."""
    settings = json.loads(config)
    context = settings.get("context") or []
    gates = settings["gates"]
    splits = artifact_utils.decode_split_names(statistics.split_names)
    history_path = os.path.join(model_run.uri, HISTORY_FILE)
    history = json.loads(tf.io.gfile.GFile(history_path).read()) \
        if tf.io.gfile.exists(history_path) else {}
    verdict = json.loads(tf.io.gfile.GFile(os.path.join(blessing.uri, VERDICT_FILE)).read())
    metrics = eval_metrics(evaluation.uri, context)
    # Thousands of context slices: the page shows the largest, marks the small ones.
    view = slice_view(metrics, int(gates.get("min_slice_examples") or 0),
                      int(settings.get("target_networks", {}).get("report_slices") or 20))
    exported = os.path.join(target_networks.uri, SERVING_DIR)
    projection = weights_projection(os.path.join(exported, WEIGHTS_FILE))
    manifest_path = os.path.join(exported, MANIFEST_FILE)
    manifest = json.loads(tf.io.gfile.GFile(manifest_path).read()) \
        if tf.io.gfile.exists(manifest_path) else {}
    data = {
        "pipeline": settings["name"],
        "run": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "rows": split_rows(statistics.uri, splits),
        "anomalies": split_anomalies(anomalies.uri, splits),
        "history": history,
        "metrics": metrics,
        "slice_view": view,
        "gates": {"metric": gate_metric, "lower_bound": gates.get("lower_bound"),
                  "upper_bound": gates.get("upper_bound"),
                  "change_tolerance": gates.get("change_tolerance"),
                  "min_slice_examples": gates.get("min_slice_examples")},
        "verdict": verdict,
        "pushed": {"hypernetwork": _pushed(pushed_model),
                   "target networks": _pushed(pushed_target_networks)},
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
    tf.io.gfile.makedirs(report_dir)
    path = os.path.join(report_dir, REPORT_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(render(data))
    logging.info("run report: %s", path)
