"""The three named ways to run the target agree with each other, a Keras MLP and in gradients."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer.hypernet.functional_target import (
    apply_indexed,
    apply_partitioned,
    apply_shared,
    split_params,
    target_preactivations,
)
from trainer.hypernet.materialize import build_target_model
from trainer.hypernet.target_spec import TargetSpec

SPEC = TargetSpec(6, (5, 4), 3, head="softmax")


def _setup(batch: int, contexts: int, spec: TargetSpec = SPEC, seed: int = 0):
    """x [batch, in], `contexts` parameter sets (as Variables), an index leaving the last unused."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, spec.input_dim)), tf.float32)
    params = [tf.Variable(rng.normal(size=(contexts, *p.shape)).astype(np.float32))
              for p in spec.params()]
    index = tf.constant(rng.integers(0, contexts - 1, size=batch), tf.int32)  # one unused
    return x, params, index


def _per_example_shared(spec, x, params, index, return_logits=False) -> np.ndarray:
    return np.concatenate([
        apply_shared(spec, x[b: b + 1], [p[int(index[b])][None] for p in params],
                     return_logits).numpy()
        for b in range(x.shape[0])])


def test_split_params_cuts_in_spec_order():
    spec = TargetSpec(3, (4,), 2, head="softmax")
    flat = tf.reshape(tf.range(2 * spec.num_params, dtype=tf.float32), [2, -1])
    pieces = split_params(spec, flat)
    assert [tuple(t.shape) for t in pieces] == [(2, *s) for s in spec.shapes()]
    np.testing.assert_array_equal(pieces[0][1].numpy().ravel(),
                                  np.arange(spec.num_params, spec.num_params + 12))
    np.testing.assert_array_equal(pieces[-1][0].numpy(), [spec.num_params - 2, spec.num_params - 1])


@pytest.mark.parametrize("batch, contexts", [(64, 3), (5, 7)])  # both branches of apply_indexed
def test_partitioned_target_matches_the_general_path(batch, contexts):
    """Few possible contexts take the partitioned path: same outputs and gradients."""
    x, params, index = _setup(batch, contexts)
    results = []
    for partitioned in (True, False):
        with tf.GradientTape() as tape:
            if partitioned:
                out = apply_partitioned(SPEC, x, params, index, contexts)
            else:
                out = apply_indexed(SPEC, x, params, index)
            loss = tf.reduce_sum(out * tf.range(3, dtype=tf.float32))
        results.append([out.numpy(), *[tf.convert_to_tensor(g).numpy()
                                         for g in tape.gradient(loss, params)]])
    for partitioned, general in zip(*results):
        np.testing.assert_allclose(partitioned, general, rtol=1e-5, atol=1e-5)
    assert results[0][0].shape == (batch, 3)
    assert np.all(results[0][1][contexts - 1] == 0)  # the unused context's kernel: no gradient


@pytest.mark.parametrize("return_logits", [False, True], ids=["head", "logits"])
@pytest.mark.parametrize("batch, contexts", [(64, 3), (5, 7)])
def test_partitioned_indexed_and_per_example_shared_agree(batch, contexts, return_logits):
    x, params, index = _setup(batch, contexts, seed=1)
    partitioned = apply_partitioned(SPEC, x, params, index, contexts, return_logits).numpy()
    indexed = apply_indexed(SPEC, x, params, index, return_logits).numpy()
    shared = _per_example_shared(SPEC, x, params, index, return_logits)
    assert partitioned.shape == indexed.shape == shared.shape == (batch, SPEC.output_dim)
    np.testing.assert_allclose(partitioned, shared, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(indexed, shared, rtol=1e-5, atol=1e-5)
    if not return_logits:
        np.testing.assert_allclose(shared.sum(axis=1), 1.0, rtol=1e-5)  # softmax head


@pytest.mark.parametrize("activation, head, output_dim",
                         [("relu", "sigmoid", 1), ("tanh", "softmax", 3), ("gelu", "linear", 2),
                          ("elu", "sigmoid", 1), ("swish", "linear", 1), ("linear", "linear", 1)])
def test_every_function_matches_a_keras_mlp_with_those_weights(activation, head, output_dim):
    spec = TargetSpec(6, (5, 4), output_dim, activation=activation, head=head)
    x, params, index = _setup(16, 3, spec, seed=2)
    keras_out = []
    for b in range(16):
        model = build_target_model(spec)
        model.set_weights([p[int(index[b])].numpy() for p in params])
        keras_out.append(model(x[b: b + 1]).numpy())
    expected = np.concatenate(keras_out)
    for got in (apply_partitioned(spec, x, params, index, 3), apply_indexed(spec, x, params, index),
                _per_example_shared(spec, x, params, index)):
        np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [64, 5])
def test_indexed_gradients_are_the_per_example_shared_gradients_summed(batch):
    x, params, index = _setup(batch, 3, seed=3)
    weights = tf.constant(np.random.default_rng(4).normal(size=(batch, 3)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(apply_indexed(SPEC, x, params, index) * weights)
    indexed = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, params)]
    summed = [np.zeros(p.shape, np.float32) for p in params]
    for b in range(batch):
        u = int(index[b])
        with tf.GradientTape() as tape:
            one = [p[u][None] for p in params]
            loss = tf.reduce_sum(apply_shared(SPEC, x[b: b + 1], one) * weights[b])
        for total, g in zip(summed, tape.gradient(loss, params)):
            total += tf.convert_to_tensor(g).numpy()
    for got, want in zip(indexed, summed):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.all(indexed[0][2] == 0)  # the unused set's kernel


def test_preactivations_end_in_the_shared_logits():
    x, params, _ = _setup(8, 2, seed=5)
    one = [p[:1] for p in params]
    zs = target_preactivations(SPEC, x, one)
    assert [tuple(z.shape) for z in zs] == [(8, 5), (8, 4), (8, 3)]
    np.testing.assert_allclose(zs[-1].numpy(), apply_shared(SPEC, x, one, return_logits=True),
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tf.nn.softmax(zs[-1]).numpy(), apply_shared(SPEC, x, one),
                               rtol=1e-6, atol=1e-6)
