"""ModelVerdict: the final deployment decision, and why, in a log line and a JSON file.

The Evaluator judges the overall slice (absolute bound, change vs the last blessed
model). TFMA 0.47 cannot gate a slice only when it is large enough, so the per-slice
regression check lives here: a context slice with enough examples (and, for a binary
label, enough of its rarer class) may not fall more than the slice tolerance below
the last blessed model. The resulting ModelBlessing is what the Pusher obeys.

A rejected model is a successful run that pushes nothing; the people running the
schedule need to see why without opening TFMA. The file is
<pipeline_root>/verdict.json (the newest run's), one JSON object.
"""

import json
import os
from typing import Any

from absl import logging
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from components.storage import replace_file
from pipeline.configs import VERDICT_FILE
from trainer.eval_results import slice_metrics


def _slice_name(slice_key: Any) -> str:
    keys = [f"{k.column}={k.bytes_value.decode() if k.bytes_value else k.int64_value or k.float_value}"
            for k in slice_key.single_slice_keys]
    return ", ".join(keys) or "overall"


def slice_regressions(candidate: dict[str, dict[str, float]], baseline: dict[str, dict[str, float]],
                      metric: str, tolerance: float, min_examples: int,
                      higher_is_better: bool = True) -> list[str]:
    """Context slices (with >= min_examples) whose metric fell beyond tolerance vs baseline."""
    failures = []
    for name, values in sorted(candidate.items()):
        if name == "overall" or name not in baseline or metric not in values:
            continue
        count = values.get("example_count", 0.0)
        old = baseline[name].get(metric)
        if count < min_examples or old is None:
            continue
        if "mean_label" in values:  # binary: AUC/accuracy of a nearly one-class slice is noise
            minority = count * min(values["mean_label"], 1.0 - values["mean_label"])
            if minority < min_examples / 10:
                continue
        drop = (old - values[metric]) if higher_is_better else (values[metric] - old)
        if drop > tolerance:
            failures.append(f"{name}: {metric} = {values[metric]:.4f} vs {old:.4f} for the last "
                            f"blessed model (worse by {drop:.4f} > slice tolerance {tolerance}; "
                            f"{int(count)} examples)")
    return failures


def build_verdict(evaluation_uri: str, evaluator_blessed: bool, metric: str,
                  slice_tolerance: float | None = None, min_slice_examples: int = 0,
                  higher_is_better: bool = True) -> dict[str, Any]:
    """The verdict of an Evaluator output (see `decide`)."""
    import tensorflow_model_analysis as tfma

    verdict = decide(tfma.load_validation_result(evaluation_uri), evaluator_blessed,
                     slice_metrics(evaluation_uri, "candidate"),
                     slice_metrics(evaluation_uri, "baseline"), metric, slice_tolerance,
                     min_slice_examples, higher_is_better)
    return {**verdict, "evaluation": evaluation_uri}


def decide(validation: Any, evaluator_blessed: bool, candidate: dict[str, dict[str, float]],
           baseline: dict[str, dict[str, float]], metric: str,
           slice_tolerance: float | None = None, min_slice_examples: int = 0,
           higher_is_better: bool = True) -> dict[str, Any]:
    """The verdict as data: blessed or not, the gate metric's values, every failed check.

    Blessed = the Evaluator blessed (overall bound and change) and, when slice_tolerance
    is set, no context slice large enough regressed beyond it against the baseline. A
    verdict that does not bless always names at least one reason.
    """
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
    slice_failures = []
    if slice_tolerance is not None and baseline:
        slice_failures = slice_regressions(candidate, baseline, metric, slice_tolerance,
                                           min_slice_examples, higher_is_better)
    if not evaluator_blessed and not reasons:
        reasons = _unlisted_failures(validation, metric, candidate)
    return {
        "blessed": evaluator_blessed and not slice_failures,
        "evaluator_blessed": evaluator_blessed,
        "gate_metric": metric,
        "value": candidate.get("overall", {}).get(metric),
        "baseline_value": baseline.get("overall", {}).get(metric),
        "reasons": reasons + slice_failures,
    }


def _unlisted_failures(validation: Any, metric: str,
                       candidate: dict[str, dict[str, float]]) -> list[str]:
    """Why TFMA did not bless when it lists no failed threshold."""
    reasons = []
    if validation.missing_thresholds:
        reasons.append("a gate threshold names a metric the evaluation did not compute")
    for spec in validation.missing_slices:
        text = str(spec).replace("\n", " ").strip() or "overall"
        reasons.append(f"slice {text} has no examples in the evaluation split")
    if metric not in candidate.get("overall", {}):
        reasons.append(f"the gate metric {metric} is missing from the evaluation")
    if not reasons:
        reasons.append("the Evaluator did not bless the model and recorded no failed check "
                       f"(validation_ok={validation.validation_ok})")
    return reasons


BLESSING_PROPERTIES = ("current_model", "current_model_id", "baseline_model", "baseline_model_id")


@component
def ModelVerdict(
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: InputArtifact[standard_artifacts.ModelBlessing],
    deployment_blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    verdict_dir: Parameter[str],
    gate_metric: Parameter[str],
    slice_tolerance: Parameter[float],
    min_slice_examples: Parameter[int],
    higher_is_better: Parameter[int] = 1,
) -> None:
    """The final deployment decision: the Evaluator's blessing and the per-slice check.

    Writes verdict_dir/verdict.json, logs the verdict, and outputs the ModelBlessing that
    the Pusher, the target-network export and the next run's baseline resolver read.
    """
    verdict = build_verdict(evaluation.uri, bool(blessing.get_int_custom_property("blessed")),
                            gate_metric, slice_tolerance if slice_tolerance >= 0 else None,
                            min_slice_examples, bool(higher_is_better))
    for key in BLESSING_PROPERTIES:
        if blessing.has_custom_property(key):
            value = blessing.get_custom_property(key)
            if isinstance(value, int):
                deployment_blessing.set_int_custom_property(key, value)
            else:
                deployment_blessing.set_string_custom_property(key, str(value))
    deployment_blessing.set_int_custom_property("blessed", int(verdict["blessed"]))
    marker = "BLESSED" if verdict["blessed"] else "NOT_BLESSED"
    replace_file(os.path.join(deployment_blessing.uri, marker), "")
    # This run's verdict next to its blessing, and the newest run's in verdict_dir.
    for folder in (deployment_blessing.uri, verdict_dir):
        replace_file(os.path.join(folder, VERDICT_FILE), json.dumps(verdict, indent=2))
    if verdict["blessed"]:
        logging.info("verdict: model BLESSED (%s = %s)", gate_metric, verdict["value"])
    else:
        logging.warning("verdict: model NOT blessed, nothing will be pushed: %s",
                        "; ".join(verdict["reasons"]) or "see the evaluation")
