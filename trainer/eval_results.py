"""Reading an Evaluator's results back: one table of metrics per slice.

The verdict, the target-network export, the run summary and the benchmarks all read
TFMA's output; this is the one reader, below all of them.
"""

from __future__ import annotations

import tensorflow_model_analysis as tfma


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
