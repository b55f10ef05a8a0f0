"""The Trainer's candidate models: listed, or one per generator kind, pooling strength and
shared L2 of a grid; and the shared L2 reaching the configured model (fixture `taxi`: tests/unit/conftest.py)."""

from __future__ import annotations

import dataclasses

import pytest
import tensorflow as tf

from pipeline import configs
from tests.support import transform
from trainer.hypernet.kinds import GENERATOR_KINDS
from trainer.model import ConfiguredHyperModel, ModelLayout
from trainer.task import model_candidates


def triples(m: configs.ModelConfig, anchor: bool = False) -> list[tuple]:
    """The Trainer's candidates as (generator, pooling, shared L2); none has a
    shift_pooling its config did not list."""
    fitted = model_candidates(m, anchor)
    listed = {c for c in m.candidates if c.shift_pooling is not None}
    assert all(c.shift_pooling is None or c in listed for c in fitted)
    return [(c.generator, c.pooling, c.shared_l2) for c in fitted]


def test_every_kind_pooling_and_shared_l2_combination_is_a_candidate():
    m = configs.ModelConfig(generator=("film", "lowrank"), pooling=(10.0,), shared_l2=(0.0, 0.003))
    assert triples(m) == [("film", 10.0, 0.0), ("film", 10.0, 0.003),
                                   ("lowrank", 10.0, 0.0), ("lowrank", 10.0, 0.003)]
    # An anchor has no generator: one fit, its first kind standing in, no pooling or L2.
    assert triples(dataclasses.replace(m, pooling=(3.0, 10.0)), anchor=True) == [
        ("film", 0.0, 0.0)]


def test_a_full_generator_is_one_candidate_whatever_the_pooling_and_l2_grids():
    m = configs.ModelConfig(generator=("full", "film"), pooling=(3.0, 10.0), shared_l2=(0.0, 0.01))
    candidates = triples(m)
    assert candidates[0] == ("full", 0.0, 0.0)
    assert len(candidates) == 1 + 4 and sum(k == "full" for k, _, _ in candidates) == 1


def test_the_default_is_the_listed_candidates_and_a_grid_field_replaces_the_list():
    assert triples(configs.ModelConfig()) == [
        (c.generator, c.pooling, c.shared_l2) for c in configs.DEFAULT_CANDIDATES]
    # One grid field given: the grid, its other fields at GRID_DEFAULTS (lowrank without
    # the L2 was never kept on eval: docs/grouped-defaults.md, section 14).
    assert triples(configs.ModelConfig(pooling=(10.0,))) == [
        ("film", 10.0, 0.0), ("film", 10.0, 0.003), ("lowrank", 10.0, 0.003)]


def test_listed_candidates_are_fitted_as_listed_in_order_and_pairings_need_not_cross():
    listed = (configs.Candidate("lowrank", 300.0, 0.01), configs.Candidate("film", 30.0),
              configs.Candidate("lowrank", 30.0, 0.003, 3.0), configs.Candidate("full"))
    m = configs.ModelConfig(candidates=listed)
    assert triples(m) == [("lowrank", 300.0, 0.01), ("film", 30.0, 0.0),
                                   ("lowrank", 30.0, 0.003), ("full", 0.0, 0.0)]
    assert [c.shift_pooling for c in model_candidates(m)] == [None, None, 3.0, None]
    assert m.kinds == ("lowrank", "film", "full")
    assert triples(m, anchor=True) == [("lowrank", 0.0, 0.0)]


def test_shared_l2_per_kind_gives_each_kind_its_own_strengths():
    m = configs.ModelConfig(generator=("lowrank", "full", "film"), pooling=(3.0, 10.0),
                            shared_l2={"film": (0.0,), "lowrank": (0.01, 0.1)})
    assert triples(m) == [
        ("lowrank", 3.0, 0.01), ("lowrank", 3.0, 0.1), ("lowrank", 10.0, 0.01),
        ("lowrank", 10.0, 0.1), ("full", 0.0, 0.0), ("film", 3.0, 0.0), ("film", 10.0, 0.0)]


def test_pooling_per_kind_pairs_each_kinds_own_strengths_with_its_shared_l2():
    m = configs.ModelConfig(generator=("film", "full", "lowrank"),
                            pooling={"film": (10.0,), "lowrank": (100.0, 300.0)},
                            shared_l2={"film": (0.0,), "lowrank": (0.01,)})
    assert triples(m) == [("film", 10.0, 0.0), ("full", 0.0, 0.0),
                                   ("lowrank", 100.0, 0.01), ("lowrank", 300.0, 0.01)]


def test_the_config_knows_which_generator_kinds_are_pooled():
    # pipeline/ cannot import the library: its list must match the kinds' own flags.
    assert set(configs.POOLED_GENERATORS) == {
        kind for kind, cls in GENERATOR_KINDS.items() if cls.pooled}


def test_shared_l2_is_a_loss_on_the_configured_models_shared_kernels(taxi):
    config, rows, dtypes, tft_output = taxi
    layout = ModelLayout.from_transform(config, tft_output)
    features = transform(tft_output, rows, dtypes)
    losses = {}
    for l2 in (0.0, 0.5):
        model = ConfiguredHyperModel(config, layout, pooling=10.0, train_examples=400,
                                     kind="film", shared_l2=l2, name="hyper_model")
        model({k: v[:2] for k, v in features.items()})  # built
        kernels = [w for w in model.hyper.generator.shared if "kernel" in w.name]
        assert len(kernels) == len(config.model.hidden_units) + 1
        decay = l2 * sum(float(tf.reduce_sum(tf.square(k))) for k in kernels)
        losses[l2] = (len(model.losses), float(tf.add_n(model.losses)), decay,
                      float(model.hyper.pooling_penalty()))
    assert losses[0.0][0] == 1  # the deviation's prior alone
    count, total, decay, prior = losses[0.5]
    assert count == 1 + len(config.model.hidden_units) + 1 and decay > 0
    assert total == pytest.approx(decay + prior, rel=1e-5)
