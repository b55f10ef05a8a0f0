"""The deployment gate as a TFMA EvalConfig, built from the pipeline config."""

from __future__ import annotations

import tensorflow_model_analysis as tfma

from pipeline.configs import PipelineConfig

TRANSFORM_SIGNATURE = "transform_features"
# ModelVerdict writes its verdict under this name, next to each deployment_blessing.
VERDICT_FILE = "verdict.json"
# (TFMA metric class, higher is better, key in TFMA's results) per gate metric and task.
GATE_METRICS = {
    ("binary", "auc"): ("AUC", True, "auc"),
    ("binary", "accuracy"): ("BinaryAccuracy", True, "binary_accuracy"),
    ("multiclass", "accuracy"): ("SparseCategoricalAccuracy", True, "sparse_categorical_accuracy"),
    ("regression", "mse"): ("MeanSquaredError", False, "mean_squared_error"),
    ("regression", "mae"): ("MeanAbsoluteError", False, "mean_absolute_error"),
}
REPORTED = {
    "binary": ["ExampleCount", "AUC", "BinaryAccuracy", "AUCPrecisionRecall", "Calibration",
               "CalibrationPlot", "MeanLabel", "MeanPrediction"],
    "multiclass": ["ExampleCount", "SparseCategoricalAccuracy", "MultiClassConfusionMatrixPlot"],
    "regression": ["ExampleCount", "MeanSquaredError", "MeanAbsoluteError", "MeanLabel",
                   "MeanPrediction", "Calibration"],
}


def output_key(config: PipelineConfig) -> str:
    return "predictions" if config.label.task == "regression" else "probabilities"


def gate_metric_name(config: PipelineConfig) -> str:
    return GATE_METRICS[(config.label.task, config.gates.metric)][0]


def gate_metric_key(config: PipelineConfig) -> str:
    """The gate metric's name in TFMA's results (e.g. "auc")."""
    return GATE_METRICS[(config.label.task, config.gates.metric)][2]


def gate_threshold(config: PipelineConfig) -> tfma.MetricThreshold:
    """Absolute bound, plus no regression beyond `change_tolerance` against the baseline."""
    _, higher_is_better, _ = GATE_METRICS[(config.label.task, config.gates.metric)]
    g = config.gates
    direction = (tfma.MetricDirection.HIGHER_IS_BETTER if higher_is_better
                 else tfma.MetricDirection.LOWER_IS_BETTER)
    tolerance = g.change_tolerance
    change = tfma.GenericChangeThreshold(
        direction=direction, absolute={"value": -tolerance if higher_is_better else tolerance})
    bounds = {}
    if g.lower_bound is not None:
        bounds["lower_bound"] = {"value": g.lower_bound}
    if g.upper_bound is not None:
        bounds["upper_bound"] = {"value": g.upper_bound}
    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(**bounds) if bounds else None,
        change_threshold=change)


def build_eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    gate = gate_metric_name(config)
    context_slices = [tfma.SlicingSpec(feature_keys=[c]) for c in config.context]
    # The gate judges the overall slice. Context slices are reported; TFMA 0.47 cannot gate
    # them only where they are large enough (its min_slice_size turns every suppressed slice
    # into a "Metric not found" failure), and small slices are too noisy to gate.
    thresholds = [tfma.PerSliceMetricThreshold(slicing_specs=[tfma.SlicingSpec()],
                                               threshold=gate_threshold(config))]
    metrics = [
        tfma.MetricConfig(class_name=name, per_slice_thresholds=thresholds if name == gate else None)
        for name in REPORTED[config.label.task]
    ]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name="serving_default",
            label_key=config.label.name,
            prediction_key=output_key(config),
            preprocessing_function_names=[TRANSFORM_SIGNATURE])],
        slicing_specs=[tfma.SlicingSpec()] + context_slices,
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
    )


def slice_metrics(evaluation_uri: str, model: str = "candidate") -> dict[str, dict[str, float]]:
    """{slice: {metric: value}} of an Evaluator output ("overall", "payment_type=Cash", ...).

    `model`: "candidate" (the model under evaluation) or "baseline" ({} when the
    evaluation had none: the first run).
    """
    from tensorflow_model_analysis.writers import eval_config_writer

    _, _, _, locations = eval_config_writer.load_eval_run(evaluation_uri)
    if len(locations) > 1:
        if model not in locations:
            return {}
        name = model
    elif model == "baseline":
        return {}
    else:
        name = None
    table = {}
    for slice_key, metrics in tfma.load_eval_result(evaluation_uri, model_name=name).slicing_metrics:
        slice_name = ", ".join(f"{k}={v.decode() if isinstance(v, bytes) else v}"
                               for k, v in slice_key) or "overall"
        table[slice_name] = {m: float(v["doubleValue"])
                             for m, v in metrics.get("", {}).get("", {}).items() if "doubleValue" in v}
    return table
