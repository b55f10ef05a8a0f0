"""The target network as a function of (inputs, generated parameters), and as a plain Keras model."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from trainer.target_spec import TargetSpec


def split_params(spec: TargetSpec, flat: tf.Tensor) -> list[tf.Tensor]:
    """[U, num_params] -> [U, *shape] per parameter tensor, in `get_weights()` order."""
    sizes = [p.size for p in spec.params()]
    pieces = tf.split(flat, sizes, axis=-1)
    return [tf.reshape(t, [-1, *p.shape]) for t, p in zip(pieces, spec.params())]


def apply_target(
    spec: TargetSpec,
    x: tf.Tensor,
    params: Sequence[tf.Tensor],
    index: tf.Tensor | None = None,
    return_logits: bool = False,
    contexts: int | None = None,
) -> tf.Tensor:
    """Run the target MLP on x [B, input_dim] with generated parameters.

    `params[k]` has a leading axis over parameter sets (one per distinct context);
    `index` [B] says which set each example uses (None: set 0 for every example);
    `contexts`: there is one set per possible context, `contexts` of them, and `index` is
    each example's context id; the batch is then partitioned by context once.
    The function owns no variables, so every gradient flows to the generator.
    """
    if index is not None and contexts is not None:
        return _partitioned_target(spec, x, params, index, contexts, return_logits)
    h = x
    for layer in range(spec.num_layers):
        kernel, bias = params[2 * layer], params[2 * layer + 1]
        if index is None:
            h = tf.matmul(h, kernel[0]) + bias[0]
        else:
            h = _per_context_dense(h, kernel, bias, index)
        if layer < spec.num_layers - 1:
            h = _activation(spec.activation)(h)
    return h if return_logits else _activation(spec.head)(h)


def _partitioned_target(spec: TargetSpec, x: tf.Tensor, params: Sequence[tf.Tensor],
                        index: tf.Tensor, contexts: int, return_logits: bool) -> tf.Tensor:
    """The batch split by context once; each part through its own context's MLP; rejoined.

    `params[k]` has one row per possible context (`contexts` of them) and `index` [B] is
    each example's context: the work is one plain MLP's, in a few ops per layer and
    context (partitioning and rejoining once, not per layer).
    """
    parts = tf.dynamic_partition(x, index, contexts)
    positions = tf.dynamic_partition(tf.range(tf.shape(x)[0]), index, contexts)
    for layer in range(spec.num_layers):
        kernels = tf.unstack(params[2 * layer], num=contexts)
        biases = tf.unstack(params[2 * layer + 1], num=contexts)
        parts = [tf.matmul(h, k) + b for h, k, b in zip(parts, kernels, biases)]
        if layer < spec.num_layers - 1:
            parts = [_activation(spec.activation)(h) for h in parts]
    h = tf.dynamic_stitch(positions, parts)
    return h if return_logits else _activation(spec.head)(h)


def _per_context_dense(h: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor,
                       index: tf.Tensor) -> tf.Tensor:
    """h [B, in] through kernel[index[b]] [U, in, out] and bias[index[b]], per example.

    Few distinct contexts in the batch (U <= B / 8): one product against all U kernels
    side by side, each example keeping its context's columns (U plain layers' work, as
    one GEMM). Many: gather one kernel per example and multiply batch-wise (B small
    products).
    """
    contexts, batch = tf.shape(kernel)[0], tf.shape(h)[0]

    def all_contexts() -> tf.Tensor:
        out = tf.einsum("bi,uio->buo", h, kernel)  # [B, U, out]
        return tf.gather(out, index, axis=1, batch_dims=1)

    def per_example() -> tf.Tensor:
        return tf.einsum("bi,bio->bo", h, tf.gather(kernel, index))

    return tf.cond(contexts * 8 <= batch, all_contexts, per_example) + tf.gather(bias, index)


def target_preactivations(
    spec: TargetSpec, x: tf.Tensor, params: Sequence[tf.Tensor]
) -> list[tf.Tensor]:
    """Pre-activations of every layer for one parameter set (params[k][0]); for diagnostics."""
    out, h = [], x
    for layer in range(spec.num_layers):
        z = tf.matmul(h, params[2 * layer][0]) + params[2 * layer + 1][0]
        out.append(z)
        h = _activation(spec.activation)(z)
    return out


def build_target_model(spec: TargetSpec, name: str = "target_network") -> tf.keras.Model:
    """An ordinary Keras MLP of the target architecture (weights still to be set)."""
    inputs = tf.keras.Input(shape=(spec.input_dim,), name="features")
    h = inputs
    for i, units in enumerate(spec.hidden_units):
        h = tf.keras.layers.Dense(units, activation=spec.activation, name=f"dense_{i}")(h)
    out = tf.keras.layers.Dense(
        spec.output_dim, activation=spec.head, name=f"dense_{spec.num_layers - 1}")(h)
    return tf.keras.Model(inputs, out, name=name)


def _activation(name: str):
    return {
        "relu": tf.nn.relu,
        "elu": tf.nn.elu,
        "gelu": tf.keras.activations.gelu,
        "tanh": tf.tanh,
        "swish": tf.nn.swish,
        "linear": tf.identity,
        "sigmoid": tf.sigmoid,
        "softmax": tf.nn.softmax,
    }[name]
