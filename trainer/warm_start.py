"""Warm start: begin retraining from the last blessed model's generator weights.

Only when the architecture matches exactly (same variables, same shapes: same
vocabularies, target and generator sizes). Otherwise training starts from scratch
and the reason is logged, never half-copied.
"""

from __future__ import annotations

import tensorflow as tf
from absl import logging


def _key(variable: tf.Variable) -> str:
    # Drop the model's own name scope: "hyper_model/hypernetwork/..." -> "hypernetwork/...".
    return variable.name.split("/", 1)[-1]


def mismatch(model_vars: list[tf.Variable], base_vars: list[tf.Variable]) -> str | None:
    """Why the base variables cannot initialise the model's, or None when they can."""
    ours = {_key(v): tuple(v.shape) for v in model_vars}
    theirs = {_key(v): tuple(v.shape) for v in base_vars}
    if ours.keys() != theirs.keys():
        missing, extra = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
        return f"different variables (new: {missing[:3]}, gone: {extra[:3]})"
    for name, shape in ours.items():
        if theirs[name] != shape:
            return f"{name} has shape {theirs[name]} in the base model, {shape} now"
    return None


def warm_start(hyper: tf.keras.Model, base_model_dir: str | None) -> str | None:
    """Copy the base model's hypernetwork weights into `hyper` (already built).

    Returns None when copied, else the reason it was not.
    """
    if not base_model_dir:
        reason = "no blessed model yet"
    else:
        try:
            base = tf.saved_model.load(base_model_dir)
            base_vars = list(base.hyper.trainable_variables)
        except (OSError, ValueError, AttributeError) as e:
            base_vars, reason = [], f"cannot read the base model at {base_model_dir}: {e}"
        else:
            reason = mismatch(hyper.trainable_variables, base_vars)
        if reason is None:
            by_key = {_key(v): v for v in base_vars}
            for variable in hyper.trainable_variables:
                variable.assign(by_key[_key(variable)])
            logging.info("warm start: %d generator variables from %s",
                         len(base_vars), base_model_dir)
            return None
    logging.warning("warm start skipped, training from scratch: %s", reason)
    return reason
