"""Pooled generators ("film", "lowrank"): shared network + a shrunk per-context deviation."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from tests.unit.hypernet.support import CONTEXTS, HEADS, batch, example_context, perturb
from trainer.hypernet.context import ContextSpec
from trainer.hypernet.functional_target import apply_indexed, split_params
from trainer.hypernet.generator import GeneratorConfig
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.target_spec import TargetSpec

# lowrank_all: a rank deviation on every kernel; *_shift: with the context shifts
KINDS = ("film", "lowrank", "lowrank_all", "film_shift", "lowrank_shift")
WITH_OOV = ContextSpec(categorical={"cat": 5}, oov_ids={"cat": 4})


def generator_config(kind: str, **settings: object) -> GeneratorConfig:
    if kind.endswith("_shift"):
        kind = kind.removesuffix("_shift")
        settings = {**settings, "context_shift": True,
                    "shift_shrinkage": 0.5 * float(settings.get("shrinkage", 0.0))}
    if kind == "lowrank_all":
        return GeneratorConfig(kind="lowrank", rank_layers="all", **settings)
    return GeneratorConfig(kind=kind, **settings)


def build(kind: str, context: ContextSpec, head: str = "sigmoid", shrinkage: float = 0.0,
          seed: int = 0, perturbed: bool = True, shared_l2: float = 0.0) -> HyperNetwork:
    output_dim, activation = HEADS[head]
    spec = TargetSpec(5, (6, 4), output_dim, activation=activation, head=head)
    tf.keras.utils.set_random_seed(seed)
    model = HyperNetwork(spec, context, generator_config(kind, rank=2, shrinkage=shrinkage,
                                                         shared_l2=shared_l2))
    model(batch(context, spec.input_dim))
    if perturbed:
        perturb(model, seed)
    return model


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("context_kind", ["categorical", "numeric", "mixed", "static"])
@pytest.mark.parametrize("head", ["sigmoid", "softmax", "linear"])
def test_materialized_target_gives_the_hypernetworks_outputs(kind, context_kind, head):
    context = CONTEXTS[context_kind]
    model = build(kind, context, head)
    inputs = batch(context, model.target.input_dim)
    out = model(inputs).numpy()
    for i in range(len(out)):
        target = model.materialize(example_context(inputs, context, i))
        # rtol: a perturbed linear head reaches ~160, where float32 rounds by ~1e-5
        np.testing.assert_allclose(target(inputs[FEATURES][i:i + 1]).numpy()[0], out[i],
                                   rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_direct_application_equals_the_generated_parameters(kind):
    """apply_direct (the training path) and the flat parameters (materialization) agree."""
    model = build(kind, CONTEXTS["mixed"])
    inputs = batch(model.context, model.target.input_dim)
    flat, index = model.generate_for_batch(inputs)
    generic = apply_indexed(model.target, inputs[FEATURES], split_params(model.target, flat), index)
    np.testing.assert_allclose(model(inputs).numpy(), generic.numpy(), atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_out_of_vocabulary_context_gets_exactly_the_shared_network(kind):
    model = build(kind, WITH_OOV)
    shared = [v.numpy() for v in model.generator.shared]
    oov = model.generated_weights({"cat": 4})
    for got, want in zip(oov, shared):
        np.testing.assert_array_equal(got, want)
    # ... and its outputs are the shared network's, while a known context's differ.
    x = tf.random.stateless_normal([7, 5], seed=[1, 2])
    plain = model.materialize({"cat": 4})
    for w, value in zip(plain.weights, shared):
        w.assign(value)
    np.testing.assert_allclose(model({FEATURES: x, "cat": tf.fill([7], 4)}).numpy(),
                               plain(x).numpy(), atol=1e-6)
    assert not np.allclose(model({FEATURES: x, "cat": tf.fill([7], 1)}).numpy(), plain(x).numpy())


@pytest.mark.parametrize("kind", KINDS)
def test_at_init_every_context_is_the_he_initialised_shared_network(kind):
    context = ContextSpec(categorical={"cat": 3})
    spec = TargetSpec(400, (300,), 1)
    tf.keras.utils.set_random_seed(5)
    model = HyperNetwork(spec, context, generator_config(kind, rank=2))
    weights = [model.generated_weights({"cat": c}) for c in range(3)]
    for w in weights[1:]:
        for a, b in zip(w, weights[0]):
            np.testing.assert_array_equal(a, b)
    kernel, bias, out_kernel, _ = weights[0]
    assert kernel.var() == pytest.approx(2.0 / 400, rel=0.05)  # He: relu gain 2 / fan_in
    assert out_kernel.var() == pytest.approx(1.0 / 300, rel=0.2)  # LeCun at the head
    assert np.all(bias == 0)


@pytest.mark.parametrize(("kind", "deviating"), [("lowrank", [0]), ("lowrank_all", [0, 1, 2])])
def test_rank_layers_choose_the_kernels_that_deviate_every_bias_does(kind, deviating):
    model = build(kind, WITH_OOV)  # perturbed: every deviation non-zero
    one, other = model.generated_weights({"cat": 1}), model.generated_weights({"cat": 2})
    kernels, biases = list(zip(one, other))[0::2], list(zip(one, other))[1::2]
    assert [i for i, (a, b) in enumerate(kernels) if not np.allclose(a, b)] == deviating
    assert not any(np.allclose(a, b) for a, b in biases)
    spec, sizes = model.target, model.generator.sizes
    ranked = sum(2 * (spec.layer_widths[i] + spec.layer_widths[i + 1]) for i in deviating)
    assert sum(sizes) == ranked + sum(spec.layer_widths[1:])  # rank 2: r * (in + out) each


@pytest.mark.parametrize("kind", KINDS)
def test_every_variable_gets_a_gradient(kind):
    model = build(kind, CONTEXTS["mixed"], shrinkage=0.1, perturbed=False)
    inputs = batch(model.context, model.target.input_dim)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(inputs)) + tf.add_n(model.losses)
    grads = tape.gradient(loss, model.trainable_variables)
    names = [v.name for v, g in zip(model.trainable_variables, grads)
             if g is None or not np.any(tf.convert_to_tensor(g).numpy())]
    # At init the deviations are zero: the embeddings' gradient flows through the zero
    # deviation map only once it moves, and the zero-initialised map learns from step 1.
    assert all("embed" in n for n in names), names


@pytest.mark.parametrize("kind", KINDS)
def test_penalty_is_shrinkage_times_every_contexts_squared_deviation(kind):
    model = build(kind, WITH_OOV, shrinkage=0.25)
    [penalty] = model.losses
    deviations = []
    for cat in range(5):
        flat, _ = model.generate_for_batch({FEATURES: tf.zeros([1, 5]), "cat": tf.constant([cat])})
        deviations.append(model.generator.deviation(model.encoder(tf.constant([[float(cat)]]))))
    expected = 0.25 * sum(float(tf.reduce_sum(tf.square(d))) for d in deviations)
    if model.shifts:  # their own prior, on every id but the OOV one
        shifts = model.shifts["cat"].numpy()
        assert np.all(shifts[4] != 0)  # perturbed: the pinning is the table's read, not its value
        expected += 0.125 * float(np.sum(shifts[:4] ** 2))
    assert float(penalty) == pytest.approx(expected, rel=1e-5)
    assert float(tf.reduce_sum(tf.square(deviations[4]))) == 0.0  # the OOV id: no deviation


@pytest.mark.parametrize("kind", KINDS)
def test_shared_l2_penalises_the_shared_kernels_and_nothing_else(kind):
    model = build(kind, WITH_OOV, shrinkage=0.25, shared_l2=0.01)
    spec = model.target
    kernels = [w for w in model.generator.shared if "kernel" in w.name]
    assert len(kernels) == spec.num_layers
    decay = 0.01 * sum(float(tf.reduce_sum(tf.square(k))) for k in kernels)
    assert decay > 0
    assert len(model.losses) == 1 + spec.num_layers  # the deviation's prior + one per kernel
    assert float(tf.add_n(model.losses)) == pytest.approx(
        decay + float(model.pooling_penalty()), rel=1e-5)


def test_shared_l2_must_not_be_negative():
    with pytest.raises(ValueError, match="shared_l2 must be >= 0, got -0.1"):
        GeneratorConfig(kind="film", shared_l2=-0.1)


def test_shrinkage_pulls_a_small_groups_network_to_the_shared_one():
    """A group of 800 examples and one of 8 with the opposite rule. Under shrinkage the
    small group's network stays near the shared one (far nearer than without); the large
    group's rule is still fitted."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(808, 3)).astype(np.float32)
    group = np.array([0] * 800 + [1] * 8)
    y = np.where(group == 0, x[:, 0], -x[:, 0]).astype(np.float32)[:, None]
    context = ContextSpec(categorical={"g": 3}, oov_ids={"g": 2})
    probe = tf.constant(rng.normal(size=(200, 3)).astype(np.float32))
    distance, large_group_mse = {}, {}
    for shrinkage in (0.0, 20.0 / len(x)):
        tf.keras.utils.set_random_seed(0)
        model = HyperNetwork(TargetSpec(3, (8,), 1, head="linear"), context,
                             GeneratorConfig(kind="film", shrinkage=shrinkage))
        model.compile(tf.keras.optimizers.Adam(0.01), "mse")
        model.fit({FEATURES: x, "g": group}, y, batch_size=64, epochs=40, verbose=0)

        def predict(g, inputs=probe, model=model):
            return model({FEATURES: inputs, "g": tf.fill([len(inputs)], g)}).numpy()

        distance[shrinkage] = float(np.mean(np.abs(predict(1) - predict(2))))  # 2: shared
        large_group_mse[shrinkage] = float(np.mean((predict(0) - probe.numpy()[:, :1]) ** 2))
    assert distance[20.0 / len(x)] < 0.5 * distance[0.0]
    assert large_group_mse[20.0 / len(x)] < 0.05


@pytest.mark.parametrize("kind", [*KINDS, "full"])
def test_a_regression_scale_and_shift_reach_the_materialized_network(kind):
    """prediction = shift + scale * output, folded into the last layer when materialized."""
    context = CONTEXTS["categorical"]
    spec = TargetSpec(5, (6, 4), 1, head="linear")
    tf.keras.utils.set_random_seed(0)
    model = HyperNetwork(spec, context, generator_config(kind, trunk_units=(8,)))
    inputs = batch(context, 5)
    before = model(inputs).numpy()
    model.set_output_affine(12.5, -3.0)
    after = model(inputs).numpy()
    np.testing.assert_allclose(after, -3.0 + 12.5 * before, rtol=1e-5, atol=1e-5)
    for i in range(len(after)):
        target = model.materialize(example_context(inputs, context, i))
        np.testing.assert_allclose(target(inputs[FEATURES][i:i + 1]).numpy()[0], after[i],
                                   rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="needs a linear head"):
        build(kind if kind != "full" else "film", context).set_output_affine(2.0, 1.0)


@pytest.mark.parametrize("kind", ["film_shift", "lowrank_shift"])
def test_a_context_shift_is_its_ids_row_added_to_the_first_hidden_bias(kind):
    """Each id's own row of the table, on the first hidden layer's bias alone; none for the
    OOV id, and none at all without `context_shift` (the same seed, the same weights)."""
    model = build(kind, WITH_OOV)
    plain = build(kind.removesuffix("_shift"), WITH_OOV)
    assert [v.name for v in model.trainable_variables if "shift" in v.name] == ["shift_cat:0"]
    assert model.shifts["cat"].shape == (5, 6)
    table = model.shifts["cat"].numpy()
    model.shifts["cat"].assign(np.zeros_like(table))
    unshifted = [model.generated_weights({"cat": c}) for c in range(5)]
    model.shifts["cat"].assign(table)
    for cat in range(5):
        shifted = model.generated_weights({"cat": cat})
        moved = [i for i, (a, b) in enumerate(zip(shifted, unshifted[cat])) if not np.array_equal(a, b)]
        assert moved == ([] if cat == 4 else [1])
        np.testing.assert_allclose(shifted[1] - unshifted[cat][1], 0.0 if cat == 4 else table[cat],
                                   atol=1e-6)
    assert not plain.shifts and not [v for v in plain.trainable_variables if "shift" in v.name]


def test_a_context_shift_needs_a_hidden_layer_and_a_categorical_context():
    for spec, context in [(TargetSpec(5, (), 1), WITH_OOV),
                          (TargetSpec(5, (6,), 1), CONTEXTS["numeric"])]:
        model = HyperNetwork(spec, context, generator_config("film_shift"))
        assert not model.shifts


def test_shift_shrinkage_must_not_be_negative():
    with pytest.raises(ValueError, match="shift_shrinkage must be >= 0, got -1"):
        GeneratorConfig(kind="film", context_shift=True, shift_shrinkage=-1.0)
