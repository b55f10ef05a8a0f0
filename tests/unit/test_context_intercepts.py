"""The Trainer's closing step: context intercepts fitted on train, chosen on eval, kept
through export and the target networks' rebuild (fixture `taxi`: tests/unit/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.support import transform
from trainer.context_intercepts import fit_model_intercepts, score_splits
from trainer.features import transformed_name
from trainer.model import ConfiguredHyperModel, ModelLayout
from trainer.target_export import load_hypernetwork
from trainer.task import export


def dataset(config, features: dict, rows: slice) -> tf.data.Dataset:
    x = {k: v[rows] for k, v in features.items() if k != config.label.name}
    return tf.data.Dataset.from_tensor_slices((x, features[config.label.name][rows])).batch(64)


@pytest.fixture(scope="module")
def untrained(taxi):
    """A taxi hypernetwork at its initialisation and the 400 rows, transformed."""
    config, rows, dtypes, tft_output = taxi
    tf.keras.utils.set_random_seed(0)
    model = ConfiguredHyperModel(config, ModelLayout.from_transform(config, tft_output),
                                 kind="film", name="hyper_model")
    features = transform(tft_output, rows, dtypes)
    model({k: v[:2] for k, v in features.items()})  # built, as training leaves it
    return model, features


def test_intercepts_fitted_on_train_lower_eval_loss_and_shift_each_contexts_logit(taxi, untrained):
    config, _, _, _ = taxi
    model, features = untrained
    train, evaluation = dataset(config, features, slice(0, 250)), dataset(config, features, slice(250, 400))
    context = config.context[0]

    def logits(x):
        return model.hyper(model.hyper_inputs(x), return_logits=True)

    [before] = score_splits(logits, [evaluation], [context])
    fit = fit_model_intercepts(model, "binary", config.model.intercept_strengths, train, evaluation)
    assert fit is not None and fit.strength in config.model.intercept_strengths
    # At initialisation every payment type predicts ~0.5; cash rides record no tips, so a
    # per-payment-type intercept is most of what there is to learn.
    assert fit.eval_losses[fit.strength] < fit.eval_losses[None] - 0.1
    [after] = score_splits(logits, [evaluation], [context])
    table = model.hyper.intercepts[context].numpy()[:, 0]
    np.testing.assert_allclose(after.logits, before.logits + table[before.ids[context]], atol=1e-5)
    oov = model.hyper.context.oov_ids[context]
    assert table[oov] == 0.0 and np.count_nonzero(table) >= 2
    # The history's loss is the model's: eval log loss of the shifted logits.
    p = 1.0 / (1.0 + np.exp(-after.logits))
    y = after.labels
    assert -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)) == pytest.approx(
        fit.eval_losses[fit.strength], rel=1e-5)


def test_the_intercepts_survive_export_and_the_target_networks_rebuild(taxi, untrained, tmp_path):
    config, _, _, tft_output = taxi
    model, features = untrained
    context = config.context[0]
    table = 0.3 * np.arange(1, model.hyper.intercepts[context].shape[0] + 1) - 1.0  # none 0
    table[model.hyper.context.oov_ids[context]] = 0.0
    model.hyper.set_intercepts({context: table})
    export(model, config, tft_output, str(tmp_path))
    rebuilt = load_hypernetwork(config, tft_output, str(tmp_path))
    np.testing.assert_allclose(rebuilt.hyper.intercepts[context].numpy()[:, 0], table, atol=1e-7)
    x = {k: v[:50] for k, v in features.items() if k != config.label.name}
    np.testing.assert_allclose(rebuilt(x).numpy(), model(x).numpy(), atol=1e-6)
    # ... and a context's materialized target, an ordinary Keras MLP, gives its rows'
    # outputs, intercept included.
    ids = x[transformed_name(context)]
    some = int(ids[0])
    assert table[some] != 0.0
    target = rebuilt.hyper.materialize({context: some})
    rows = ids == some
    np.testing.assert_allclose(target(rebuilt.assembler(x)).numpy()[rows], model(x).numpy()[rows],
                               atol=1e-5)

def test_nothing_to_fit_leaves_the_model_as_it_is(taxi, untrained):
    config, _, _, _ = taxi
    model, features = untrained
    data = dataset(config, features, slice(0, 100))
    before = model.hyper.intercepts[config.context[0]].numpy().copy()
    assert fit_model_intercepts(model, "binary", (), data, data) is None
    assert fit_model_intercepts(model, "multiclass", (1.0,), data, data) is None
    np.testing.assert_array_equal(model.hyper.intercepts[config.context[0]].numpy(), before)


def test_scoring_traces_the_model_once_for_every_split_and_batch_size(taxi, untrained):
    """Each trace of the forward pass costs 1-2 s: the pass over train and eval (batches of
    4,096 and 256, each with a short last batch) must not pay one per shape and split."""
    config, _, _, _ = taxi
    model, features = untrained
    context = config.context[0]
    traces = []

    def logits(x):
        traces.append(1)  # Python runs only while tracing
        return model.hyper(model.hyper_inputs(x), return_logits=True)

    x = {k: v for k, v in features.items() if k != config.label.name}
    big = tf.data.Dataset.from_tensor_slices((x, features[config.label.name])).batch(96)
    small = big.unbatch().take(150).batch(40)  # 40, 40, 40, 30
    scored = score_splits(logits, [big, small], [context])
    assert len(traces) == 1
    eager = model.hyper(model.hyper_inputs(x), return_logits=True).numpy().reshape(-1)
    assert [len(s.logits) for s in scored] == [len(eager), 150]
    np.testing.assert_allclose(scored[0].logits, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scored[1].logits, eager[:150], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scored[1].ids[context],
                                  features[transformed_name(context)].reshape(-1)[:150])
