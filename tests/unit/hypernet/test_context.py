"""ContextSpec validation and ContextEncoder: context rows -> conditioning vectors."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer.hypernet.context import ContextEncoder, ContextSpec


def test_names_order_static_and_bound():
    spec = ContextSpec(categorical={"b": 3, "a": 4}, numeric=["n"], embedding_dim=2)
    assert spec.names == ("b", "a", "n")  # categorical first, in the given order
    assert not spec.is_static
    assert spec.max_distinct is None  # a numeric context: unbounded
    assert ContextSpec(categorical={"b": 3, "a": 4}).max_distinct == 12
    assert ContextSpec().is_static and ContextSpec().names == ()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"categorical": {"a": 0}}, "'a': vocabulary size must be >= 1"),
    ({"categorical": {"a": 2}, "numeric": ["a"]}, "both categorical and numeric: ['a']"),
    ({"embedding_dim": 0}, "embedding_dim must be >= 1"),
])
def test_bad_context_spec(kwargs, needle):
    with pytest.raises(ValueError) as err:
        ContextSpec(**kwargs)
    assert needle in str(err.value)


def test_encoder_embeds_ids_and_passes_numeric_values():
    spec = ContextSpec(categorical={"area": 5}, numeric=["hour"], embedding_dim=3)
    tf.keras.utils.set_random_seed(0)
    encoder = ContextEncoder(spec, name="context_encoder")
    rows = tf.constant([[4.0, 0.5], [0.0, -2.0], [4.0, 7.0]])
    out = encoder(rows).numpy()
    assert out.shape == (3, encoder.output_dim) == (3, 3 + 3 + 1)
    constant = encoder.constant.numpy()[0]
    table = encoder.embeddings["area"].embeddings.numpy()
    for r, (area, hour) in enumerate([(4, 0.5), (0, -2.0), (4, 7.0)]):
        np.testing.assert_array_equal(out[r], np.concatenate([constant, table[area], [hour]]))
    assert sorted(v.name for v in encoder.trainable_variables) == [
        "context_encoder/embed_area/embeddings:0", "static_embedding:0"]


def test_static_encoder_is_one_learned_row():
    encoder = ContextEncoder(ContextSpec(embedding_dim=4))
    out = encoder(None)
    assert tuple(out.shape) == (1, 4) == (1, encoder.output_dim)
    assert [v.name for v in encoder.trainable_variables] == ["static_embedding:0"]


def test_feature_names_are_made_safe_for_layer_names():
    encoder = ContextEncoder(ContextSpec(categorical={"pickup area/zone": 2}), name="context_encoder")
    encoder(tf.constant([[1.0]]))
    assert "context_encoder/embed_pickup_area_zone/embeddings:0" in [
        v.name for v in encoder.trainable_variables]
