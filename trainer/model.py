"""From a pipeline config and Transform's output to the trainable composite model."""

from __future__ import annotations

import dataclasses
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from pipeline.configs import PipelineConfig
from trainer.features import (
    OOV_BUCKETS,
    SHARED_VOCAB,
    bucket_name,
    categorical_inputs,
    numeric_inputs,
    own_vocabulary_columns,
    shared_vocabulary_columns,
    transformed_name,
    vocab_filename,
)
from trainer.hypernet.context import ContextSpec
from trainer.hypernet.generator import GeneratorConfig
from trainer.hypernet.hypernetwork import FEATURES, HyperNetwork
from trainer.hypernet.keras_env import GraphModel, require_legacy_keras
from trainer.hypernet.target_spec import TargetSpec
from trainer.preprocessing import LABEL_VOCAB

HEAD = {"binary": "sigmoid", "multiclass": "softmax", "regression": "linear"}


@dataclasses.dataclass(frozen=True)
class ModelLayout:
    """Widths that only Transform's vocabularies can tell."""

    vocab_sizes: dict[str, int]  # one-hot input (context column or bucket) -> ids incl. OOV
    shared_columns: tuple[str, ...]  # categorical columns whose ids share SHARED_VOCAB
    shared_size: int  # SHARED_VOCAB's tokens, without the columns' own OOV ids
    num_classes: int  # 1 for binary and regression

    @classmethod
    def from_transform(cls, config: PipelineConfig, tft_output: tft.TFTransformOutput) -> ModelLayout:
        sizes = {c: tft_output.vocabulary_size_by_name(vocab_filename(c)) + OOV_BUCKETS
                 for c in own_vocabulary_columns(config)}
        sizes.update({bucket_name(c): config.features.num_buckets
                      for c in config.features.bucketized})
        shared = tuple(shared_vocabulary_columns(config))
        shared_size = tft_output.vocabulary_size_by_name(SHARED_VOCAB) if shared else 0
        classes = 1
        if config.label.task == "multiclass":
            classes = config.label.num_classes or tft_output.vocabulary_size_by_name(LABEL_VOCAB)
        return cls(sizes, shared, shared_size, classes)

    @property
    def shared_width(self) -> int:
        """The shared id space: every token, then one OOV id per column."""
        return self.shared_size + len(self.shared_columns)

    def oov_id(self, column: str) -> int:
        if column in self.shared_columns:
            return self.shared_size + self.shared_columns.index(column)
        return self.vocab_sizes[column] - 1

    def categorical_encoding(self, config: PipelineConfig) -> tuple[list[tuple[str, int]], list[str]]:
        """The config's categorical inputs as (one-hot column, depth) pairs and shared columns."""
        columns = categorical_inputs(config)
        return ([(c, self.vocab_sizes[c]) for c in columns if c not in self.shared_columns],
                [c for c in columns if c in self.shared_columns])

    def input_dim(self, config: PipelineConfig) -> int:
        one_hot, shared = self.categorical_encoding(config)
        return (len(numeric_inputs(config)) + sum(depth for _, depth in one_hot)
                + (self.shared_width if shared else 0))


def vocabulary_files(config: PipelineConfig, tft_output: tft.TFTransformOutput) -> dict[str, str]:
    """Every vocabulary the model's ids index, by what it encodes (for warm start's check)."""
    files = {c: tft_output.vocabulary_file_by_name(vocab_filename(c))
             for c in own_vocabulary_columns(config)}
    if shared_vocabulary_columns(config):
        files["the categorical columns"] = tft_output.vocabulary_file_by_name(SHARED_VOCAB)
    if config.label.task == "multiclass":
        files["label"] = tft_output.vocabulary_file_by_name(LABEL_VOCAB)
    return files


def target_spec(config: PipelineConfig, layout: ModelLayout) -> TargetSpec:
    return TargetSpec(layout.input_dim(config), tuple(config.model.hidden_units), layout.num_classes,
                      activation=config.model.activation, head=HEAD[config.label.task])


def context_spec(config: PipelineConfig, layout: ModelLayout) -> ContextSpec:
    categorical = {c: layout.vocab_sizes[c] for c in config.context if c in layout.vocab_sizes}
    numeric = [c for c in config.context if c not in layout.vocab_sizes]
    # Transform's out-of-vocabulary id (rare and unseen values) conditions on nothing.
    oov = {c: layout.oov_id(c) for c in categorical}
    return ContextSpec(categorical, numeric, config.model.context_embedding_dim, oov_ids=oov)


def generator_config(config: PipelineConfig, pooling: float = 0.0, train_examples: int = 0,
                     kind: str | None = None, shared_l2: float = 0.0,
                     shift_pooling: float | None = None) -> GeneratorConfig:
    """The library's generator settings; shrinkage = pooling / N, a prior on each group's
    deviation in units of the mean training loss (0 when N is unknown: inference only),
    and the context shifts' prior shift_pooling / N (None: no shifts). `kind`: one of the
    candidates' kinds (default the first's); `shared_l2`: a candidate's, already in the
    loss's units, as pooling and shift_pooling are."""
    m = config.model

    def per_example(strength: float) -> float:
        return strength / train_examples if train_examples else 0.0
    return GeneratorConfig(tuple(m.generator_units), m.chunk_size, m.chunk_embedding_dim,
                           head_l2=m.generator_l2, kind=kind or m.kinds[0], rank=m.rank,
                           rank_layers=m.rank_layers, shrinkage=per_example(pooling),
                           shared_l2=shared_l2, context_shift=shift_pooling is not None,
                           shift_shrinkage=per_example(shift_pooling or 0.0))


class FeatureAssembler(tf.keras.layers.Layer):
    """Transformed features -> the target network's dense input.

    Numeric columns, then a one-hot per own-vocabulary column or bucket, then one
    multi-hot over the shared id space (the columns' slices of it are disjoint, so it
    is their one-hots side by side, in the vocabulary's order).
    """

    def __init__(self, config: PipelineConfig, layout: ModelLayout, **kwargs):
        super().__init__(**kwargs)
        one_hot, shared = layout.categorical_encoding(config)
        self.numeric = numeric_inputs(config)
        self.one_hot = [(transformed_name(c), depth) for c, depth in one_hot]
        self.shared = [transformed_name(c) for c in shared]
        self.shared_width = layout.shared_width

    def call(self, transformed: dict[str, tf.Tensor]) -> tf.Tensor:
        parts = [tf.reshape(tf.cast(transformed[n], tf.float32), [-1, 1]) for n in self.numeric]
        parts += [tf.one_hot(tf.reshape(transformed[n], [-1]), depth) for n, depth in self.one_hot]
        if self.shared:
            ids = tf.stack([tf.reshape(transformed[n], [-1]) for n in self.shared], axis=1)
            parts.append(tf.reduce_sum(tf.one_hot(ids, self.shared_width), axis=1))
        return tf.concat(parts, axis=1)


class ConfiguredHyperModel(GraphModel):
    """Transformed features -> prediction, through the config's hypernetwork."""

    def __init__(self, config: PipelineConfig, layout: ModelLayout, pooling: float = 0.0,
                 train_examples: int = 0, kind: str | None = None, shared_l2: float = 0.0,
                 shift_pooling: float | None = None, **kwargs: Any):
        require_legacy_keras()
        super().__init__(**kwargs)
        self.context_names = list(config.context)
        self.assembler = FeatureAssembler(config, layout, name="feature_assembler")
        self.hyper = HyperNetwork(target_spec(config, layout), context_spec(config, layout),
                                  generator_config(config, pooling, train_examples, kind,
                                                   shared_l2, shift_pooling),
                                  name="hypernetwork")

    def set_output_affine(self, scale: float, shift: float) -> None:
        self.hyper.set_output_affine(scale, shift)

    def hyper_inputs(self, transformed: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        inputs = {FEATURES: self.assembler(transformed)}
        for raw in self.context_names:
            inputs[raw] = tf.reshape(transformed[transformed_name(raw)], [-1])
        return inputs

    def call(self, transformed: dict[str, tf.Tensor]) -> tf.Tensor:
        return self.hyper(self.hyper_inputs(transformed))


class PlainMLP(GraphModel):
    """The reference: the same target architecture, context one-hot encoded as ordinary input.

    `l2`: on every kernel (the benchmarks give it a fair regulariser). A regression output
    is standardised as the hypernetwork's is (set_output_affine).
    """

    def __init__(self, config: PipelineConfig, layout: ModelLayout, l2: float = 0.0,
                 **kwargs: Any):
        require_legacy_keras()
        super().__init__(**kwargs)
        plain = dataclasses.replace(config, context=())
        spec = target_spec(plain, layout)
        regularizer = tf.keras.regularizers.L2(l2) if l2 else None
        self.assembler = FeatureAssembler(plain, layout, name="feature_assembler")
        self.dense = [tf.keras.layers.Dense(u, activation=spec.activation,
                                            kernel_regularizer=regularizer)
                      for u in spec.hidden_units]
        self.dense.append(tf.keras.layers.Dense(spec.output_dim, activation=spec.head,
                                                kernel_regularizer=regularizer))
        self.output_affine = tf.Variable([1.0, 0.0], trainable=False, name="output_affine")

    def set_output_affine(self, scale: float, shift: float) -> None:
        self.output_affine.assign([scale, shift])

    def call(self, transformed: dict[str, tf.Tensor]) -> tf.Tensor:
        h = self.assembler(transformed)
        for layer in self.dense:
            h = layer(h)
        return self.output_affine[1] + self.output_affine[0] * h
