"""Transform's preprocessing_fn, driven entirely by the pipeline config.

Every raw column may be missing (the schema declares them all optional), so
training and serving fill gaps the same way: numeric values with the training
mean (plus a 0/1 "missing" indicator), categorical values with "" before the
vocabulary. Values rarer than `vocab_min_count` share the out-of-vocabulary
bucket with values never seen at all, so that bucket is trained and a new
company at serving time gets a sensible network instead of an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from pipeline.configs import PipelineConfig, deserialize
from trainer.features import (
    OOV_BUCKETS,
    SHARED_VOCAB,
    bucket_name,
    missing_name,
    own_vocabulary_columns,
    shared_vocabulary_columns,
    transformed_name,
    vocab_filename,
)

LABEL_VOCAB = "vocab_label"


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict:
    """Raw features (sparse or dense) -> transformed features for the Trainer."""
    config = deserialize(custom_config)
    return transform_features(inputs, config)


def transform_features(inputs: Mapping[str, Any], config: PipelineConfig) -> dict:
    columns = RawColumns(inputs)
    outputs: dict[str, tf.Tensor] = {}
    numeric: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}  # raw -> (value to scale, present)
    for raw in (*config.features.log_numeric, *config.features.numeric):
        value, present = columns.numeric(raw)
        scaled = value
        if raw in config.features.log_numeric:
            scaled = tf.math.log1p(tf.maximum(tf.cast(value, tf.float64), 0.0))
        numeric[raw] = (scaled, present)
        outputs.update(_buckets(raw, value, present, config))
    if numeric:
        outputs.update(_scaled(numeric))
    outputs.update(_categorical(columns, config))
    outputs[config.label.name] = _label(columns, config)
    return outputs


class RawColumns:
    """Each raw column made dense once: [B] values and a presence mask.

    Any column may be missing (sparse), and one column can have several uses (the fare
    feeds a z-score, buckets and the label). TFT traces preprocessing_fn about five
    times and runs the graph on every batch of both passes, so its size is Transform's
    time: converting each use separately, with its own slice of the batch size, made
    938 ops against the TFX template's 234, and Transform ~8 s slower on the taxi sample.
    A gap is one sentinel per dtype, so one conversion gives both value and presence:
    NaN for floats (a NaN in the data is a gap too, not a poisoned mean), the smallest
    int64, and "" for strings (an empty string is no value either).
    """

    def __init__(self, inputs: Mapping[str, Any]):
        self._inputs = inputs
        self._parsed: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}
        self._numeric: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}
        self._batch_shape: tf.Tensor | None = None

    def parsed(self, name: str) -> tuple[tf.Tensor, tf.Tensor]:
        """([B] values, gaps holding the sentinel; [B] presence)."""
        if name not in self._parsed:
            x = self._inputs[name]
            if isinstance(x, tf.SparseTensor):
                if self._batch_shape is None:  # [B, 1]: at most one value per row
                    self._batch_shape = tf.stack([x.dense_shape[0], 1])
                value = tf.reshape(tf.sparse.to_dense(
                    tf.SparseTensor(x.indices, x.values, self._batch_shape),
                    default_value=_gap(x.dtype)), [-1])
            else:
                value = tf.reshape(x, [-1])
            if value.dtype.is_floating:
                present = tf.logical_not(tf.math.is_nan(value))
            else:
                present = tf.not_equal(value, _gap(value.dtype))
            self._parsed[name] = value, present
        return self._parsed[name]

    def numeric(self, name: str) -> tuple[tf.Tensor, tf.Tensor]:
        """(float32 values, gaps as 0; presence)."""
        if name not in self._numeric:
            value, present = self.parsed(name)
            if value.dtype == tf.string:
                value = tf.strings.to_number(tf.where(present, value, "0"), tf.float32)
            value = tf.where(present, tf.cast(value, tf.float32), 0.0)
            self._numeric[name] = value, present
        return self._numeric[name]

    def string(self, name: str) -> tf.Tensor:
        """Categories as strings (integer codes such as community areas too); gaps ""."""
        value, present = self.parsed(name)
        if value.dtype == tf.string:
            return value
        return tf.where(present, tf.strings.as_string(value), "")


def _gap(dtype: tf.dtypes.DType) -> Any:
    if dtype == tf.string:
        return ""
    return float("nan") if dtype.is_floating else dtype.min


def _categorical(columns: RawColumns, config: PipelineConfig) -> dict[str, tf.Tensor]:
    """Ids of the categorical columns: a context's in its own vocabulary, the rest in one.

    A context's ids index the generator's embedding, one row per value, so its
    vocabulary is its own. Every other column only reaches the target network as a
    one-hot, so they share one vocabulary of "column=value" tokens: each column's ids
    are disjoint slices of one id space, and its out-of-vocabulary id is its own
    (shared size + the column's position). One vocabulary is one chain of Beam
    stages: seven of them cost Transform ~12 s more on the taxi sample.
    """
    outputs = {}
    min_count = config.features.vocab_min_count
    for raw in own_vocabulary_columns(config):
        outputs[transformed_name(raw)] = tft.compute_and_apply_vocabulary(
            columns.string(raw), frequency_threshold=min_count, num_oov_buckets=OOV_BUCKETS,
            vocab_filename=vocab_filename(raw))
    shared = shared_vocabulary_columns(config)
    if shared:
        tokens = tf.stack([tf.strings.join([f"{raw}=", columns.string(raw)]) for raw in shared],
                          axis=1)  # [B, F]
        vocabulary = tft.vocabulary(tokens, frequency_threshold=min_count,
                                    vocab_filename=SHARED_VOCAB)
        ids = tft.apply_vocabulary(tokens, vocabulary, default_value=-1)
        size = tft.experimental.get_vocabulary_size_by_name(SHARED_VOCAB)
        oov = size + tf.range(len(shared), dtype=tf.int64)  # [F]
        ids = tf.where(ids < 0, oov, ids)
        outputs.update(zip(map(transformed_name, shared), tf.unstack(ids, axis=1)))
    return outputs


def _label(columns: RawColumns, config: PipelineConfig) -> tf.Tensor:
    label = config.label
    if label.rule is not None:
        rule = label.rule
        lhs, _ = columns.numeric(rule.lhs)
        rhs = columns.numeric(rule.rhs)[0] if isinstance(rule.rhs, str) else rule.rhs
        return tf.cast(rule.holds(lhs, rhs), tf.int64)
    if label.task == "multiclass":
        return tft.compute_and_apply_vocabulary(
            columns.string(label.column), vocab_filename=LABEL_VOCAB, num_oov_buckets=0)
    if label.task == "binary" and label.positive is not None:
        return tf.cast(tf.equal(columns.string(label.column), label.positive), tf.int64)
    if label.task == "binary":
        return tf.cast(columns.numeric(label.column)[0] > 0.5, tf.int64)
    return columns.numeric(label.column)[0]


def _scaled(columns: Mapping[str, tuple[tf.Tensor, tf.Tensor]]) -> dict[str, tf.Tensor]:
    """z-scores by the mean and deviation of each column's present values; a gap scores 0.

    One [B, F] tensor for every column, gaps as NaN (TFT's statistics skip them), so
    `tft.mean` and `tft.var` each cover all columns. TFT packs the two into one Beam
    stage, though each accumulates both statistics: no public analyzer returns the
    pair. Per-column analyzers cost Transform 12 s more on the taxi sample.
    Deterministic: Beam merges partial statistics in no fixed order, so they are
    accumulated in float64 by TFT's stable mean-and-variance merge (noise ~1e-16) and
    rounded to float32 before use. Sums of squares cancelled on latitudes (variance tiny
    next to the mean): one z-score in ~100 then moved by an ulp from run to run, and the
    same span and seed trained another model (README, "Determinism").
    """
    names = list(columns)
    present = tf.stack([columns[n][1] for n in names], axis=1)  # [B, F]
    values = tf.stack([tf.cast(columns[n][0], tf.float64) for n in names], axis=1)
    with_gaps = tf.where(present, values, tf.constant(float("nan"), tf.float64))
    mean = tf.cast(tft.mean(with_gaps, reduce_instance_dims=False), tf.float32)
    std = tf.cast(tf.sqrt(tft.var(with_gaps, reduce_instance_dims=False)), tf.float32)
    # A column with no value in the span: NaN statistics (0 / 0); serve it unscaled.
    mean = tf.where(tf.math.is_finite(mean), mean, tf.zeros_like(mean))
    std = tf.where(tf.math.is_finite(std) & (std > 0), std, tf.ones_like(std))
    z = (tf.cast(values, tf.float32) - mean) / std
    z = tf.where(present, z, 0.0)
    outputs = dict(zip(map(transformed_name, names), tf.unstack(z, axis=1)))
    outputs.update(zip(map(missing_name, names),
                       tf.unstack(1.0 - tf.cast(present, tf.float32), axis=1)))
    return outputs


def _buckets(raw: str, value: tf.Tensor, present: tf.Tensor,
             config: PipelineConfig) -> dict[str, tf.Tensor]:
    """Quantile bucket ids 0..num_buckets-1 of a bucketized feature (a gap: the median's).

    Of the parsed value itself, never of arithmetic on it: log1p and friends may round
    differently in a large batch (vectorized) than for one example, which would move a
    value sitting on a boundary (taxi fares repeat exactly) into another bucket. The
    boundaries are quantiles of the present values, computed in the same pass as the
    z-score statistics.
    """
    if raw not in config.features.bucketized:
        return {}
    n = config.features.num_buckets
    boundaries = tft.quantiles(tf.boolean_mask(value, present), n, epsilon=0.01 / n)
    median = boundaries[:, (n - 1) // 2]
    filled = tf.where(present, value, tf.cast(median[0], value.dtype))
    return {transformed_name(bucket_name(raw)): tft.apply_buckets(filled, boundaries)}
