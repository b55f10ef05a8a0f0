"""ModelVerdict: say, in a log line and a small JSON file, why a model was or was not blessed.

A rejected model is a successful run that pushes nothing; the people running the
schedule need to see why without opening TFMA. The file is
<pipeline_root>/verdict.json (the newest run's), one JSON object.
"""

import json
import os
from typing import Any

import tensorflow as tf
from absl import logging
from tfx import v1 as tfx

VERDICT_FILE = "verdict.json"


def _slice_name(slice_key: Any) -> str:
    keys = [f"{k.column}={k.bytes_value.decode() if k.bytes_value else k.int64_value or k.float_value}"
            for k in slice_key.single_slice_keys]
    return ", ".join(keys) or "overall"


def _metric_value(evaluation_uri: str, metric: str, model_name: str | None) -> float | None:
    import tensorflow_model_analysis as tfma

    try:
        result = tfma.load_eval_result(evaluation_uri, model_name=model_name)
    except Exception:  # noqa: BLE001 - no baseline model in this evaluation
        return None
    for slice_key, metrics in result.slicing_metrics:
        if not slice_key:
            value = metrics.get("", {}).get("", {}).get(metric, {}).get("doubleValue")
            return None if value is None else float(value)
    return None


def build_verdict(evaluation_uri: str, blessed: bool, metric: str) -> dict[str, Any]:
    """The verdict as data: blessed or not, the gate metric's values, every failed check."""
    import tensorflow_model_analysis as tfma

    validation = tfma.load_validation_result(evaluation_uri)
    reasons = []
    for per_slice in validation.metric_validations_per_slice:
        for failure in per_slice.failures:
            value = failure.metric_value.double_value.value if failure.metric_value.HasField(
                "double_value") else None
            threshold = str(failure.metric_threshold).replace("\n", " ").strip()
            reasons.append(f"{_slice_name(per_slice.slice_key)}: {failure.metric_key.name}"
                           f"{'' if value is None else f' = {value:.4f}'}"
                           f"{' (vs baseline)' if failure.metric_key.is_diff else ''}"
                           f" fails {threshold}{f' ({failure.message})' if failure.message else ''}")
    candidate = _metric_value(evaluation_uri, metric, "candidate")
    if candidate is None:
        candidate = _metric_value(evaluation_uri, metric, None)
    return {
        "blessed": blessed,
        "gate_metric": metric,
        "value": candidate,
        "baseline_value": _metric_value(evaluation_uri, metric, "baseline"),
        "reasons": reasons,
        "evaluation": evaluation_uri,
    }


@tfx.dsl.components.component
def ModelVerdict(
    evaluation: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelEvaluation],
    blessing: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ModelBlessing],
    verdict_dir: tfx.dsl.components.Parameter[str],
    gate_metric: tfx.dsl.components.Parameter[str],
) -> None:
    """Write verdict_dir/verdict.json and log the verdict."""
    blessed = bool(blessing.get_int_custom_property("blessed"))
    verdict = build_verdict(evaluation.uri, blessed, gate_metric)
    tf.io.gfile.makedirs(verdict_dir)
    with tf.io.gfile.GFile(os.path.join(verdict_dir, VERDICT_FILE), "w") as f:
        json.dump(verdict, f, indent=2)
    if blessed:
        logging.info("verdict: model BLESSED (%s = %s)", gate_metric, verdict["value"])
    else:
        logging.warning("verdict: model NOT blessed, nothing will be pushed: %s",
                        "; ".join(verdict["reasons"]) or "see the evaluation")
