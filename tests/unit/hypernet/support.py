"""Shared builders for the hypernetwork library's tests: contexts, heads, batches, models."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.hypernet.context import ContextSpec
from trainer.hypernet.generator import GeneratorConfig
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.target_spec import TargetSpec

CONTEXTS = {
    "categorical": ContextSpec(categorical={"cat": 5}),
    "numeric": ContextSpec(numeric=["num"]),
    "mixed": ContextSpec(categorical={"cat": 5}, numeric=["num"]),
    "static": ContextSpec(),
}
# head -> (output_dim, hidden activation): one activation per head covers three of them.
HEADS = {"sigmoid": (1, "relu"), "softmax": (3, "tanh"), "linear": (2, "gelu")}
CAT_IDS = [0, 1, 2, 3, 4, 2, 0, 4, 1, 3, 3, 0]
NUM_VALUES = [-2.0, 0.7, 1.5, -0.3, 0.7, 3.0, -2.0, 1.5, 0.25, -0.3, 3.0, 0.7]


def batch(context: ContextSpec, input_dim: int, seed: int = 0) -> dict[str, tf.Tensor]:
    """12 examples spread over several contexts (every categorical id appears)."""
    rng = np.random.default_rng(seed)
    inputs = {FEATURES: tf.constant(rng.normal(size=(len(CAT_IDS), input_dim)), tf.float32)}
    if "cat" in context.names:
        inputs["cat"] = tf.constant(CAT_IDS, tf.int64)
    if "num" in context.names:
        inputs["num"] = tf.constant(NUM_VALUES, tf.float32)
    return inputs


def example_context(inputs: dict[str, tf.Tensor], context: ContextSpec, i: int) -> dict:
    out = {}
    for name in context.names:
        value = inputs[name].numpy()[i]
        out[name] = int(value) if name in context.categorical else float(value)
    return out


def perturb(model: tf.keras.Model, seed: int, scale: float = 0.3) -> None:
    """Move every generator variable off its init, as training would.

    At init every trunk bias is zero, so a scalar numeric context v > 0 gives the
    same LayerNorm-ed trunk output for every v; perturbing makes contexts differ.
    """
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign_add(scale * rng.normal(size=v.shape).astype(np.float32))


def build(context_kind: str, head: str, chunk_size: int, seed: int = 0) -> HyperNetwork:
    output_dim, activation = HEADS[head]
    spec = TargetSpec(5, (6, 4), output_dim, activation=activation, head=head)
    tf.keras.utils.set_random_seed(seed)
    model = HyperNetwork(spec, CONTEXTS[context_kind], GeneratorConfig(
        trunk_units=(16,), chunk_size=chunk_size, chunk_embedding_dim=4))
    model(batch(model.context, spec.input_dim))  # build
    perturb(model, seed)
    return model
