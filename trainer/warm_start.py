"""Warm start: begin retraining from the last blessed model's generator weights.

Only when the architecture matches exactly: the same vocabularies (an id must mean
the same value: embedding rows and one-hot inputs are indexed by it) and the same
variables with the same shapes. Otherwise training starts from scratch and the
reason is logged, never half-copied.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
from absl import logging


def vocabulary_change(vocabularies: Mapping[str, str], base_model_dir: str) -> str | None:
    """Which vocabulary differs between this run (name -> file) and the base model's assets."""
    for name, path in sorted(vocabularies.items()):
        base = os.path.join(base_model_dir, "assets", os.path.basename(path))
        if not tf.io.gfile.exists(base):
            return f"the base model has no vocabulary {os.path.basename(path)}"
        with tf.io.gfile.GFile(path, "rb") as ours, tf.io.gfile.GFile(base, "rb") as theirs:
            if ours.read() != theirs.read():
                return f"vocabulary of {name} changed since the base model"
    return None


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


def trainable_variables_under(root: Any) -> list[tf.Variable]:
    """Every trainable variable reachable from a restored object, each once.

    A restored Keras layer has no `trainable_variables` unless it was saved with Keras's
    traces (trainer/hypernet/keras_env.without_keras_traces); walking the object graph reads both.
    """
    found, stack, seen = [], [root], {id(root)}
    while stack:
        node = stack.pop()
        if isinstance(node, tf.Variable):
            if node.trainable:
                found.append(node)
            continue
        for child in tf.train.TrackableView(node).children(node).values():
            if id(child) not in seen:
                seen.add(id(child))
                stack.append(child)
    return found


def copy_hypernetwork_weights(hyper: tf.keras.Model, model_dir: str,
                              with_output_affine: bool = False) -> str | None:
    """Set `hyper`'s variables (built) from an exported model's; None, or why not.

    `with_output_affine`: also its label scaling (rebuilding that model), which a warm
    start must not take (this run's labels set its own).
    """
    try:
        base = tf.saved_model.load(model_dir).hyper
        base_vars = trainable_variables_under(base)
    except (OSError, ValueError, AttributeError) as e:
        return f"cannot read the base model at {model_dir}: {e}"
    reason = mismatch(hyper.trainable_variables, base_vars)
    if reason is None:
        by_key = {_key(v): v for v in base_vars}
        for variable in hyper.trainable_variables:
            variable.assign(by_key[_key(variable)])
        if with_output_affine:
            hyper.output_affine.assign(base.output_affine)
    return reason


def warm_start(hyper: tf.keras.Model, base_model_dir: str | None,
               vocabularies: Mapping[str, str]) -> str | None:
    """Copy the base model's hypernetwork weights into `hyper` (already built).

    `vocabularies`: this run's vocabulary files by feature. Returns None when copied,
    else the reason it was not.
    """
    if not base_model_dir:
        reason = "no blessed model yet"
    elif (reason := vocabulary_change(vocabularies, base_model_dir)) is not None:
        pass
    elif (reason := copy_hypernetwork_weights(hyper, base_model_dir)) is None:
        logging.info("warm start: %d generator variables from %s",
                     len(hyper.trainable_variables), base_model_dir)
        return None
    logging.warning("warm start skipped, training from scratch: %s", reason)
    return reason
