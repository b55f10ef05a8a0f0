"""The training loop lowers the learning rate on an eval plateau before early stopping."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline import configs
from trainer.task import DATA_LOSS, compile_model, train


def fitted(factor: float) -> dict[str, list[float]]:
    """A logistic model on labels unrelated to its input: eval stops improving at once."""
    config = configs.load(configs.DEFAULT_CONFIG)
    config = dataclasses.replace(config, training=dataclasses.replace(
        config.training, learning_rate=0.05, epochs=12, early_stopping_patience=5,
        lr_plateau_patience=2, lr_plateau_factor=factor))
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(512, 4)).astype("float32"), rng.integers(0, 2, 512).astype("float32")
    tf.keras.utils.set_random_seed(0)
    # Starting at the optimum (no signal: weights 0), so eval only wobbles around it.
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(
        1, "sigmoid", kernel_initializer="zeros")])
    compile_model(model, config)
    data = tf.data.Dataset.from_tensor_slices((x, y))
    return train(model, config, data.repeat().batch(64), data.skip(256).batch(256), 2048)


def test_the_rate_is_cut_by_the_factor_after_the_patience_and_never_raised():
    history = fitted(0.3)
    rates = history["lr"]
    assert len(rates) == len(history[f"val_{DATA_LOSS}"]) >= 3
    steps = [round(np.log(r / 0.05) / np.log(0.3), 6) for r in rates]
    assert all(s == int(s) for s in steps), rates  # 0.05 * 0.3^k
    assert steps == sorted(steps) and steps[-1] >= 1, rates
    # The first cut comes after `patience` epochs without a better eval loss.
    first = steps.index(1)
    val = history[f"val_{DATA_LOSS}"]
    assert first >= 2 and min(val[first - 1:first + 1]) >= min(val[:first - 1]) - 1e-4


def test_a_factor_of_one_never_touches_the_rate():
    history = fitted(1.0)
    assert "lr" not in history or set(history["lr"]) == {pytest.approx(0.05)}
