"""Warm start copies the base generator only when vocabularies and shapes match."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.hypernet.context import ContextSpec
from trainer.hypernet.generator import GeneratorConfig
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.target_spec import TargetSpec
from trainer.warm_start import warm_start

SPEC = TargetSpec.from_layers([6, 8, 1])


def hyper(vocab: int = 4, seed: int = 0) -> HyperNetwork:
    tf.keras.utils.set_random_seed(seed)
    model = HyperNetwork(SPEC, ContextSpec({"seg": vocab}), GeneratorConfig((16,)), name="hypernetwork")
    model({FEATURES: tf.zeros([2, 6]), "seg": tf.constant([0, 1])})
    return model


@pytest.fixture()
def base(tmp_path):
    """A saved 'blessed model' with a hypernetwork and its vocabulary asset."""
    module = tf.Module()
    module.hyper = hyper(seed=1)
    path = tmp_path / "base"
    tf.saved_model.save(module, str(path))
    (path / "assets").mkdir(exist_ok=True)
    (path / "assets" / "vocab_seg").write_text("a\nb\nc\n")
    return str(path), module.hyper


def vocab(tmp_path, text="a\nb\nc\n"):
    path = tmp_path / "vocab_seg"
    path.write_text(text)
    return {"seg": str(path)}


def test_copies_every_generator_variable_when_everything_matches(tmp_path, base):
    path, trained = base
    fresh = hyper(seed=2)
    assert warm_start(fresh, path, vocab(tmp_path)) is None
    for ours, theirs in zip(fresh.trainable_variables, trained.trainable_variables):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_a_changed_vocabulary_means_training_from_scratch(tmp_path, base):
    path, trained = base
    fresh = hyper(seed=2)
    before = [v.numpy().copy() for v in fresh.trainable_variables]
    reason = warm_start(fresh, path, vocab(tmp_path, "b\na\nc\n"))
    assert reason == "vocabulary of seg changed since the base model"
    for v, b in zip(fresh.trainable_variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


def test_a_changed_shape_means_training_from_scratch(tmp_path, base):
    path, _ = base
    reason = warm_start(hyper(vocab=5), path, vocab(tmp_path))
    assert "embed_seg/embeddings:0 has shape (4, 8) in the base model, (5, 8) now" in reason


def test_no_base_model(tmp_path):
    assert warm_start(hyper(), None, vocab(tmp_path)) == "no blessed model yet"
