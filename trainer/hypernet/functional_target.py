"""The target MLP as a function of (inputs, generated parameters), owning no variables.

Why: every gradient must flow through the generated parameters to the generator, so
the target cannot be a Keras model with weights of its own. There are three ways to
run it, each a named function, and the caller (the composite model) picks one:

- `apply_shared`: one parameter set for every example.
- `apply_indexed`: U parameter sets, an index [B] picks each example's.
- `apply_partitioned`: one set per possible context; the batch is split by context once.

All three take `params` as `split_params` gives them: one tensor per parameter of the
target, in `get_weights()` order, each with a leading axis over parameter sets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from trainer.hypernet.target_spec import TargetSpec


def split_params(spec: TargetSpec, flat: tf.Tensor) -> list[tf.Tensor]:
    """[U, num_params] -> [U, *shape] per parameter tensor, in `get_weights()` order."""
    sizes = [p.size for p in spec.params()]
    pieces = tf.split(flat, sizes, axis=-1)
    return [tf.reshape(t, [-1, *p.shape]) for t, p in zip(pieces, spec.params())]


def apply_shared(spec: TargetSpec, x: tf.Tensor, params: Sequence[tf.Tensor],
                 return_logits: bool = False) -> tf.Tensor:
    """x [B, input_dim] through one parameter set, set 0 of `params` (a [1, *shape] each)."""
    h = x
    for layer in range(spec.num_layers):
        h = tf.matmul(h, params[2 * layer][0]) + params[2 * layer + 1][0]
        if layer < spec.num_layers - 1:
            h = activation(spec.activation)(h)
    return h if return_logits else activation(spec.head)(h)


def apply_indexed(spec: TargetSpec, x: tf.Tensor, params: Sequence[tf.Tensor],
                  index: tf.Tensor, return_logits: bool = False) -> tf.Tensor:
    """x [B, input_dim], example b through parameter set `index[b]` of U sets.

    Each layer chooses at run time (see `_per_context_dense`) between one product
    against all U kernels and one gathered kernel per example.
    """
    h = x
    for layer in range(spec.num_layers):
        h = _per_context_dense(h, params[2 * layer], params[2 * layer + 1], index)
        if layer < spec.num_layers - 1:
            h = activation(spec.activation)(h)
    return h if return_logits else activation(spec.head)(h)


def apply_partitioned(spec: TargetSpec, x: tf.Tensor, params: Sequence[tf.Tensor],
                      index: tf.Tensor, contexts: int, return_logits: bool = False) -> tf.Tensor:
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
            parts = [activation(spec.activation)(h) for h in parts]
    h = tf.dynamic_stitch(positions, parts)
    return h if return_logits else activation(spec.head)(h)


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
        h = activation(spec.activation)(z)
    return out


# Hidden activations (TargetSpec.activation) and output heads (TargetSpec.head) by name.
_ACTIVATIONS: dict[str, Callable[[tf.Tensor], tf.Tensor]] = {
    "relu": tf.nn.relu,
    "elu": tf.nn.elu,
    "gelu": tf.keras.activations.gelu,
    "tanh": tf.tanh,
    "swish": tf.nn.swish,
    "linear": tf.identity,
    "sigmoid": tf.sigmoid,
    "softmax": tf.nn.softmax,
}


def activation(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    return _ACTIVATIONS[name]
