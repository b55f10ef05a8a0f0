"""The deployment gate as a TFMA EvalConfig, built from the pipeline config."""

from __future__ import annotations

import tensorflow_model_analysis as tfma

from pipeline.configs import TRANSFORM_SIGNATURE, PipelineConfig

REPORTED = {
    "binary": ["ExampleCount", "AUC", "BinaryAccuracy", "AUCPrecisionRecall", "Calibration",
               "CalibrationPlot", "MeanLabel", "MeanPrediction"],
    "multiclass": ["ExampleCount", "SparseCategoricalAccuracy", "MultiClassConfusionMatrixPlot"],
    # No Calibration: mean prediction / mean label means nothing for a signed or centred
    # target; the mean label and mean prediction are reported side by side instead.
    "regression": ["ExampleCount", "MeanSquaredError", "MeanAbsoluteError", "MeanLabel",
                   "MeanPrediction"],
}


def gate_threshold(config: PipelineConfig) -> tfma.MetricThreshold:
    """Absolute bound, plus no regression beyond `change_tolerance` against the baseline."""
    higher_is_better = config.gate_metric.higher_is_better
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
    if not bounds:
        # No bound: every gate metric is >= 0, so this holds for any real value (a NaN
        # fails). Without it a first run has no threshold left (the change threshold
        # needs a baseline), TFMA skips validation and the run is never blessed.
        bounds["lower_bound"] = {"value": 0.0}
    return tfma.MetricThreshold(
        value_threshold=tfma.GenericValueThreshold(**bounds) if bounds else None,
        change_threshold=change)


def build_eval_config(config: PipelineConfig) -> tfma.EvalConfig:
    gate = config.gate_metric.tfma_class
    # One slice per context value, thousands included (ModelVerdict's slice gate reads them):
    # 1,876 school slices of Chem97's test split cost the Evaluator ~5-10 s and ~20 MB more
    # on a first run, ~10-20 s and ~50 MB with a baseline (2 cores, in-memory DirectRunner).
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
            prediction_key=config.output_name,
            preprocessing_function_names=[TRANSFORM_SIGNATURE])],
        slicing_specs=[tfma.SlicingSpec()] + context_slices,
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
    )
