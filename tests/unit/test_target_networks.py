"""Materialized target networks: one SavedModel per exported context, equal to the hypernetwork;
the most frequent contexts (at most max_networks) plus the out-of-vocabulary one."""

import dataclasses
import itertools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import configs
from pipeline.configs import WEIGHTS_FILE
from tests.support import to_example
from trainer.features import SHARED_VOCAB, transformed_name
from trainer.model import ConfiguredHyperModel, ModelLayout
from trainer.target_export import (
    OOV,
    _by_rank_sum,
    context_values,
    export_target_networks,
    load_hypernetwork,
    select_contexts,
)
from trainer.task import export


@pytest.fixture(scope="module")
def networks(taxi, exported, tmp_path_factory):
    config, rows, dtypes, tft_output = taxi
    out = str(tmp_path_factory.mktemp("target_networks"))
    manifest = export_target_networks(config, exported[0], tft_output, out)
    return out, manifest


def test_one_network_per_vocabulary_value_plus_oov(taxi, networks):
    config, rows, dtypes, tft_output = taxi
    out, manifest = networks
    vocab = [v.decode() for v in tft_output.vocabulary_by_name("vocab_payment_type")]
    assert len(vocab) + 1 <= config.target_networks.max_networks  # few values: all exported
    assert [n["context"]["payment_type"] for n in manifest["networks"]] == [*vocab, OOV]
    assert [n["model_input"]["payment_type"] for n in manifest["networks"]] == \
        list(range(len(vocab) + 1))
    assert manifest["contexts_total"] == manifest["contexts_exported"] == len(vocab) + 1
    assert manifest["vocabulary_sizes"] == {"payment_type": len(vocab)}
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == manifest
    weights = np.load(os.path.join(out, WEIGHTS_FILE))["weights"]
    assert weights.shape == (len(vocab) + 1, manifest["networks"][0]["num_params"])


def test_the_vocabulary_lists_the_most_frequent_value_first(taxi):
    """What `select_contexts` ranks by: TFT writes a vocabulary by descending frequency
    (the context's own, and the shared one of many values, where it is not alphabetical)."""
    config, rows, dtypes, tft_output = taxi
    for name, column_of in (("vocab_payment_type", lambda t: ("payment_type", t)),
                            (SHARED_VOCAB, lambda t: t.split("=", 1))):
        vocab = [v.decode() for v in tft_output.vocabulary_by_name(name)]
        counts = [sum(r[c] == v for r in rows) for c, v in map(column_of, vocab)]
        assert len(vocab) >= 2 and counts == sorted(counts, reverse=True), name
    assert vocab != sorted(vocab) and vocab != sorted(vocab, reverse=True)


def test_export_keeps_the_most_frequent_contexts_plus_oov(taxi, exported, tmp_path):
    config, rows, dtypes, tft_output = taxi
    vocab = [v.decode() for v in tft_output.vocabulary_by_name("vocab_payment_type")]
    capped = dataclasses.replace(config, target_networks=configs.TargetNetworksConfig(max_networks=1))
    manifest = export_target_networks(capped, exported[0], tft_output, str(tmp_path))
    assert [n["context"]["payment_type"] for n in manifest["networks"]] == [vocab[0], OOV]
    assert [n["model_input"]["payment_type"] for n in manifest["networks"]] == [0, len(vocab)]
    assert manifest["contexts_total"] == len(vocab) + 1  # what exists, not what was exported
    assert manifest["contexts_exported"] == 2 and manifest["max_networks"] == 1
    assert manifest["vocabulary_sizes"] == {"payment_type": len(vocab)}
    assert manifest["selection"].startswith(f"the 1 most frequent of {len(vocab)} vocabulary")
    assert sorted(os.listdir(tmp_path)) == sorted(
        [WEIGHTS_FILE, "manifest.json", *(n["path"] for n in manifest["networks"])])
    saved = np.load(os.path.join(tmp_path, WEIGHTS_FILE))
    assert list(saved["names"]) == [n["path"] for n in manifest["networks"]]
    assert saved["weights"].shape[0] == 2


def test_thousands_of_values_take_the_top_ranks_lazily():
    """Index tuples by rank sum: the first n of 2,410 (or of 2,410 x 2,410) are the top ranks."""
    assert list(itertools.islice(_by_rank_sum([2410]), 3)) == [(0,), (1,), (2,)]
    assert list(itertools.islice(_by_rank_sum([2410, 2410]), 6)) == \
        [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (2, 0)]
    assert list(_by_rank_sum([2, 3])) == [(0, 0), (0, 1), (1, 0), (0, 2), (1, 1), (1, 2)]
    assert list(_by_rank_sum([0, 5])) == []


def test_each_network_serves_raw_examples_like_the_hypernetwork(taxi, exported, networks):
    _, rows, dtypes, _ = taxi
    assert_networks_serve_like_the_hypernetwork(exported[0], *networks, rows, dtypes)


def assert_networks_serve_like_the_hypernetwork(model_dir: str, out: str, manifest: dict,
                                                rows: list, dtypes: dict) -> None:
    """200 raw rows and an unseen context value, each through its context's network and
    through the exported hypernetwork: the same probabilities."""
    requests = [{k: v for k, v in r.items() if k != "tips"} for r in rows[:200]]
    requests.append({"payment_type": "Bitcoin", "fare": "12.5"})  # unseen context -> OOV
    serialized = tf.constant([to_example(r, dtypes) for r in requests])
    hyper = tf.saved_model.load(model_dir)
    expected = hyper.signatures["serving_default"](examples=serialized)["probabilities"].numpy()
    ids = hyper.signatures["transform_features"](examples=serialized)[
        transformed_name("payment_type")].numpy().reshape(-1)
    assert ids[-1] == manifest["networks"][-1]["model_input"]["payment_type"]  # OOV's network
    seen = 0
    for network in manifest["networks"]:
        picked = np.flatnonzero(ids == network["model_input"]["payment_type"])
        if not len(picked):
            continue
        served = tf.saved_model.load(os.path.join(out, network["path"]))
        got = served.signatures["serving_default"](examples=tf.gather(serialized, picked))
        assert list(got) == ["probabilities"]
        np.testing.assert_allclose(got["probabilities"].numpy(), expected[picked], atol=1e-5)
        seen += len(picked)
    assert seen == len(requests)


def test_configured_context_values_and_the_network_cap(taxi):
    config, rows, dtypes, tft_output = taxi
    listed = dataclasses.replace(config, target_networks=configs.TargetNetworksConfig(
        context_values={"payment_type": ["Cash", "Never Seen"]}))
    found = context_values(listed, tft_output)
    oov = len(tft_output.vocabulary_by_name("vocab_payment_type"))
    assert [raw["payment_type"] for raw, _ in found] == ["Cash", "Never Seen"]  # no OOV added
    assert found[1][1]["payment_type"] == oov
    selection = select_contexts(listed, tft_output)
    assert selection.total == 2 and selection.vocabulary_sizes == {}
    # Listed values are exported as listed: more than the cap is an error, not a cut.
    capped = dataclasses.replace(config, target_networks=configs.TargetNetworksConfig(
        context_values={"payment_type": ["Cash", "Credit Card", "x"]}, max_networks=2))
    with pytest.raises(ValueError, match="3 combinations of the listed values .* exceed "
                                         "target_networks.max_networks=2"):
        context_values(capped, tft_output)
    with pytest.raises(configs.ConfigError, match="max_networks must be >= 1"):
        dataclasses.replace(config, target_networks=configs.TargetNetworksConfig(max_networks=0))


def test_numeric_context_needs_listed_values():
    base = configs.load(configs.DEFAULT_CONFIG)
    with pytest.raises(configs.ConfigError, match="numeric context feature 'fare'"):
        dataclasses.replace(base, context=("fare",))
    with pytest.raises(configs.ConfigError, match="'company', not a context feature"):
        dataclasses.replace(base, target_networks=configs.TargetNetworksConfig(
            context_values={"company": ["x"]}))


def test_a_kept_candidate_with_context_shifts_is_rebuilt_with_them(taxi, tmp_path):
    """The Trainer may keep a candidate with context shifts: the rebuild tries each listed
    kind with and without them, a context's generated weights (its shift in the first
    bias) come back the same, and each exported network serves as the hypernetwork does."""
    config, rows, dtypes, tft_output = taxi
    listed = (configs.Candidate("film", 30.0), configs.Candidate("lowrank", 30.0, 0.003, 3.0))
    config = dataclasses.replace(config, model=dataclasses.replace(config.model, candidates=listed))
    model = ConfiguredHyperModel(config, ModelLayout.from_transform(config, tft_output), 30.0, 100,
                                 "lowrank", 0.003, 3.0, name="hyper_model")
    empty = tf.io.parse_example(tf.constant([tf.train.Example().SerializeToString()]),
                                tft_output.raw_feature_spec())
    model(tft_output.transform_features_layer()(empty))  # built as training builds it
    [table] = model.hyper.shifts.values()
    table.assign(tf.random.normal(table.shape))
    path = str(tmp_path / "model")
    export(model, config, tft_output, path)
    rebuilt = load_hypernetwork(config, tft_output, path)
    assert rebuilt.hyper.generator_config.kind == "lowrank" and rebuilt.hyper.shifts
    np.testing.assert_array_equal(next(iter(rebuilt.hyper.shifts.values())).numpy(), table.numpy())
    context = {config.context[0]: 1}
    for a, b in zip(rebuilt.hyper.generated_weights(context), model.hyper.generated_weights(context)):
        np.testing.assert_array_equal(a, b)
    out = str(tmp_path / "networks")
    manifest = export_target_networks(config, path, tft_output, out)
    assert_networks_serve_like_the_hypernetwork(path, out, manifest, rows, dtypes)
    without = dataclasses.replace(config, model=dataclasses.replace(config.model,
                                                                   candidates=listed[:1]))
    with pytest.raises(ValueError, match="cannot rebuild the hypernetwork"):
        load_hypernetwork(without, tft_output, path)
