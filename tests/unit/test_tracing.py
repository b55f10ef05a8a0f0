"""No AutoGraph on our code: fit, evaluate and export trace our layers and Keras's steps as written."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.autograph.impl import api as autograph_api

from trainer.hypernet.context import ContextSpec
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.keras_env import without_autograph, without_keras_traces
from trainer.hypernet.target_spec import TargetSpec
from trainer.warm_start import variables_under


@pytest.fixture
def conversions(monkeypatch) -> list:
    """Every function AutoGraph is asked to convert (cached conversions included)."""
    seen: list = []
    real = autograph_api._convert_actual
    monkeypatch.setattr(autograph_api, "_convert_actual",
                        lambda entity, ctx: seen.append(entity) or real(entity, ctx))
    return seen


def _names(entities: list) -> set[str]:
    return {f"{getattr(e, '__module__', '')}.{getattr(e, '__qualname__', e)}" for e in entities}


def _data(n: int = 64) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(0)
    x = {FEATURES: rng.normal(size=(n, 5)).astype(np.float32),
         "cat": rng.integers(0, 4, size=n).astype(np.int64)}
    return x, (x[FEATURES][:, 0] > 0).astype(np.float32)


class _ConvertedModel(tf.keras.Model):
    """A plain Keras model: the control, whose call AutoGraph does convert."""

    def __init__(self):
        super().__init__()
        self.dense = tf.keras.layers.Dense(1, activation="sigmoid")

    def call(self, inputs):
        return self.dense(inputs[FEATURES])


def _fit(model: tf.keras.Model) -> None:
    model.compile(optimizer="adam", loss="binary_crossentropy",
                  metrics=[tf.keras.metrics.AUC(name="auc")])
    x, y = _data()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    model.evaluate(x, y, batch_size=16, verbose=0)


def test_fit_and_export_convert_none_of_our_code(conversions, tmp_path):
    model = HyperNetwork(TargetSpec(5, (8,), 1), ContextSpec(categorical={"cat": 4}))
    _fit(model)

    @tf.function(input_signature=[tf.TensorSpec([None, 5], tf.float32, name="features"),
                                  tf.TensorSpec([None], tf.int64, name="cat")])
    @without_autograph
    def serve(features, cat):
        return {"p": model({FEATURES: features, "cat": cat})}

    with without_keras_traces():
        tf.saved_model.save(model, str(tmp_path / "m"), signatures=serve.get_concrete_function())
    converted = _names(conversions)
    assert not {n for n in converted if n.startswith("trainer.")}, converted
    # Keras's own step, loss and metric code runs as written too.
    assert not {n for n in converted if n.rsplit(".", 1)[-1] in
                ("train_step", "test_step", "compute_loss", "compute_metrics", "update_state")}

    # Saved without Keras's traces, the served outputs and the variables are all there.
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    x, _ = _data(8)
    got = loaded.signatures["serving_default"](features=tf.constant(x[FEATURES]),
                                               cat=tf.constant(x["cat"]))["p"]
    np.testing.assert_allclose(got.numpy(), model(x).numpy(), atol=1e-6)
    assert (sorted(v.name for v in variables_under(loaded))
            == sorted(v.name for v in model.trainable_variables))


def test_a_plain_keras_model_is_converted(conversions):
    """The control: the same probe sees AutoGraph convert an ordinary Keras model's call."""
    _fit(_ConvertedModel())
    assert any(n.endswith("_ConvertedModel.call") for n in _names(conversions))
