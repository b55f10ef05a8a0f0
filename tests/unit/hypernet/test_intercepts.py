"""Per-context output intercepts: the closed-form fit, the choice on eval, and how the
composite model and its materialized targets carry them."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.unit.hypernet.support import HEADS, batch, example_context, perturb
from trainer.hypernet.context import ContextSpec
from trainer.hypernet.generator import GeneratorConfig
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.intercepts import Scored, fit_intercepts, loss, offsets, shrunk_offsets
from trainer.hypernet.target_spec import TargetSpec

GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)


# -- the closed form ---------------------------------------------------------------------------
def test_regression_offset_is_the_residual_sum_over_rows_plus_strength():
    ids = np.array([0, 0, 0, 1, 3])
    logits = np.array([1.0, 2.0, 0.0, 5.0, 0.0])
    labels = np.array([2.0, 4.0, 3.0, 4.0, 9.0])  # residuals 1, 2, 3 | -1 | 9
    got = shrunk_offsets(ids, logits, labels, size=5, strength=2.0, binary=False, oov_id=3)
    np.testing.assert_allclose(got, [6.0 / 5.0, -1.0 / 3.0, 0.0, 0.0, 0.0])
    # No shrinkage: each group's mean residual; id 2 has no rows, id 3 is out-of-vocabulary.
    got = shrunk_offsets(ids, logits, labels, size=5, strength=0.0, binary=False, oov_id=3)
    np.testing.assert_allclose(got, [2.0, -1.0, 0.0, 0.0, 0.0])


def test_binary_offset_is_a_newton_step_on_the_logit():
    ids = np.array([0, 0, 0, 0, 1, 1])
    logits = np.zeros(6)  # p = 0.5, curvature p(1-p) = 0.25 per row
    labels = np.array([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    got = shrunk_offsets(ids, logits, labels, size=2, strength=1.0, binary=True)
    np.testing.assert_allclose(got, [1.0 / (1.0 + 1.0), -1.0 / (0.5 + 1.0)])
    # The step lowers the group's log loss.
    step = got[ids]
    assert loss(logits + step, labels, True) < loss(logits, labels, True)


def test_ids_outside_the_vocabulary_are_an_error():
    with pytest.raises(ValueError, match=r"context ids must lie in \[0, 3\), got 0..3"):
        shrunk_offsets(np.array([0, 3]), np.zeros(2), np.zeros(2), 3, 1.0, False)


def test_scored_split_rejects_arrays_of_different_lengths():
    with pytest.raises(ValueError, match=r"3 logits, 2 labels, ids \{'g': 4\}"):
        Scored({"g": np.zeros(4)}, np.zeros(3), np.zeros(2))


# -- the strength, chosen on eval ---------------------------------------------------------------
def grouped(rng: np.random.Generator, effects: np.ndarray, rows_per_group: int,
            noise: float = 1.0) -> Scored:
    """A model's output of 0 on data whose rule is a per-group intercept plus noise."""
    ids = np.repeat(np.arange(len(effects)), rows_per_group)
    labels = effects[ids] + rng.normal(0.0, noise, size=len(ids))
    return Scored({"g": ids}, np.zeros(len(ids)), labels)


def test_eval_chooses_the_strength_a_mixed_model_would():
    """Intercepts of variance 0.1 under unit noise: the random-intercept BLUP's ratio is
    noise / group variance = 10, and eval picks it (within one grid step)."""
    rng = np.random.default_rng(0)
    effects = rng.normal(0.0, np.sqrt(0.1), size=400)
    train, eval_split = grouped(rng, effects, 10), grouped(rng, effects, 10)
    fit = fit_intercepts(train, eval_split, False, {"g": 400}, strengths=GRID)
    assert fit.strength in (3.0, 10.0, 30.0), fit.eval_losses
    assert fit.eval_losses[fit.strength] < fit.eval_losses[None] - 0.05
    # The fitted intercepts are the effects, shrunk: correlated, and smaller.
    table = fit.tables["g"]
    assert np.corrcoef(table, effects)[0, 1] > 0.6
    assert np.std(table) < np.std(effects)


def test_no_intercepts_when_what_train_says_does_not_hold_on_eval():
    rng = np.random.default_rng(1)
    effects = rng.normal(0.0, 1.0, size=50)
    train = grouped(rng, effects, 20)
    # Eval's groups differ the other way: every strength loses to none.
    eval_split = grouped(rng, -effects, 20)
    fit = fit_intercepts(train, eval_split, False, {"g": 50}, strengths=GRID)
    assert fit.strength is None
    assert not fit.tables["g"].any()
    assert min(v for k, v in fit.eval_losses.items() if k is not None) > fit.eval_losses[None]


def test_two_crossed_context_features_are_fitted_in_turn():
    rng = np.random.default_rng(2)
    a_effects, b_effects = rng.normal(0, 1, 30), rng.normal(0, 1, 20)

    def split() -> Scored:
        a, b = rng.integers(0, 30, 6000), rng.integers(0, 20, 6000)
        y = a_effects[a] + b_effects[b] + rng.normal(0, 0.5, 6000)
        return Scored({"a": a, "b": b}, np.zeros(6000), y)

    fit = fit_intercepts(split(), split(), False, {"a": 30, "b": 20}, strengths=GRID)
    assert fit.strength is not None
    assert np.corrcoef(fit.tables["a"], a_effects)[0, 1] > 0.95
    assert np.corrcoef(fit.tables["b"], b_effects)[0, 1] > 0.95
    test = split()
    assert loss(offsets(fit.tables, test), test.labels, False) < 0.5 ** 2 * 1.2


def test_binary_intercepts_lower_eval_log_loss():
    rng = np.random.default_rng(3)
    effects = rng.normal(0.0, 1.0, size=40)

    def split() -> Scored:
        ids = rng.integers(0, 40, 8000)
        y = (rng.random(8000) < 1.0 / (1.0 + np.exp(-effects[ids]))).astype(float)
        return Scored({"g": ids}, np.zeros(8000), y)

    fit = fit_intercepts(split(), split(), True, {"g": 40}, strengths=GRID, oov_ids={"g": 39})
    assert fit.strength is not None
    assert fit.eval_losses[fit.strength] < fit.eval_losses[None] - 0.05
    assert fit.tables["g"][39] == 0.0  # the out-of-vocabulary id
    assert np.corrcoef(fit.tables["g"][:39], effects[:39])[0, 1] > 0.9


# -- in the composite model ---------------------------------------------------------------------
def hypernetwork(kind: str, head: str, context: ContextSpec) -> HyperNetwork:
    output_dim, activation = HEADS[head]
    spec = TargetSpec(5, (6, 4), output_dim, activation=activation, head=head)
    tf.keras.utils.set_random_seed(0)
    model = HyperNetwork(spec, context, GeneratorConfig(kind=kind, trunk_units=(8,), rank=2))
    model(batch(context, 5))
    perturb(model, 0)
    return model


@pytest.mark.parametrize("kind", ["film", "lowrank", "full"])
@pytest.mark.parametrize("head", ["sigmoid", "linear"])
def test_intercepts_shift_the_logit_and_reach_the_materialized_target(kind, head):
    context = ContextSpec(categorical={"cat": 5}, numeric=["num"], oov_ids={"cat": 4})
    model = hypernetwork(kind, head, context)
    if head == "linear":
        model.set_output_affine(3.0, -1.0)
    inputs = batch(context, 5)
    before = model(inputs, return_logits=True).numpy()
    table = np.array([0.5, -1.0, 2.0, 0.25, 0.0], np.float32)[:, None] * np.arange(
        1, model.target.output_dim + 1, dtype=np.float32)  # [vocab, output_dim]
    model.set_intercepts({"cat": table})
    ids = inputs["cat"].numpy()
    after_logits = model(inputs, return_logits=True).numpy()
    np.testing.assert_allclose(after_logits, before + table[ids], atol=1e-5)
    after = model(inputs).numpy()
    expected = after_logits if head == "linear" else 1.0 / (1.0 + np.exp(-after_logits))
    np.testing.assert_allclose(after, expected, atol=1e-6)
    for i in range(len(after)):
        target = model.materialize(example_context(inputs, context, i))
        np.testing.assert_allclose(target(inputs[FEATURES][i:i + 1]).numpy()[0], after[i],
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["film", "lowrank"])
def test_out_of_vocabulary_context_still_gets_exactly_the_shared_network(kind):
    context = ContextSpec(categorical={"cat": 5}, oov_ids={"cat": 4})
    model = hypernetwork(kind, "sigmoid", context)
    ids = np.array([0, 1, 2, 3, 4, 4, 2, 0])
    train = Scored({"cat": ids}, np.zeros(8), np.array([1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0]))
    fit = fit_intercepts(train, train, True, {"cat": 5}, strengths=(0.3,),
                         oov_ids=context.oov_ids)
    model.set_intercepts(fit.tables)
    assert fit.tables["cat"][4] == 0.0 and fit.tables["cat"][:4].any()
    oov = model.generated_weights({"cat": 4})
    for got, want in zip(oov, [v.numpy() for v in model.generator.shared]):
        np.testing.assert_array_equal(got, want)


def test_set_intercepts_checks_names_and_sizes():
    model = hypernetwork("film", "sigmoid", ContextSpec(categorical={"cat": 5}))
    with pytest.raises(ValueError, match=r"no intercepts for 'lecturer'"):
        model.set_intercepts({"lecturer": np.zeros(5)})
    with pytest.raises(ValueError, match=r"intercepts for 'cat': \(4,\) values, the "
                       r"vocabulary needs \(5, 1\)"):
        model.set_intercepts({"cat": np.zeros(4)})
    static = hypernetwork("film", "sigmoid", ContextSpec())
    assert static.intercepts == {}
