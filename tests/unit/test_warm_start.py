"""Warm start maps the base generator onto new vocabularies by token; shapes must match."""

import logging

import numpy as np
import pytest
import tensorflow as tf

from trainer.hypernet.context import ContextSpec
from trainer.hypernet.generator import GeneratorConfig
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.target_spec import TargetSpec
from trainer.vocab_remap import read_vocabulary
from trainer.warm_start import saved_variables, variables_under, warm_start

NUMERIC = 2  # numeric inputs before the shared categorical block
COLUMNS = ["x", "y"]  # the shared vocabulary's columns, in id order (one OOV id each)
OLD = {"seg": "a\nb\nc\n", "shared": "x=1\ny=1\nx=2\n", "label": "p\nq\n"}
# a 0->1, c 2->0, b dropped, d new; x=1 dropped, x=3 new, x=2 and y=1 moved; p, q swap, r new
NEW = {"seg": "c\na\nd\n", "shared": "x=2\nx=3\ny=1\n", "label": "q\nr\np\n"}
FILES = {"seg": "vocab_seg", "shared": "vocab_categorical", "label": "vocab_label"}


def sizes(vocab: dict[str, str]) -> tuple[int, int, int]:
    """(context ids with OOV, target input width, classes) of a vocabulary set."""
    n = {k: len(v.splitlines()) for k, v in vocab.items()}
    return n["seg"] + 1, NUMERIC + n["shared"] + len(COLUMNS), n.get("label", 1)


def hyper(vocab: dict[str, str], kind: str = "film", seed: int = 0, hidden: int = 8,
          randomize: bool = False, **generator: int | str) -> HyperNetwork:
    """A small built hypernetwork over `vocab`; `randomize`: every variable random (a
    trained model: no zero-initialised deviation hides a wrong copy)."""
    context, inputs, classes = sizes(vocab)
    tf.keras.utils.set_random_seed(seed)
    head = "softmax" if classes > 1 else "sigmoid"
    model = HyperNetwork(TargetSpec.from_layers([inputs, hidden, classes], head=head),
                         ContextSpec({"seg": context}, oov_ids={"seg": context - 1}),
                         GeneratorConfig((16,), kind=kind, **generator), name="hypernetwork")
    model({FEATURES: tf.zeros([2, inputs]), "seg": tf.constant([0, 1])})
    if randomize:
        for v in model.trainable_variables:
            v.assign(tf.random.normal(v.shape, stddev=0.5))
        table = np.random.default_rng(seed).normal(size=model.intercepts["seg"].shape)
        table[context - 1] = 0.0  # the OOV context's: fitted intercepts leave it at zero
        model.set_intercepts({"seg": table})
    return model


def write_vocab(folder, vocab: dict[str, str]) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    for key, text in vocab.items():
        (folder / FILES[key]).write_text(text)
    return {key: str(folder / FILES[key]) for key in vocab}


def save_base(tmp_path, model: HyperNetwork, vocab: dict[str, str]) -> str:
    """A saved 'blessed model': the hypernetwork and its vocabularies as assets."""
    module = tf.Module()
    module.hyper = model
    path = tmp_path / "base"
    tf.saved_model.save(module, str(path))
    write_vocab(path / "assets", vocab)
    return str(path)


def ids(vocab: str) -> dict[str, int]:
    return {t: i for i, t in enumerate(vocab.splitlines())}


def input_rows(old: dict[str, str], new: dict[str, str]) -> list[int]:
    """Per new input position, the old one whose row it must start from."""
    o, n = ids(old["shared"]), new["shared"].splitlines()
    oov = {c: NUMERIC + len(o) + k for k, c in enumerate(COLUMNS)}
    rows = list(range(NUMERIC))
    rows += [NUMERIC + o[t] if t in o else oov[t.split("=")[0]] for t in n]
    return rows + [oov[c] for c in COLUMNS]


KINDS = ["film", "lowrank", "full"]
BINARY = {k: v for k, v in OLD.items() if k != "label"}


@pytest.mark.parametrize(("kind", "settings"), [
    *((k, {}) for k in KINDS), ("lowrank", {"rank_layers": "all"}),
    ("film", {"context_shift": True}), ("lowrank", {"context_shift": True})])
def test_a_shared_token_keeps_its_generated_network_where_its_ids_moved(tmp_path, kind, settings):
    """Context 'a' (id 0 -> 1), inputs remapped by token: the same target network (its
    context shift, in the first bias, included)."""
    base = hyper(BINARY, kind, seed=1, randomize=True, **settings)
    path = save_base(tmp_path, base, BINARY)
    new_vocab = {k: v for k, v in NEW.items() if k != "label"}
    fresh = hyper(new_vocab, kind, seed=2, **settings)
    assert warm_start(fresh, path, write_vocab(tmp_path / "new", new_vocab), COLUMNS) is None
    rows = input_rows(BINARY, new_vocab)
    for new_id, old_id in ((ids(NEW["seg"])["a"], ids(OLD["seg"])["a"]),
                           (ids(NEW["seg"])["c"], ids(OLD["seg"])["c"]),
                           (ids(NEW["seg"])["d"], 3)):  # a new context value: as OOV did
        ours = fresh.generated_weights({"seg": new_id})
        theirs = base.generated_weights({"seg": old_id})
        np.testing.assert_allclose(ours[0], theirs[0][rows], rtol=1e-5, atol=1e-6)
        for a, b in zip(ours[1:], theirs[1:]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_embedding_rows_follow_their_tokens(tmp_path, caplog):
    base = hyper(BINARY, seed=1, randomize=True)
    path = save_base(tmp_path, base, BINARY)
    new_vocab = {k: v for k, v in NEW.items() if k != "label"}
    fresh = hyper(new_vocab, seed=2)
    with caplog.at_level(logging.INFO, logger="absl"):
        assert warm_start(fresh, path, write_vocab(tmp_path / "new", new_vocab), COLUMNS) is None
    old = base.encoder.embeddings["seg"].embeddings.numpy()
    ours = fresh.encoder.embeddings["seg"].embeddings.numpy()
    np.testing.assert_array_equal(ours[0], old[2])  # c moved 2 -> 0
    np.testing.assert_array_equal(ours[1], old[0])  # a moved 0 -> 1
    np.testing.assert_array_equal(ours[2], 0.0)  # d is new: the OOV context's zero embedding
    np.testing.assert_array_equal(ours[3], old[3])  # the OOV row
    assert not any(np.array_equal(row, old[1]) for row in ours)  # b is gone
    # The context intercepts follow the same tokens (d: the OOV context's zero).
    old, ours = base.intercepts["seg"].numpy(), fresh.intercepts["seg"].numpy()
    np.testing.assert_array_equal(ours, [old[2], old[0], [0.0], old[3]])
    # The first kernel's rows (shared network): x=3 is new and starts as x's OOV row.
    kernel, old_kernel = fresh.generator.shared[0].numpy(), base.generator.shared[0].numpy()
    np.testing.assert_array_equal(kernel, old_kernel[input_rows(BINARY, new_vocab)])
    np.testing.assert_array_equal(kernel[NUMERIC + 1], old_kernel[NUMERIC + 3])
    text = caplog.text
    assert ("4 variables copied, 3 remapped by vocabulary (seg: 2 rows copied, 1 new "
            "(as OOV: zero), 1 dropped; shared: 2 rows copied, 1 new (as their column's OOV), "
            "1 dropped), 0 initialised") in text
    assert "warm start check: seg token 'c' id 0 (base id 2) embedding row [" in text


def test_new_classes_keep_their_initialisation(tmp_path):
    base = hyper(OLD, seed=1, randomize=True)
    path = save_base(tmp_path, base, OLD)
    fresh = hyper(NEW, seed=2)
    init = fresh.generator.shared[-2].numpy().copy()  # the last kernel [hidden, classes]
    assert warm_start(fresh, path, write_vocab(tmp_path / "new", NEW), COLUMNS) is None
    last = fresh.generator.shared[-2].numpy()
    old = base.generator.shared[-2].numpy()
    np.testing.assert_array_equal(last[:, 0], old[:, 1])  # q
    np.testing.assert_array_equal(last[:, 2], old[:, 0])  # p
    np.testing.assert_array_equal(last[:, 1], init[:, 1])  # r: new, as initialised


def test_unchanged_vocabularies_copy_every_variable(tmp_path, caplog):
    base = hyper(OLD, "lowrank", seed=1, randomize=True)
    path = save_base(tmp_path, base, OLD)
    fresh = hyper(OLD, "lowrank", seed=2)
    with caplog.at_level(logging.INFO, logger="absl"):
        assert warm_start(fresh, path, write_vocab(tmp_path / "new", OLD), COLUMNS) is None
    for ours, theirs in zip([*fresh.trainable_variables, fresh.intercepts["seg"]],
                            [*base.trainable_variables, base.intercepts["seg"]]):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert "7 variables copied, 0 remapped by vocabulary (vocabularies unchanged)" in caplog.text


def test_a_lowrank_base_of_the_old_column_layout_is_not_copied(tmp_path, monkeypatch):
    """Until 2026-12-07 lowrank's map held A and B as [in, r] blocks in an unscoped kernel;
    the same shape now means [r, in]. Copied, it would scramble every context's network."""
    from trainer.hypernet.pooled import LowRankGenerator

    with monkeypatch.context() as old_code:
        old_code.setattr(LowRankGenerator, "kernel_scope", "")
        base = hyper(OLD, "lowrank", seed=1, randomize=True)
    path = save_base(tmp_path, base, OLD)
    fresh = hyper(OLD, "lowrank", seed=2)
    before = [v.numpy().copy() for v in fresh.trainable_variables]
    assert warm_start(fresh, path, write_vocab(tmp_path / "new", OLD), COLUMNS) == (
        "different variables (new: ['rank_major/kernel:0'], gone: ['kernel:0'])")
    for v, b in zip(fresh.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


@pytest.mark.parametrize("kind", KINDS)
def test_saved_variables_are_what_loading_the_model_gives(tmp_path, kind):
    """Read from the object graph and checkpoint alone: the same variables, flags and
    values as tf.saved_model.load's (which warm start and the export used to pay for)."""
    path = save_base(tmp_path, hyper(OLD, kind, randomize=True), OLD)
    loaded = tf.saved_model.load(path).hyper
    expected = {v.name: (v.trainable, v.numpy())
                for v in [*variables_under(loaded), *variables_under(loaded, trainable=False)]}
    saved = saved_variables(path)
    assert sorted(v.name for v in saved) == sorted(expected)
    assert any(not v.trainable for v in saved) and any(v.trainable for v in saved)
    for v in saved:
        trainable, value = expected[v.name]
        assert (v.trainable, v.shape) == (trainable, value.shape)
        np.testing.assert_array_equal(v.numpy(), value)


def test_an_unreadable_base_means_training_from_scratch(tmp_path):
    write_vocab(tmp_path / "base" / "assets", OLD)  # its vocabularies, but no model
    reason = warm_start(hyper(OLD), str(tmp_path / "base"), write_vocab(tmp_path / "v", OLD), COLUMNS)
    assert reason.startswith(f"cannot read the base model at {tmp_path / 'base'}: ")


@pytest.mark.parametrize("change, reason", [
    ({"hidden": 4}, "dense_0/bias:0 has shape (8,) in the base model, (4,) now"),
    ({"kind": "lowrank"}, "different variables (new: ['rank_major/kernel:0'], gone: ['kernel:0'])"),
    ({"kind": "full", "chunk_size": 16}, "FullGenerator's weights cannot be remapped"),
])
def test_any_other_difference_means_training_from_scratch(tmp_path, change, reason, caplog):
    kind = change.get("kind", "film")
    base = hyper(OLD, "full" if "chunk_size" in change else "film", seed=1, randomize=True,
                 **({"chunk_size": 16} if "chunk_size" in change else {}))
    path = save_base(tmp_path, base, OLD)
    fresh = hyper(NEW, kind, seed=2, hidden=change.get("hidden", 8),
                  **({"chunk_size": change["chunk_size"]} if "chunk_size" in change else {}))
    before = [v.numpy().copy() for v in fresh.trainable_variables]
    with caplog.at_level(logging.INFO, logger="absl"):
        got = warm_start(fresh, path, write_vocab(tmp_path / "new", NEW), COLUMNS)
    assert got is not None and reason in got
    assert f"warm start skipped, training from scratch: {got}" in caplog.text
    for v, b in zip(fresh.trainable_variables, before):  # never half-copied
        np.testing.assert_array_equal(v.numpy(), b)


def test_a_changed_shared_vocabulary_needs_its_columns(tmp_path):
    path = save_base(tmp_path, hyper(OLD, seed=1), OLD)
    got = warm_start(hyper(NEW, seed=2), path, write_vocab(tmp_path / "new", NEW))
    assert got == "vocabulary of shared changed and its columns are unknown"


def test_vocabulary_files_are_read_one_token_per_line(tmp_path):
    path = tmp_path / "v"
    path.write_bytes(b"Cash\nCredit Card\n\xc3\xa9\n")
    assert read_vocabulary(str(path)) == [b"Cash", b"Credit Card", "é".encode()]


def test_no_base_model(tmp_path):
    assert warm_start(hyper(OLD), None, write_vocab(tmp_path, OLD)) == "no blessed model yet"


def save_base_without_intercepts(tmp_path, model: HyperNetwork, vocab: dict[str, str]) -> str:
    """A blessed model saved before the context intercepts existed: the same variables under
    the same names, less the `intercept_*` tables."""
    module = tf.Module()
    module.hyper = tf.Module()
    module.hyper.weights = [tf.Variable(v.numpy(), name=v.name.split(":")[0], trainable=v.trainable)
                            for v in model.variables if "intercept_" not in v.name]
    path = tmp_path / "old_base"
    tf.saved_model.save(module, str(path))
    write_vocab(path / "assets", vocab)
    return str(path)


@pytest.mark.parametrize("kind", KINDS)
def test_a_base_from_before_the_intercepts_warm_starts_with_zero_intercepts(tmp_path, kind,
                                                                           caplog):
    base = hyper(BINARY, kind, seed=1, randomize=True)
    base.set_intercepts({"seg": np.zeros(base.intercepts["seg"].shape)})  # it computed none
    path = save_base_without_intercepts(tmp_path, base, BINARY)
    assert not any("intercept_" in v.name for v in tf.saved_model.load(path).hyper.weights)
    fresh = hyper(BINARY, kind, seed=2)
    with caplog.at_level(logging.INFO, logger="absl"):
        assert warm_start(fresh, path, write_vocab(tmp_path / "new", BINARY), COLUMNS) is None
    assert "0 remapped by vocabulary (vocabularies unchanged), 0 initialised" in caplog.text
    np.testing.assert_array_equal(fresh.intercepts["seg"].numpy(), 0.0)
    for ours, theirs in zip(fresh.trainable_variables, base.trainable_variables):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    inputs = {FEATURES: tf.random.stateless_normal([4, sizes(BINARY)[1]], seed=[0, 1]),
              "seg": tf.constant([0, 1, 2, 3])}
    np.testing.assert_allclose(fresh(inputs).numpy(), base(inputs).numpy(), rtol=1e-6)
