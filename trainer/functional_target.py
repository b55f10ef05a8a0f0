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
    max_contexts: int | None = None,
) -> tf.Tensor:
    """Run the target MLP on x [B, input_dim] with generated parameters.

    `params[k]` has a leading axis over parameter sets (one per distinct context);
    `index` [B] says which set each example uses (None: set 0 for every example);
    `max_contexts`, when known, bounds how many sets there can be.
    The function owns no variables, so every gradient flows to the generator.
    """
    h = x
    for layer in range(spec.num_layers):
        kernel, bias = params[2 * layer], params[2 * layer + 1]
        if index is None:
            h = tf.matmul(h, kernel[0]) + bias[0]
        else:
            h = _per_context_dense(h, kernel, bias, index, max_contexts)
        if layer < spec.num_layers - 1:
            h = _activation(spec.activation)(h)
    return h if return_logits else _activation(spec.head)(h)


# Up to this many possible contexts, each context's examples go through their own matrix
# product (one op per possible context, empty ones cost next to nothing).
PARTITION_LIMIT = 32


def _per_context_dense(h: tf.Tensor, kernel: tf.Tensor, bias: tf.Tensor, index: tf.Tensor,
                       max_contexts: int | None = None) -> tf.Tensor:
    """h [B, in] through kernel[index[b]] [U, in, out] and bias[index[b]], per example.

    Few possible contexts (a categorical context, `max_contexts` <= PARTITION_LIMIT):
    the batch is partitioned by context and each part multiplied by its own kernel, so
    the work is one plain layer's. Otherwise, few distinct contexts in the batch
    (U <= B / 8): one product against all U kernels side by side, each example keeping
    its context's columns (U plain layers' work, as one GEMM). Many: gather one kernel
    per example and multiply batch-wise (B small products).
    """
    if max_contexts is not None and max_contexts <= PARTITION_LIMIT:
        last = tf.shape(kernel)[0] - 1  # parts past the batch's U contexts are empty
        parts = tf.dynamic_partition(h, index, max_contexts)
        positions = tf.dynamic_partition(tf.range(tf.shape(h)[0]), index, max_contexts)
        outs = [tf.matmul(part, kernel[tf.minimum(u, last)]) for u, part in enumerate(parts)]
        return tf.dynamic_stitch(positions, outs) + tf.gather(bias, index)

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
