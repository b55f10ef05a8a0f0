"""Generators: the kind registry, the config's checks, and hyperfan-in initialisation."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from trainer.hypernet.context import ContextSpec
from trainer.hypernet.functional_target import split_params, target_preactivations
from trainer.hypernet.generator import (
    FullGenerator,
    GeneratorConfig,
    ParameterGenerator,
    hyperfan_in_scale,
)
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.kinds import GENERATOR_KINDS, make_generator
from trainer.hypernet.target_spec import TargetSpec

# -- registry and config ------------------------------------------------------------


def test_full_is_the_library_default_and_every_kind_is_registered():
    from pipeline.configs import GENERATORS

    assert GeneratorConfig().kind == "full"
    assert GENERATOR_KINDS["full"] is FullGenerator
    assert all(issubclass(k, ParameterGenerator) for k in GENERATOR_KINDS.values())
    assert sorted(GENERATOR_KINDS) == sorted(GENERATORS)  # the config offers exactly these


def test_the_config_offers_exactly_the_librarys_rank_layers():
    from pipeline.configs import RANK_LAYERS as CONFIG_RANK_LAYERS
    from trainer.hypernet.generator import RANK_LAYERS

    assert CONFIG_RANK_LAYERS == RANK_LAYERS
    assert GeneratorConfig().rank_layers in RANK_LAYERS


def test_make_generator_unknown_kind_names_it_and_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_generator("hyperlowrank", TargetSpec(3, (4,), 1), GeneratorConfig())
    msg = str(err.value)
    assert "'hyperlowrank'" in msg and "full" in msg


def test_config_unknown_kind_names_it_and_the_known_ones():
    with pytest.raises(ValueError) as err:
        GeneratorConfig(kind="film-ish")
    msg = str(err.value)
    assert "'film-ish'" in msg and "full" in msg


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"trunk_units": (8, 0)}, "trunk_units must be positive"),
    ({"chunk_size": -1}, "chunk_size must be >= 0"),
    ({"init": "xavier"}, "init 'xavier' unknown"),
    ({"head_l2": -0.1}, "head_l2 must be >= 0"),
    ({"rank_layers": "last"}, r"rank_layers 'last' unknown; choose one of \('first', 'all'\)"),
])
def test_bad_config(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        GeneratorConfig(**kwargs)


@pytest.mark.parametrize("chunk_size", [0, 7], ids=["dense-head", "chunked"])
def test_full_generator_contract(chunk_size):
    """[U, d] -> [U, num_params]; its variables under its name; its size counted."""
    spec = TargetSpec(5, (6,), 2, head="softmax")
    config = GeneratorConfig(trunk_units=(8, 4), chunk_size=chunk_size, chunk_embedding_dim=3)
    generator = make_generator("full", spec, config, name="weight_generator")
    assert isinstance(generator, FullGenerator) and generator.name == "weight_generator"
    flat = generator(tf.random.normal([4, 10]))
    assert tuple(flat.shape) == (4, spec.num_params)
    names = [v.name for v in generator.trainable_variables]
    assert "weight_generator/trunk_0/kernel:0" in names
    assert "weight_generator/trunk_1/kernel:0" in names
    assert "weight_generator/trunk_norm/gamma:0" in names
    assert "weight_generator/head/kernel:0" in names
    assert ("chunk_embeddings:0" in names) == bool(chunk_size)
    head_width = chunk_size or spec.num_params
    trunk_in = 10 + (3 if chunk_size else 0)
    expected = (trunk_in * 8 + 8) + (8 * 4 + 4) + 2 * 4 + (4 * head_width + head_width)
    if chunk_size:
        expected += -(-spec.num_params // chunk_size) * 3
    assert generator.num_generator_params == expected


def test_head_l2_is_a_loss_of_the_generator():
    spec = TargetSpec(3, (4,), 1)
    plain = make_generator("full", spec, GeneratorConfig(trunk_units=(4,)))
    shrunk = make_generator("full", spec, GeneratorConfig(trunk_units=(4,), head_l2=0.1))
    plain(tf.ones([1, 2]))
    shrunk(tf.ones([1, 2]))
    assert not plain.losses
    assert len(shrunk.losses) == 1 and float(shrunk.losses[0]) > 0


def test_the_base_class_is_only_a_contract():
    with pytest.raises(NotImplementedError, match="Bare"):
        class Bare(ParameterGenerator):
            pass

        Bare(TargetSpec(3, (4,), 1), GeneratorConfig())(tf.ones([1, 2]))


def test_hyperfan_in_scale_per_parameter():
    spec = TargetSpec(4, (3,), 1, activation="tanh")  # gain 1
    scale = hyperfan_in_scale(spec)
    assert scale.shape == (spec.num_params,)
    expected = np.concatenate([np.full(12, np.sqrt(1 / 8)), np.full(3, np.sqrt(0.5)),
                               np.full(3, np.sqrt(1 / 6)), np.full(1, np.sqrt(0.5))])
    np.testing.assert_allclose(scale, expected, rtol=1e-6)




# -- hyperfan-in ------------------------------------------------------------------

FAN_SPEC = TargetSpec.from_layers([64, 64, 64, 1], activation="relu", head="sigmoid")
WIDE_SPEC = TargetSpec.from_layers([64, 64, 64, 64], activation="relu", head="linear")
N_CONTEXTS, N_INPUTS, HE_INITS = 1000, 256, 50


def _unit_inputs(spec: TargetSpec) -> tf.Tensor:
    return tf.random.stateless_normal([N_INPUTS, spec.input_dim], seed=[1, 2])


def _pooled_variance(moments: np.ndarray) -> np.ndarray:
    """[draws, layers, 2] (mean, mean square) per draw -> variance over all draws pooled.

    A draw is one random init (plain MLP) or one context (hypernetwork): the variance is
    taken over inputs *and* draws, as in He's derivation, so a bias that is constant
    within one draw but random across draws counts as it does in expectation.
    """
    mean, square = moments[..., 0].mean(axis=0), moments[..., 1].mean(axis=0)
    return square - mean**2


def _moments(z: tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.reduce_mean(z), tf.reduce_mean(tf.square(z))])


@functools.cache
def _he_variances(spec: TargetSpec) -> np.ndarray:
    """Per-layer pre-activation variance of He-initialised MLPs, pooled over inits."""
    x = _unit_inputs(spec)
    out = []
    for seed in range(HE_INITS):
        tf.keras.utils.set_random_seed(1000 + seed)
        h, row = x, []
        for units in spec.layer_widths[1:]:
            z = tf.keras.layers.Dense(units, kernel_initializer="he_normal",
                                      bias_initializer="zeros")(h)
            row.append(_moments(z).numpy())
            h = tf.nn.relu(z)
        out.append(row)
    return _pooled_variance(np.array(out))


@functools.cache
def _hyper_variances(spec: TargetSpec, config: GeneratorConfig, seed: int = 0) -> np.ndarray:
    """Per-layer pre-activation variance of the generated targets, pooled over 1,000 contexts."""
    tf.keras.utils.set_random_seed(seed)
    model = HyperNetwork(spec, ContextSpec(categorical={"ctx": N_CONTEXTS}), config)
    flat, index = model.generate_for_batch({
        FEATURES: tf.zeros([N_CONTEXTS, spec.input_dim]),
        "ctx": tf.range(N_CONTEXTS, dtype=tf.int64)})
    assert flat.shape[0] == N_CONTEXTS
    params = split_params(spec, flat)
    x = _unit_inputs(spec)

    def moments(one_context):  # this context's parameters, without the leading axis
        zs = target_preactivations(spec, x, [p[None] for p in one_context])
        return tf.stack([_moments(z) for z in zs])  # over all [batch, units]

    per_context = tf.vectorized_map(moments, params)  # [contexts, layers, 2]
    assert per_context.shape == (N_CONTEXTS, spec.num_layers, 2)
    return _pooled_variance(per_context.numpy())


def _ratios(spec: TargetSpec, config: GeneratorConfig) -> np.ndarray:
    return _hyper_variances(spec, config) / _he_variances(spec)


def test_hyperfan_in_matches_he_variance_in_every_layer():
    """Generated 64->64->64->1 targets: every layer's pre-activation variance within 20% of He.

    Measured ratios hyper/He are printed on failure; see _pooled_variance for the measure.
    """
    ratios = _ratios(FAN_SPEC, GeneratorConfig())
    assert np.all(np.abs(ratios - 1) <= 0.2), f"hyper/He variance ratios per layer: {ratios}"


def test_hyperfan_in_matches_he_variance_in_every_layer_of_a_wide_target():
    """The same for a 64-unit output layer (64->64->64->64)."""
    ratios = _ratios(WIDE_SPEC, GeneratorConfig())
    assert np.all(np.abs(ratios - 1) <= 0.2), f"hyper/He variance ratios per layer: {ratios}"


@pytest.mark.xfail(strict=True, reason=(
    "with chunking all chunks of one context share the head and their context input, so "
    "the generated chunks are correlated (mean correlation ~0.3 at init) and the variance "
    "grows with depth: measured ratios 0.92-1.16, 1.65-2.37, 3.25-4.1 on 64->64->64->64 "
    "with chunk_size=256 (generator seeds 0-3)."))
def test_hyperfan_in_with_chunking_matches_he():
    ratios = _ratios(WIDE_SPEC, GeneratorConfig(chunk_size=256))
    assert np.all(np.abs(ratios - 1) <= 0.2), f"hyper/He variance ratios per layer: {ratios}"


def test_default_init_does_not_match_he_variance():
    """Contrast: glorot_uniform head without the hyperfan-in scale misses by far more than 20%.

    Measured (generator seeds 0-3): ratios 0.48-0.49, 0.23-0.25, 0.10-0.11 on 64->64->64->1.
    """
    ratios = _ratios(FAN_SPEC, GeneratorConfig(init="default"))
    assert np.any(np.abs(ratios - 1) > 0.2), f"hyper/He variance ratios per layer: {ratios}"
    assert np.abs(ratios[0] - 1) > 0.2  # already the first layer

