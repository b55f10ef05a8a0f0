"""Materialized target networks as deployable SavedModels, one per context value.

A target network generated for a context is an ordinary Keras MLP. Exported with
the Transform graph in front of it, it serves the same raw tf.Examples as the
hypernetwork's model and returns the same output name; the context features of a
request are ignored (the network *is* one context). A context may have thousands of
values: the most frequent `target_networks.max_networks` are exported, plus the
out-of-vocabulary network (what an unseen or rare value gets); the other values are
served by the hypernetwork itself. `manifest.json` says how many contexts exist and
maps each exported one to its directory, parameter count and the evaluator's slice
metrics.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
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
    spec = serving_feature_spec(config, tft_output)
    empty = tf.train.Example().SerializeToString()
    reasons = []
    # The Trainer kept one of the candidates: the kind (with or without context shifts)
    # whose variables match.
    forms = dict.fromkeys((c.generator, c.shift_pooling is not None)
                          for c in config.model.candidate_models())
    for kind, shifts in forms:
        model = ConfiguredHyperModel(config, layout, kind=kind, name="hyper_model",
                                     shift_pooling=0.0 if shifts else None)
        # Create the variables as training did (same names): one empty example, transformed.
        model(tft_output.transform_features_layer()(
            tf.io.parse_example(tf.constant([empty]), spec)))
        reason = copy_hypernetwork_weights(model.hyper, model_dir, with_fitted=True)
        if reason is None:
            return model
        reasons.append(f"{kind}{' with context shifts' if shifts else ''}: {reason}")
    raise ValueError(f"cannot rebuild the hypernetwork from {model_dir}: {'; '.join(reasons)}")


@dataclasses.dataclass(frozen=True)
class ContextSelection:
    """The contexts to materialize, and how they relate to all the model tells apart."""

    contexts: list[tuple[dict[str, str], dict[str, float]]]  # (raw value, model input) by feature
    total: int | None  # distinct contexts the model tells apart; None with a numeric context
    vocabulary_sizes: dict[str, int]  # per vocabulary context: values with their own embedding
    note: str  # what was exported, in words (the manifest's "selection")


def select_contexts(config: PipelineConfig, tft_output: tft.TFTransformOutput) -> ContextSelection:
    """The contexts to materialize, most frequent first, at most max_networks (+ OOV).

    Each context feature offers its values in order: the configured ones as listed, or
    (categorical, none listed) Transform's vocabulary, which TFT sorts by descending
    frequency in the train split. Combinations are taken by ascending sum of those ranks
    (one context: simply the most frequent values) up to `target_networks.max_networks`;
    then one fallback network where every vocabulary context is out of vocabulary (listed
    contexts at their first value): what the hypernetwork does for an unseen value. A
    value in the vocabulary but not exported keeps its own network inside the
    hypernetwork, which serves it. Listed values are exported exactly: more
    combinations of them than max_networks is an error.
    """
    limit = config.target_networks.max_networks
    listed_values = config.target_networks.context_values
    candidates: list[list[tuple[str, float]]] = []
    fallback: list[tuple[str, float]] = []
    sizes: dict[str, int] = {}
    total: int | None = 1
    for name in config.context:
        listed = listed_values.get(name)
        if name in config.features.categorical:
            vocab = [v.decode() if isinstance(v, bytes) else str(v)
                     for v in tft_output.vocabulary_by_name(vocab_filename(name))]
            ids = {v: i for i, v in enumerate(vocab)}
            oov_id = float(len(vocab) + OOV_BUCKETS - 1)
            if listed is None:
                values = [(v, float(i)) for i, v in enumerate(vocab)]
                fallback.append((OOV, oov_id))
                sizes[name] = len(vocab)
                total = None if total is None else total * (len(vocab) + OOV_BUCKETS)
            else:
                values = [(str(v), float(ids.get(str(v), oov_id))) for v in listed]
                fallback.append(values[0])
                total = None if total is None else total * len(values)
        else:
            raw = [float(v) for v in listed]  # validation guarantees a list for numeric contexts
            values = list(zip(map(str, raw), _transform_numeric(config, tft_output, name, raw)))
            fallback.append(values[0])
            total = None
        candidates.append(values)
    everything = math.prod(len(c) for c in candidates)
    if not sizes and everything > limit:
        raise ValueError(
            f"{everything} combinations of the listed values of {list(config.context)} exceed "
            f"target_networks.max_networks={limit}; list fewer under "
            "target_networks.context_values")
    ranked = [tuple(c[i] for c, i in zip(candidates, index))
              for index in itertools.islice(_by_rank_sum([len(c) for c in candidates]), limit)]
    if sizes:
        ranked.append(tuple(fallback))
    contexts = [({n: v for n, (v, _) in zip(config.context, c)},
                 {n: x for n, (_, x) in zip(config.context, c)}) for c in ranked]
    exported = len(ranked) - (1 if sizes else 0)
    if not sizes:
        note = f"the {exported} listed context value combination(s)"
    elif exported < everything:
        note = (f"the {exported} most frequent of {everything:,} vocabulary contexts "
                f"(target_networks.max_networks={limit}) plus the out-of-vocabulary one; "
                "the hypernetwork serves the others")
    else:
        note = f"all {exported} vocabulary contexts plus the out-of-vocabulary one"
    return ContextSelection(contexts, total, sizes, note)


def context_values(config: PipelineConfig, tft_output: tft.TFTransformOutput
                   ) -> list[tuple[dict[str, str], dict[str, float]]]:
    """Every context to materialize: (raw value by feature, model input by feature).

    See `select_contexts`: the most frequent contexts (at most max_networks) plus the
    out-of-vocabulary one, or the listed values. Numeric contexts are transformed as
    Transform does (the model sees z-scores).
    """
    return select_contexts(config, tft_output).contexts


def _by_rank_sum(sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    """Index tuples of the cross product of lists of these sizes, by ascending index sum
    (ties: lexicographic). Lazy: taking the first n never enumerates the whole product."""
    if not sizes or min(sizes) == 0:
        if not sizes:
            yield ()
        return
    for level in range(sum(s - 1 for s in sizes) + 1):
        yield from _with_sum(level, sizes)


def _with_sum(level: int, sizes: Sequence[int]) -> Iterator[tuple[int, ...]]:
    if len(sizes) == 1:
        if level < sizes[0]:
            yield (level,)
        return
    rest_max = sum(s - 1 for s in sizes[1:])
    for first in range(max(0, level - rest_max), min(level, sizes[0] - 1) + 1):
        for rest in _with_sum(level - first, sizes[1:]):
            yield (first, *rest)


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
    """Write one SavedModel per selected context (`select_contexts`), the generated
    weights of those and the manifest (which also says how many contexts exist)."""
    model = load_hypernetwork(config, tft_output, model_dir)
    metrics = slice_metrics(evaluation_uri) if evaluation_uri else {}
    networks, weights = [], []
    selection = select_contexts(config, tft_output) if config.context else \
        ContextSelection([({}, {})], 1, {}, "the one network of a model without context")
    module: TargetNetworkServing | None = None
    for index, (raw, inputs) in enumerate(selection.contexts):
        name = directory_name(index, raw)
        target = model.hyper.materialize(inputs, name="target_network")
        values = target.get_weights()
        weights.append(np.concatenate([w.ravel() for w in values]))
        if module is None:
            module = TargetNetworkServing(target, model, tft_output, config)
        else:  # every context's network has the same layers: one module, traced once
            module.target.set_weights(values)
        with without_keras_traces():
            tf.saved_model.save(module, os.path.join(output_dir, name),
                                signatures={"serving_default": module.serve})
        slice_ = metrics.get(", ".join(f"{k}={v}" for k, v in raw.items()))
        networks.append({"context": raw, "model_input": inputs, "path": name,
                         "num_params": int(target.count_params()), "metrics": slice_})
        logging.info("target network %s: %s", name, raw)
    # numpy writes local files only: the archive goes through tf.io.gfile (gs:// roots).
    buffer = io.BytesIO()
    np.savez_compressed(buffer, names=np.array([n["path"] for n in networks]),
                        weights=np.stack(weights))
    with tf.io.gfile.GFile(os.path.join(output_dir, WEIGHTS_FILE), "wb") as f:
        f.write(buffer.getvalue())
    manifest = {"hypernetwork": model_dir, "context_features": list(config.context),
                "output": config.output_name,
                # How many contexts exist (None: a numeric context), which were exported.
                "contexts_total": selection.total,
                "contexts_exported": len(networks),
                "vocabulary_sizes": selection.vocabulary_sizes,
                "max_networks": config.target_networks.max_networks,
                "selection": selection.note,
                "networks": networks}
    with tf.io.gfile.GFile(os.path.join(output_dir, MANIFEST_FILE), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest
