"""Materialized target networks: one SavedModel per context value, equal to the hypernetwork."""

import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from pipeline import configs
from pipeline.configs import WEIGHTS_FILE
from tests.support import to_example
from trainer.features import transformed_name
from trainer.target_export import OOV, context_values, export_target_networks


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
    assert [n["context"]["payment_type"] for n in manifest["networks"]] == [*vocab, OOV]
    assert [n["model_input"]["payment_type"] for n in manifest["networks"]] == \
        list(range(len(vocab) + 1))
    with open(os.path.join(out, "manifest.json")) as f:
        assert json.load(f) == manifest
    weights = np.load(os.path.join(out, WEIGHTS_FILE))["weights"]
    assert weights.shape == (len(vocab) + 1, manifest["networks"][0]["num_params"])


def test_each_network_serves_raw_examples_like_the_hypernetwork(taxi, exported, networks):
    config, rows, dtypes, tft_output = taxi
    out, manifest = networks
    requests = [{k: v for k, v in r.items() if k != "tips"} for r in rows[:200]]
    requests.append({"payment_type": "Bitcoin", "fare": "12.5"})  # unseen context -> OOV
    serialized = tf.constant([to_example(r, dtypes) for r in requests])
    hyper = tf.saved_model.load(exported[0])
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
    assert [raw["payment_type"] for raw, _ in found] == ["Cash", "Never Seen"]
    assert found[1][1]["payment_type"] == oov
    capped = dataclasses.replace(config, target_networks=configs.TargetNetworksConfig(max_networks=2))
    with pytest.raises(ValueError, match="exceed target_networks.max_networks=2"):
        context_values(capped, tft_output)


def test_numeric_context_needs_listed_values():
    base = configs.load(configs.DEFAULT_CONFIG)
    with pytest.raises(configs.ConfigError, match="numeric context feature 'fare'"):
        dataclasses.replace(base, context=("fare",))
    with pytest.raises(configs.ConfigError, match="'company', not a context feature"):
        dataclasses.replace(base, target_networks=configs.TargetNetworksConfig(
            context_values={"company": ["x"]}))
