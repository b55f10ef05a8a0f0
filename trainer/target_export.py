"""Materialized target networks as deployable SavedModels, one per context value.

A target network generated for a context is an ordinary Keras MLP. Exported with
the Transform graph in front of it, it serves the same raw tf.Examples as the
hypernetwork's model and returns the same output name; the context features of a
request are ignored (the network *is* one context). `manifest.json` maps each
context value to its directory, parameter count and the evaluator's slice metrics.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_transform as tft
from absl import logging

from pipeline.configs import MANIFEST_FILE, WEIGHTS_FILE, PipelineConfig
from trainer.eval_results import slice_metrics
from trainer.features import OOV_BUCKETS, transformed_name, vocab_filename
from trainer.hypernet.keras_env import without_autograph, without_keras_traces
from trainer.model import ConfiguredHyperModel, ModelLayout
from trainer.task import serving_feature_spec
from trainer.warm_start import copy_hypernetwork_weights

OOV = "<out-of-vocabulary>"


def load_hypernetwork(config: PipelineConfig, tft_output: tft.TFTransformOutput,
                      model_dir: str) -> ConfiguredHyperModel:
    """The trained composite, rebuilt from the config and the exported SavedModel's weights."""
    layout = ModelLayout.from_transform(config, tft_output)
    model = ConfiguredHyperModel(config, layout, name="hyper_model")
    # Create the variables as training did (same names): one empty raw example, transformed.
    spec = serving_feature_spec(config, tft_output)
    empty = tf.train.Example().SerializeToString()
    model(tft_output.transform_features_layer()(tf.io.parse_example(tf.constant([empty]), spec)))
    reason = copy_hypernetwork_weights(model.hyper, model_dir)
    if reason:
        raise ValueError(f"cannot rebuild the hypernetwork from {model_dir}: {reason}")
    return model


def context_values(config: PipelineConfig, tft_output: tft.TFTransformOutput
                   ) -> list[tuple[dict[str, str], dict[str, float]]]:
    """Every context to materialize: (raw value by feature, model input by feature).

    Categorical contexts: the configured values, or the whole vocabulary plus the
    out-of-vocabulary bucket. Numeric contexts: the configured values, transformed
    as Transform does (the model sees z-scores).
    """
    per_feature: list[list[tuple[str, float]]] = []
    for name in config.context:
        listed = config.target_networks.context_values.get(name)
        if name in config.features.categorical:
            vocab = [v.decode() if isinstance(v, bytes) else str(v)
                     for v in tft_output.vocabulary_by_name(vocab_filename(name))]
            ids = {v: i for i, v in enumerate(vocab)}
            oov_id = len(vocab) + OOV_BUCKETS - 1
            values = [str(v) for v in listed] if listed is not None else [*vocab, OOV]
            per_feature.append([(v, float(ids.get(v, oov_id))) for v in values])
        else:
            raw = [float(v) for v in listed]  # validation guarantees a list for numeric contexts
            per_feature.append(list(zip(map(str, raw), _transform_numeric(config, tft_output, name, raw))))
    combos = list(itertools.product(*per_feature))
    limit = config.target_networks.max_networks
    if len(combos) > limit:
        raise ValueError(
            f"{len(combos)} context combinations of {list(config.context)} exceed "
            f"target_networks.max_networks={limit}; list fewer under "
            "target_networks.context_values")
    return [({n: v for n, (v, _) in zip(config.context, c)},
             {n: x for n, (_, x) in zip(config.context, c)}) for c in combos]


def _transform_numeric(config: PipelineConfig, tft_output: tft.TFTransformOutput, name: str,
                       values: Sequence[float]) -> list[float]:
    """Raw numeric context values as the model sees them (through the Transform graph)."""
    spec = serving_feature_spec(config, tft_output)
    examples = [tf.train.Example(features=tf.train.Features(
        feature={name: _feature(v, spec[name].dtype)})).SerializeToString() for v in values]
    parsed = tf.io.parse_example(tf.constant(examples), spec)
    out = tft_output.transform_features_layer()(parsed)[transformed_name(name)]
    return [float(x) for x in tf.reshape(out, [-1]).numpy()]


def _feature(value: float, dtype: tf.dtypes.DType) -> tf.train.Feature:
    if dtype == tf.int64:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))
    return tf.train.Feature(float_list=tf.train.FloatList(value=[value]))


class TargetNetworkServing(tf.Module):
    """Raw tf.Examples -> Transform graph -> one materialized target network."""

    def __init__(self, target: tf.keras.Model, model: ConfiguredHyperModel,
                 tft_output: tft.TFTransformOutput, config: PipelineConfig):
        super().__init__(name="target_network_serving")
        self.target = target
        self.assembler = model.assembler  # no variables: numeric columns + one-hots
        self.tft_layer = tft_output.transform_features_layer()
        spec = serving_feature_spec(config, tft_output)
        name = config.output_name

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
        @without_autograph
        def serve(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
            transformed = self.tft_layer(tf.io.parse_example(serialized, spec))
            return {name: self.target(self.assembler(transformed))}

        self.serve = serve


def directory_name(index: int, raw: Mapping[str, str]) -> str:
    """A stable, filesystem-safe name: '003-payment_type=Credit_Card'."""
    text = ",".join(f"{k}={v}" for k, v in raw.items()) or "static"
    return f"{index:03d}-" + re.sub(r"[^A-Za-z0-9=,._-]+", "_", text)[:80]


def export_target_networks(config: PipelineConfig, model_dir: str,
                           tft_output: tft.TFTransformOutput, output_dir: str,
                           evaluation_uri: str | None = None) -> dict[str, Any]:
    """Write one SavedModel per context value, the generated weights and the manifest."""
    model = load_hypernetwork(config, tft_output, model_dir)
    metrics = slice_metrics(evaluation_uri) if evaluation_uri else {}
    networks, weights = [], []
    contexts = context_values(config, tft_output) if config.context else [({}, {})]
    for index, (raw, inputs) in enumerate(contexts):
        name = directory_name(index, raw)
        target = model.hyper.materialize(inputs, name="target_network")
        weights.append(np.concatenate([w.ravel() for w in target.get_weights()]))
        module = TargetNetworkServing(target, model, tft_output, config)
        with without_keras_traces():
            tf.saved_model.save(module, os.path.join(output_dir, name),
                                signatures={"serving_default": module.serve})
        slice_ = metrics.get(", ".join(f"{k}={v}" for k, v in raw.items()))
        networks.append({"context": raw, "model_input": inputs, "path": name,
                         "num_params": int(target.count_params()), "metrics": slice_})
        logging.info("target network %s: %s", name, raw)
    np.savez_compressed(os.path.join(output_dir, WEIGHTS_FILE),
                        names=np.array([n["path"] for n in networks]), weights=np.stack(weights))
    manifest = {"hypernetwork": model_dir, "context_features": list(config.context),
                "output": config.output_name, "networks": networks}
    with tf.io.gfile.GFile(os.path.join(output_dir, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
