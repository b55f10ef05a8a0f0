"""HyperNetwork: materialised targets, gradients, de-duplication, saving, init and learning."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import tensorflow as tf

from trainer.functional_target import apply_target, split_params, target_preactivations
from trainer.generator import ContextSpec, GeneratorConfig
from trainer.hypernetwork import FEATURES, HyperNetwork
from trainer.target_spec import TargetSpec

# -- helpers -------------------------------------------------------------------

CONTEXTS = {
    "categorical": ContextSpec(categorical={"cat": 5}),
    "numeric": ContextSpec(numeric=["num"]),
    "mixed": ContextSpec(categorical={"cat": 5}, numeric=["num"]),
    "static": ContextSpec(),
}
# head -> (output_dim, hidden activation): one activation per head covers three of them.
HEADS = {"sigmoid": (1, "relu"), "softmax": (3, "tanh"), "linear": (2, "gelu")}
CAT_IDS = [0, 1, 2, 3, 4, 2, 0, 4, 1, 3, 3, 0]
NUM_VALUES = [-2.0, 0.7, 1.5, -0.3, 0.7, 3.0, -2.0, 1.5, 0.25, -0.3, 3.0, 0.7]


def _batch(context: ContextSpec, input_dim: int, seed: int = 0) -> dict[str, tf.Tensor]:
    """12 examples spread over several contexts (every categorical id appears)."""
    rng = np.random.default_rng(seed)
    inputs = {FEATURES: tf.constant(rng.normal(size=(len(CAT_IDS), input_dim)), tf.float32)}
    if "cat" in context.names:
        inputs["cat"] = tf.constant(CAT_IDS, tf.int64)
    if "num" in context.names:
        inputs["num"] = tf.constant(NUM_VALUES, tf.float32)
    return inputs


def _example_context(inputs: dict[str, tf.Tensor], context: ContextSpec, i: int) -> dict:
    out = {}
    for name in context.names:
        value = inputs[name].numpy()[i]
        out[name] = int(value) if name in context.categorical else float(value)
    return out


def _perturb(model: tf.keras.Model, seed: int, scale: float = 0.3) -> None:
    """Move every generator variable off its init, as training would.

    At init every trunk bias is zero, so a scalar numeric context v > 0 gives the
    same LayerNorm-ed trunk output for every v; perturbing makes contexts differ.
    """
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        v.assign_add(scale * rng.normal(size=v.shape).astype(np.float32))


def _build(context_kind: str, head: str, chunk_size: int, seed: int = 0) -> HyperNetwork:
    output_dim, activation = HEADS[head]
    spec = TargetSpec(5, (6, 4), output_dim, activation=activation, head=head)
    tf.keras.utils.set_random_seed(seed)
    model = HyperNetwork(spec, CONTEXTS[context_kind], GeneratorConfig(
        trunk_units=(16,), chunk_size=chunk_size, chunk_embedding_dim=4))
    model(_batch(model.context, spec.input_dim))  # build
    _perturb(model, seed)
    return model


# -- materialise ----------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, 7], ids=["dense-head", "chunked"])
@pytest.mark.parametrize("context_kind", list(CONTEXTS))
@pytest.mark.parametrize("head", list(HEADS))
def test_materialized_target_matches_composite(head, context_kind, chunk_size):
    model = _build(context_kind, head, chunk_size)
    context = model.context
    inputs = _batch(context, model.target.input_dim, seed=1)
    composite = model(inputs).numpy()
    assert composite.shape == (len(CAT_IDS), model.target.output_dim)

    materialized, per_context = {}, {}
    for i in range(len(CAT_IDS)):
        ctx = _example_context(inputs, context, i)
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


# -- gradients ------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, 7], ids=["dense-head", "chunked"])
@pytest.mark.parametrize("context_kind", ["mixed", "static"])
def test_only_generator_variables_and_all_get_gradients(context_kind, chunk_size):
    model = _build(context_kind, "sigmoid", chunk_size, seed=3)
    owned = {v.ref() for v in model.encoder.trainable_variables}
    owned |= {v.ref() for v in model.generator.trainable_variables}
    variables = model.trainable_variables
    assert variables, "the composite has trainable variables"
    # Every trainable variable belongs to the context encoder or the weight generator.
    # (Variables made with add_weight in a layer's __init__ -- chunk_embeddings,
    # static_embedding -- carry no layer scope in their names, so check ownership.)
    assert {v.ref() for v in variables} == owned
    for v in variables:
        if "/" in v.name:
            assert "context_encoder/" in v.name or "weight_generator/" in v.name, v.name
        assert not v.name.startswith("dense_"), v.name
    assert not model.non_trainable_variables
    names = [v.name for v in variables]
    if chunk_size:
        assert any("chunk_embeddings" in n for n in names)
    if context_kind == "static":
        assert any("static_embedding" in n for n in names)
    else:
        assert any("embed_cat" in n for n in names)

    inputs = _batch(model.context, model.target.input_dim, seed=4)
    labels = tf.constant(np.random.default_rng(5).integers(0, 2, (len(CAT_IDS), 1)), tf.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.keras.losses.binary_crossentropy(labels, model(inputs)))
    grads = tape.gradient(loss, variables)
    for v, g in zip(variables, grads):
        assert g is not None, f"no gradient for {v.name}"
        dense = tf.convert_to_tensor(g).numpy()  # embeddings get IndexedSlices
        assert dense.shape == tuple(v.shape)
        assert np.all(np.isfinite(dense)), v.name
        assert np.any(dense != 0), f"all-zero gradient for {v.name}"
        if "embed_" in v.name:
            # Every id is in the batch, so every embedding row moves.
            assert np.all(np.any(dense != 0, axis=1)), f"an embedding row of {v.name} got none"


# -- de-duplication -------------------------------------------------------------


def test_generate_for_batch_dedups_contexts():
    spec = TargetSpec(3, (4,), 1)
    tf.keras.utils.set_random_seed(0)
    model = HyperNetwork(spec, ContextSpec(categorical={"cat": 10}, numeric=["num"]))
    rng = np.random.default_rng(0)
    pick = rng.integers(0, 2, 64)
    pick[:2] = [0, 1]  # both present
    # Same id, different numeric value: still two distinct contexts.
    cats = np.full(64, 7, np.int64)
    nums = np.where(pick == 0, -1.25, 0.5).astype(np.float32)
    inputs = {FEATURES: tf.constant(rng.normal(size=(64, 3)), tf.float32),
              "cat": tf.constant(cats), "num": tf.constant(nums)}
    flat, index = model.generate_for_batch(inputs)
    assert flat.shape == (2, spec.num_params)
    index = index.numpy()
    assert index.shape == (64,)
    assert set(index.tolist()) == {0, 1}
    # Same context <=> same index, and each row is that context's parameters.
    np.testing.assert_array_equal(index == index[0], pick == pick[0])
    for row in (0, 1):
        i = int(np.flatnonzero(index == row)[0])
        expected = model.generated_weights({"cat": int(cats[i]), "num": float(nums[i])})
        got = [t[row].numpy() for t in split_params(spec, flat)]
        for e, g in zip(expected, got):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-6)


def test_static_hypernetwork_generates_one_parameter_set():
    spec = TargetSpec(3, (4,), 1)
    model = HyperNetwork(spec, ContextSpec())
    flat, index = model.generate_for_batch({FEATURES: tf.zeros([9, 3])})
    assert flat.shape == (1, spec.num_params)
    np.testing.assert_array_equal(index.numpy(), np.zeros(9))


# -- bad inputs -----------------------------------------------------------------


def test_missing_context_feature_names_it():
    model = HyperNetwork(TargetSpec(3, (4,), 1),
                         ContextSpec(categorical={"pickup_area": 5}, numeric=["hour"]))
    inputs = {FEATURES: tf.zeros([2, 3]), "hour": tf.constant([1.0, 2.0])}
    with pytest.raises(ValueError, match="pickup_area"):
        model(inputs)
    with pytest.raises(ValueError, match="pickup_area"):
        model.generate_for_batch(inputs)
    with pytest.raises(ValueError, match="pickup_area"):
        model.generated_weights({"hour": 1.0})


# -- saving ---------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [0, 7], ids=["dense-head", "chunked"])
def test_saved_model_round_trip(tmp_path, chunk_size):
    model = _build("mixed", "softmax", chunk_size, seed=7)
    input_dim = model.target.input_dim

    class Serving(tf.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        @tf.function(autograph=False, input_signature=[{
            FEATURES: tf.TensorSpec([None, input_dim], tf.float32, name=FEATURES),
            "cat": tf.TensorSpec([None], tf.int64, name="cat"),
            "num": tf.TensorSpec([None], tf.float32, name="num"),
        }])
        def __call__(self, inputs):
            return self.net(inputs)

    inputs = _batch(model.context, input_dim, seed=8)
    before = model(inputs).numpy()
    path = str(tmp_path / "hypernet")
    tf.saved_model.save(Serving(model), path)
    loaded = tf.saved_model.load(path)
    after = loaded(inputs).numpy()
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
    # A batch with other contexts (a subset of ids, other values) also matches.
    other = {k: v[3:9] for k, v in inputs.items()}
    np.testing.assert_allclose(loaded(other).numpy(), model(other).numpy(), rtol=0, atol=1e-6)


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


# -- learning -------------------------------------------------------------------

N_DOMAINS, DIM = 8, 8
TRAIN_PER_DOMAIN, TEST_PER_DOMAIN = 128, 250
EPOCHS, BATCH, LEARNING_RATE = 2, 32, 1e-2
LEARNING_SEEDS = (0, 1, 2)
MIN_MARGIN = 0.05


def _domains(seed: int):
    """Each domain c labels x ~ N(0, I_8) by sign(w_c . x), w_c ~ N(0, I_8)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(N_DOMAINS, DIM)).astype(np.float32)

    def make(per_domain):
        c = np.repeat(np.arange(N_DOMAINS), per_domain)
        x = rng.normal(size=(len(c), DIM)).astype(np.float32)
        y = (np.einsum("bd,bd->b", x, w[c]) > 0).astype(np.float32)[:, None]
        order = rng.permutation(len(c))
        return x[order], c[order], y[order]

    return make(TRAIN_PER_DOMAIN), make(TEST_PER_DOMAIN)


def _train(model: tf.keras.Model, inputs, y: np.ndarray, seed: int) -> None:
    """EPOCHS of shuffled mini-batches of BATCH with Adam(LEARNING_RATE) on binary cross-entropy.

    A hand-written loop (tf.function without autograph) rather than `fit`: the first
    `fit` in a process spends ~15 s autograph-converting Keras internals.
    """
    optimizer = tf.keras.optimizers.Adam(LEARNING_RATE)
    bce = tf.keras.losses.BinaryCrossentropy()

    @tf.function(autograph=False)
    def step(batch, labels):
        with tf.GradientTape() as tape:
            loss = bce(labels, model(batch, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    rng = np.random.default_rng(seed)
    n = len(y)
    for _ in range(EPOCHS):
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            take = order[start: start + BATCH]
            batch = tf.nest.map_structure(lambda a, take=take: tf.constant(a[take]), inputs)
            step(batch, tf.constant(y[take]))


def _accuracy(model: tf.keras.Model, inputs, y: np.ndarray) -> float:
    return float(np.mean((model(tf.nest.map_structure(tf.constant, inputs)).numpy() > 0.5) == y))


def _learning_margin(seed: int) -> tuple[float, float, int, int]:
    (x, c, y), (xt, ct, yt) = _domains(seed)

    tf.keras.utils.set_random_seed(seed)
    hyper = HyperNetwork(TargetSpec(DIM, (16,), 1, head="sigmoid"),
                         ContextSpec(categorical={"domain": N_DOMAINS}),
                         GeneratorConfig(trunk_units=(16,)))
    _train(hyper, {FEATURES: x, "domain": c}, y, seed)
    hyper_params = int(sum(np.prod(v.shape) for v in hyper.trainable_variables))

    # Plain MLP on concat(x, one_hot(domain)), at least as many parameters.
    width = -(-(hyper_params - 1) // (DIM + N_DOMAINS + 2))
    tf.keras.utils.set_random_seed(seed)
    plain = tf.keras.Sequential([
        tf.keras.Input((DIM + N_DOMAINS,)),
        tf.keras.layers.Dense(width, activation="relu"),
        tf.keras.layers.Dense(1, activation="sigmoid"),
    ])
    one_hot = np.eye(N_DOMAINS, dtype=np.float32)
    _train(plain, np.concatenate([x, one_hot[c]], 1), y, seed)
    assert plain.count_params() >= hyper_params

    acc_hyper = _accuracy(hyper, {FEATURES: xt, "domain": ct}, yt)
    acc_plain = _accuracy(plain, np.concatenate([xt, one_hot[ct]], 1), yt)
    return acc_hyper, acc_plain, hyper_params, plain.count_params()


def test_hypernetwork_beats_plain_mlp_on_per_domain_rules():
    """8 domains, each with its own rule sign(w_c . x), x in R^8; 128 train / 250 test per domain.

    HyperNetwork (target 8->16->1 sigmoid, trunk (16,), 2,977 generator parameters) vs a
    plain MLP 16->166->1 on concat(x, one_hot(domain)) (2,989 parameters); both Adam(1e-2),
    binary cross-entropy, batch 32, 2 epochs (64 steps), the same shuffles.

    Held-out accuracy margin hyper - plain over seeds 0-19, by training length:
      2 epochs: min 0.076, mean 0.121 (hyper ~0.91, plain ~0.79)   <- this test
      3 epochs: min 0.044, mean 0.078
      4 epochs: min 0.035, mean 0.061
      8 epochs: min 0.013, mean 0.035 (hyper ~0.94, plain ~0.90)
    So the hypernetwork learns per-domain rules faster from the same steps; the gap
    narrows with longer training. Asserted: every one of seeds 0-2 has margin >= 0.05.
    """
    results = [_learning_margin(seed) for seed in LEARNING_SEEDS]
    detail = [f"seed {s}: hyper {h:.3f} plain {p:.3f} (params {nh} vs {np_})"
              for s, (h, p, nh, np_) in zip(LEARNING_SEEDS, results)]
    print("\n".join(detail))
    assert all(h - p >= MIN_MARGIN for h, p, _, _ in results), detail


@pytest.mark.parametrize("batch, contexts", [(64, 3), (5, 7)])
def test_partitioned_target_matches_the_general_path(batch, contexts):
    """Few possible contexts take the partitioned path: same outputs and gradients."""
    spec = TargetSpec(6, (5, 4), 3, head="softmax")
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, 6)), tf.float32)
    params = [tf.Variable(rng.normal(size=(contexts, *p.shape)).astype(np.float32))
              for p in spec.params()]
    index = tf.constant(rng.integers(0, contexts - 1, size=batch), tf.int32)  # one unused
    results = []
    for bound in (contexts, None):  # partitioned / the general path
        with tf.GradientTape() as tape:
            out = apply_target(spec, x, params, index, contexts=bound)
            loss = tf.reduce_sum(out * tf.range(3, dtype=tf.float32))
        results.append([out.numpy(), *[tf.convert_to_tensor(g).numpy()
                                         for g in tape.gradient(loss, params)]])
    for partitioned, general in zip(*results):
        np.testing.assert_allclose(partitioned, general, rtol=1e-5, atol=1e-5)
    assert results[0][0].shape == (batch, 3)
    assert np.all(results[0][1][contexts - 1] == 0)  # the unused context's kernel: no gradient


def test_few_possible_contexts_are_all_generated_and_indexed_by_id():
    spec = TargetSpec(3, (4,), 1)
    tf.keras.utils.set_random_seed(0)
    model = HyperNetwork(spec, ContextSpec(categorical={"a": 3, "b": 4}))
    assert model.enumerates_contexts
    a, b = np.array([2, 0, 2, 1]), np.array([3, 0, 1, 3])
    flat, index = model.generate_for_batch(
        {FEATURES: tf.zeros([4, 3]), "a": tf.constant(a), "b": tf.constant(b)})
    assert flat.shape == (12, spec.num_params)
    np.testing.assert_array_equal(index.numpy(), a * 4 + b)
    for i in range(4):
        expected = model.generated_weights({"a": int(a[i]), "b": int(b[i])})
        got = [t[int(index[i])].numpy() for t in split_params(spec, flat)]
        for e, g in zip(expected, got):
            np.testing.assert_array_equal(g, e)
