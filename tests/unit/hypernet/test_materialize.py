"""Materialization: one context's generated target as an ordinary Keras model, same outputs."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.unit.hypernet.support import CAT_IDS, CONTEXTS, HEADS, batch, build, example_context
from trainer.hypernet.hypernetwork import FEATURES
from trainer.hypernet.materialize import build_target_model, generated_weights, materialize
from trainer.hypernet.target_spec import TargetSpec


@pytest.mark.parametrize("chunk_size", [0, 7], ids=["dense-head", "chunked"])
@pytest.mark.parametrize("context_kind", list(CONTEXTS))
@pytest.mark.parametrize("head", list(HEADS))
def test_materialized_target_matches_composite(head, context_kind, chunk_size):
    model = build(context_kind, head, chunk_size)
    context = model.context
    inputs = batch(context, model.target.input_dim, seed=1)
    composite = model(inputs).numpy()
    assert composite.shape == (len(CAT_IDS), model.target.output_dim)

    materialized, per_context = {}, {}
    for i in range(len(CAT_IDS)):
        ctx = example_context(inputs, context, i)
        key = tuple(sorted(ctx.items()))
        if key not in materialized:
            materialized[key] = model.materialize(ctx or None)
        target = materialized[key]
        expected = target(inputs[FEATURES][i: i + 1]).numpy()
        np.testing.assert_allclose(composite[i: i + 1], expected, rtol=0, atol=1e-5,
                                   err_msg=f"example {i}, context {ctx}")
        per_context[key] = target(inputs[FEATURES][:1]).numpy()

    if context.is_static:
        assert len(materialized) == 1
    else:
        # Several contexts in the batch, and they really are different functions.
        assert len(materialized) >= 4
        outs = list(per_context.values())
        assert any(np.abs(a - outs[0]).max() > 1e-4 for a in outs[1:])
    # The materialised model is an ordinary Keras model with the spec's weights.
    target = next(iter(materialized.values()))
    assert [w.shape for w in target.get_weights()] == model.target.shapes()
    assert target.count_params() == model.target.num_params


def test_build_target_model_is_a_plain_mlp_of_the_spec():
    spec = TargetSpec(5, (6, 4), 3, activation="tanh", head="softmax")
    model = build_target_model(spec, name="plain")
    assert model.name == "plain"
    assert [layer.name for layer in model.layers[1:]] == ["dense_0", "dense_1", "dense_2"]
    assert [w.shape for w in model.get_weights()] == spec.shapes()
    assert [f"{w.name.split('/')[0]}/{w.name.split('/')[1][:-2]}" for w in model.weights] == [
        p.name for p in spec.params()]
    assert model.layers[-1].activation.__name__ == "softmax"
    assert model.count_params() == spec.num_params


@pytest.mark.parametrize("context_kind", list(CONTEXTS))
def test_function_and_methods_agree(context_kind):
    model = build(context_kind, "sigmoid", 0, seed=2)
    inputs = batch(model.context, model.target.input_dim, seed=3)
    ctx = example_context(inputs, model.context, 4) or None
    weights = generated_weights(model, ctx)
    for ours, method in zip(weights, model.generated_weights(ctx)):
        np.testing.assert_array_equal(ours, method)
    as_function = materialize(model, ctx, name="by_function")
    as_method = model.materialize(ctx)
    assert as_function.name == "by_function" and as_method.name == "target_network"
    for w, f, m in zip(weights, as_function.get_weights(), as_method.get_weights()):
        np.testing.assert_array_equal(f, w)
        np.testing.assert_array_equal(m, w)


def test_context_must_name_exactly_the_context_features():
    model = build("mixed", "sigmoid", 0)
    with pytest.raises(ValueError, match=r"missing \['num'\], unknown \[\]"):
        generated_weights(model, {"cat": 1})
    with pytest.raises(ValueError, match=r"missing \[\], unknown \['other'\]"):
        materialize(model, {"cat": 1, "num": 0.5, "other": 2.0})
    static = build("static", "sigmoid", 0)
    with pytest.raises(ValueError, match=r"unknown \['cat'\]"):
        static.generated_weights({"cat": 1})
    assert len(static.generated_weights(None)) == 2 * static.target.num_layers
    assert isinstance(static.materialize({}), tf.keras.Model)
