"""The Trainer's fit loop on real transformed taxi rows (fixture `taxi`: tests/unit/conftest.py):
same data, config and seed give the same weights, whatever warm_start says when there is no
base model to start from."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from pipeline import configs
from tests.support import transform
from trainer import task
from trainer.model import ConfiguredHyperModel, ModelLayout
from trainer.task import (
    LabelStats,
    compile_model,
    fit_hypernetwork,
    label_stats,
    make_dataset,
    scoring_dataset,
    train,
)


def write_examples(path: str, features: dict[str, np.ndarray], rows: slice) -> str:
    """Transformed features as the tf.Example TFRecords Transform materializes."""
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(len(next(iter(features.values()))))[rows]:
            feature = {}
            for name, values in features.items():
                value = values[i]
                feature[name] = (tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                                 if values.dtype.kind in "iu" else
                                 tf.train.Feature(float_list=tf.train.FloatList(value=[value])))
            writer.write(tf.train.Example(
                features=tf.train.Features(feature=feature)).SerializeToString())
    return path


@pytest.fixture(scope="module")
def splits(taxi, tmp_path_factory):
    config, rows, dtypes, tft_output = taxi
    features = transform(tft_output, rows, dtypes)
    folder = tmp_path_factory.mktemp("transformed")
    return (write_examples(str(folder / "train.tfrecord"), features, slice(0, 300)),
            write_examples(str(folder / "eval.tfrecord"), features, slice(300, None)))


def fitted_weights(taxi, splits, warm_start: bool, seed: int = 42) -> list[np.ndarray]:
    config, _, _, tft_output = taxi
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, generator=("film",), pooling=(10.0,),
                                  shared_l2=(0.0,)),
        training=dataclasses.replace(config.training, batch_size=32, epochs=2, train_steps=8,
                                     warm_start=warm_start, seed=seed))
    tf.config.experimental.enable_op_determinism()  # as train_and_export does
    model, history = fit_hypernetwork(config, tft_output, splits[0], splits[1])
    assert len(history["val_data_loss"]) == 2
    return [w.numpy() for w in model.weights]


def test_same_data_and_seed_give_the_same_weights_with_or_without_warm_start_and_no_base(
        taxi, splits):
    cold = fitted_weights(taxi, splits, warm_start=False)
    again = fitted_weights(taxi, splits, warm_start=False)
    # warm_start on, no base model: it builds the model to copy into, then trains from scratch.
    # Building it must not touch the training data's shuffle (a thrown-away iterator of it
    # drew that shuffle's seeds, timing-dependently): the same weights, to the bit.
    warm = fitted_weights(taxi, splits, warm_start=True)
    other_seed = fitted_weights(taxi, splits, warm_start=False, seed=7)
    assert len(cold) == len(again) == len(warm) == len(other_seed) > 4
    for a, b, c in zip(cold, again, warm):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    # The comparison sees a change of seed (init and order): it is not comparing constants.
    assert sum(not np.array_equal(a, d) for a, d in zip(cold, other_seed)) > len(cold) // 2


def test_each_candidate_traces_its_train_step_once_and_trains_as_fit_alone_would(taxi, splits):
    """fit_hypernetwork creates the optimizer's and metrics' variables before fit: the train
    step is traced once, not twice, and the weights are those of plain Keras fit, which
    creates them in its first step."""
    config, _, _, tft_output = taxi
    config = dataclasses.replace(
        config,
        model=dataclasses.replace(config.model, generator=("film",), pooling=(10.0,),
                                  shared_l2=(0.003,), intercept_strengths=()),
        training=dataclasses.replace(config.training, batch_size=32, epochs=2, train_steps=8,
                                     warm_start=False))
    tf.config.experimental.enable_op_determinism()
    ours, _ = fit_hypernetwork(config, tft_output, splits[0], splits[1])
    assert ours.train_function.experimental_get_tracing_count() == 1

    tf.keras.utils.set_random_seed(config.training.seed)  # fit_hypernetwork's own steps
    train_ds = make_dataset(splits[0], tft_output, config)
    eval_ds = make_dataset(splits[1], tft_output, config, training=False)
    rows = label_stats(splits[0], tft_output, config).count
    plain = ConfiguredHyperModel(config, ModelLayout.from_transform(config, tft_output), 10.0,
                                 rows, "film", 0.003, name="hyper_model")
    compile_model(plain, config)
    train(plain, config, train_ds, eval_ds, rows)
    assert plain.train_function.experimental_get_tracing_count() == 2  # what was saved
    assert len(ours.weights) == len(plain.weights) > 4
    for a, b in zip(ours.weights, plain.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_the_trainer_fits_the_listed_candidates_in_their_order(taxi, splits, monkeypatch):
    """model.candidates reaches the Trainer as listed: each (kind, pooling, shared L2, shift
    pooling) is one fit, pooling (and shift pooling) as the prior's weight per training row,
    and one of them is kept."""
    config, _, _, tft_output = taxi
    listed = (configs.Candidate("lowrank", 300.0, 0.01, 3.0), configs.Candidate("film", 10.0))
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, candidates=listed, intercept_strengths=()),
        training=dataclasses.replace(config.training, batch_size=32, epochs=1, train_steps=4,
                                     warm_start=False))
    fitted = []

    def recording_train(model: tf.keras.Model, *args: object, **kwargs: object) -> dict:
        g = model.hyper.generator_config
        fitted.append((g.kind, g.shrinkage, g.shared_l2, g.context_shift, g.shift_shrinkage))
        return train(model, *args, **kwargs)

    monkeypatch.setattr(task, "train", recording_train)
    _, history = fit_hypernetwork(config, tft_output, splits[0], splits[1])
    rows = label_stats(splits[0], tft_output, config).count  # binary: penalties unscaled
    assert fitted == [("lowrank", pytest.approx(300.0 / rows), pytest.approx(0.01), True,
                       pytest.approx(3.0 / rows)),
                      ("film", pytest.approx(10.0 / rows), 0.0, False, 0.0)]
    kept = (history["generator"][0], history["pooling"][0], history["shared_l2"][0],
            history["shift_pooling"][0])
    assert kept in [dataclasses.astuple(c) for c in listed]


def test_every_input_pipeline_runs_without_the_autotuning_thread(taxi, splits):
    """Deleting an iterator waits out its autotuning thread's sleep, seconds long after a
    long fit (trainer/task.py, make_dataset): no dataset of the Trainer starts one."""
    config, _, _, tft_output = taxi
    datasets = (make_dataset(splits[0], tft_output, config),
                make_dataset(splits[1], tft_output, config, training=False),
                scoring_dataset(splits[0], tft_output, config))
    assert [ds.options().autotune.enabled for ds in datasets] == [False, False, False]
    assert next(iter(datasets[0]))[1].shape == (config.training.batch_size,)


def test_loss_scale_is_the_label_variance_for_regression_only():
    """Ours' pooling and shared L2 and the benchmark anchor's L2 are all multiplied by it."""
    stats = LabelStats(count=10, mean=3.0, variance=4389.9)
    assert stats.loss_scale("regression") == pytest.approx(4389.9)
    assert stats.loss_scale("binary") == 1.0
    assert stats.loss_scale("multiclass") == 1.0
    assert LabelStats(10, 3.0, 0.0).loss_scale("regression") == 1.0


def test_the_candidate_kept_has_the_lowest_eval_loss_as_exported_intercepts_included(
        taxi, splits):
    """Each candidate gets its context intercepts before the choice: a strongly pooled model
    leaves more to them, so the loss before them would misjudge it."""
    config, _, _, tft_output = taxi

    def fit(shared_l2: tuple[float, ...]) -> tuple[tf.keras.Model, dict]:
        one = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, generator=("film",), pooling=(10.0,),
                                      shared_l2=shared_l2, intercept_strengths=(1.0, 100.0)),
            training=dataclasses.replace(config.training, batch_size=32, epochs=2,
                                         train_steps=8, warm_start=False))
        return fit_hypernetwork(one, tft_output, splits[0], splits[1])

    alone = {l2: fit((l2,))[1]["eval_loss_with_intercepts"][0] for l2 in (0.0, 1.0)}
    assert alone[0.0] != alone[1.0]
    model, history = fit((0.0, 1.0))
    kept = min(alone, key=alone.get)
    assert history["shared_l2"] == [kept]
    assert history["eval_loss_with_intercepts"][0] == pytest.approx(alone[kept], rel=1e-6)
    # The score is the returned model's own eval log-loss, its intercepts in it.
    labels, probs = [], []
    for x, y in scoring_dataset(splits[1], tft_output, config):
        probs.append(np.reshape(model(x).numpy(), [-1]))
        labels.append(np.reshape(y.numpy(), [-1]))
    p = np.clip(np.concatenate(probs).astype(np.float64), 1e-7, 1 - 1e-7)
    y = np.concatenate(labels)
    log_loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert history["eval_loss_with_intercepts"][0] == pytest.approx(log_loss, rel=1e-4)
