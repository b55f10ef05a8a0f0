"""One context's generated target as an ordinary Keras model: what gets deployed.

Why apart from the composite: a materialized target needs no generator at serving
time, and building it (a plain `Dense` stack named `dense_<i>`, in `TargetSpec.params()`
order) is the one place the library produces a model of the target's own.
`HyperNetwork.materialize` and `.generated_weights` are thin methods over these.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from trainer.hypernet.functional_target import split_params
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.target_spec import TargetSpec


def build_target_model(spec: TargetSpec, name: str = "target_network") -> tf.keras.Model:
    """An ordinary Keras MLP of the target architecture (weights still to be set)."""
    inputs = tf.keras.Input(shape=(spec.input_dim,), name="features")
    h = inputs
    for i, units in enumerate(spec.hidden_units):
        h = tf.keras.layers.Dense(units, activation=spec.activation, name=f"dense_{i}")(h)
    out = tf.keras.layers.Dense(
        spec.output_dim, activation=spec.head, name=f"dense_{spec.num_layers - 1}")(h)
    return tf.keras.Model(inputs, out, name=name)


def generated_weights(hyper: HyperNetwork,
                      context: Mapping[str, float] | None = None) -> list[Any]:
    """`hyper`'s target parameter tensors for one context, in `get_weights()` order.

    `context` gives a model input per context feature of `hyper` (a categorical id, a
    numeric value), exactly those; None or {} for a static hypernetwork.
    """
    context = dict(context or {})
    names = hyper.context.names
    unknown, missing = set(context) - set(names), set(names) - set(context)
    if unknown or missing:
        raise ValueError(
            f"context must give exactly {list(names)}; "
            f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    inputs = {n: tf.constant([context[n]]) for n in names}
    inputs[FEATURES] = tf.zeros([1, hyper.target.input_dim])
    flat, index = hyper.generate_for_batch(inputs)
    weights = [t[int(index[0])].numpy() for t in split_params(hyper.target, flat)]
    if hyper.target.head == "linear":  # the output affine, folded into the last layer
        scale, shift = hyper.output_affine.numpy()
        weights[-2] = weights[-2] * scale
        weights[-1] = weights[-1] * scale + shift
    for name, table in hyper.intercepts.items():  # on the logit scale: the output bias
        weights[-1] = weights[-1] + table.numpy()[int(context[name])]
    return weights


def materialize(hyper: HyperNetwork, context: Mapping[str, float] | None = None,
                name: str = "target_network") -> tf.keras.Model:
    """An ordinary Keras target model with `hyper`'s weights for `context` set."""
    model = build_target_model(hyper.target, name=name)
    model.set_weights(generated_weights(hyper, context))
    return model
