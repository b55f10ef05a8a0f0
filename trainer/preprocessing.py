"""Transform's preprocessing_fn, driven entirely by the pipeline config.

Every raw column may be missing (the schema declares them all optional), so
training and serving fill gaps the same way: numeric values with the training
mean (plus a 0/1 "missing" indicator), categorical values with "" before the
vocabulary. Values rarer than `vocab_min_count` share the out-of-vocabulary
bucket with values never seen at all, so that bucket is trained and a new
company at serving time gets a sensible network instead of an error.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from typing import Any

import tensorflow as tf
import tensorflow_transform as tft

from pipeline.configs import PipelineConfig, deserialize
from trainer.features import (
    OOV_BUCKETS,
    bucket_name,
    missing_name,
    transformed_name,
    vocab_filename,
)

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
        "==": operator.eq, "!=": operator.ne}
LABEL_VOCAB = "vocab_label"


def preprocessing_fn(inputs: Mapping[str, Any], custom_config: Mapping[str, Any]) -> dict:
    """Raw features (sparse or dense) -> transformed features for the Trainer."""
    config = deserialize(custom_config)
    return transform_features(inputs, config)


def transform_features(inputs: Mapping[str, Any], config: PipelineConfig) -> dict:
    outputs: dict[str, tf.Tensor] = {}
    numeric: dict[str, tuple[tf.Tensor, tf.Tensor]] = {}  # raw -> (value to scale, present)
    for raw in (*config.features.log_numeric, *config.features.numeric):
        value, present = _numeric(inputs[raw])
        scaled = value
        if raw in config.features.log_numeric:
            scaled = tf.math.log1p(tf.maximum(tf.cast(value, tf.float64), 0.0))
        numeric[raw] = (scaled, present)
        outputs.update(_buckets(raw, value, present, config))
    if numeric:
        outputs.update(_scaled(numeric))
    for raw in config.features.categorical:
        outputs[transformed_name(raw)] = tft.compute_and_apply_vocabulary(
            _string(inputs[raw]),
            frequency_threshold=config.features.vocab_min_count,
            num_oov_buckets=OOV_BUCKETS,
            vocab_filename=vocab_filename(raw),
        )
    outputs[config.label.name] = _label(inputs, config)
    return outputs


def _label(inputs: Mapping[str, Any], config: PipelineConfig) -> tf.Tensor:
    label = config.label
    if label.rule is not None:
        rule = label.rule
        lhs, _ = _numeric(inputs[rule.lhs])
        rhs = _numeric(inputs[rule.rhs])[0] if isinstance(rule.rhs, str) else rule.rhs
        return tf.cast(_OPS[rule.op](lhs, rule.factor * rhs), tf.int64)
    if label.task == "multiclass":
        return tft.compute_and_apply_vocabulary(
            _string(inputs[label.column]), vocab_filename=LABEL_VOCAB, num_oov_buckets=0)
    if label.task == "binary":
        return tf.cast(_numeric(inputs[label.column])[0] > 0.5, tf.int64)
    return _numeric(inputs[label.column])[0]


def _scaled(columns: Mapping[str, tuple[tf.Tensor, tf.Tensor]]) -> dict[str, tf.Tensor]:
    """z-scores by the mean and deviation of each column's present values; a gap scores 0.

    One analyzer for every column: the per-column count, sum and sum of squares of the
    present values, as one [3, F] `tft.sum`. Each TFT analyzer is its own set of Beam
    stages: a mean and a variance per column cost Transform 12 s more on the taxi sample.
    One analysis pass: the statistics are of the present values, so nothing waits for
    a filled column. Accumulated in float64: in float32 the sums depend on the order in
    which Beam combines partial sums (~1e-4 on latitudes, whose variance is tiny next to
    their mean), and the same span would give another model (README, "Determinism").
    """
    names = list(columns)
    present = tf.stack([tf.cast(columns[n][1], tf.float64) for n in names], axis=1)  # [B, F]
    values = tf.stack([tf.cast(columns[n][0], tf.float64) for n in names], axis=1) * present
    count, total, squares = tf.unstack(tft.sum(
        tf.stack([present, values, values * values], axis=1), reduce_instance_dims=False))
    seen = tf.maximum(count, 1.0)
    mean = total / seen
    std = tf.sqrt(tf.maximum(squares / seen - mean * mean, 0.0))
    z = tf.where(present > 0, (values - mean) / tf.where(std > 0, std, tf.ones_like(std)), 0.0)
    outputs = {}
    for i, raw in enumerate(names):
        outputs[transformed_name(raw)] = tf.cast(z[:, i], tf.float32)
        outputs[missing_name(raw)] = 1.0 - tf.cast(present[:, i], tf.float32)
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


def _dense(x: Any, default: Any) -> tf.Tensor:
    """[B] dense values from a [B] / [B, 1] tensor or a [B, 1] SparseTensor (gaps -> default)."""
    if isinstance(x, tf.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]),
            default_value=tf.constant(default, x.dtype))
    return tf.reshape(x, [-1]) if x.shape.rank != 1 else x


def _numeric(x: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """(float32 values with gaps as 0, presence mask)."""
    if isinstance(x, tf.SparseTensor):
        present = _dense(tf.SparseTensor(x.indices, tf.ones_like(x.values, tf.int8),
                                         x.dense_shape), 0) > 0
        zero = "" if x.dtype == tf.string else 0
        value = _dense(x, zero)
    else:
        value = _dense(x, 0)
        present = tf.ones_like(value, tf.bool)
    if value.dtype == tf.string:
        value = tf.strings.to_number(tf.where(present, value, "0"), tf.float32)
    return tf.cast(value, tf.float32), present


def _string(x: Any) -> tf.Tensor:
    value = _dense(x, "" if x.dtype == tf.string else 0)
    if value.dtype != tf.string:
        # Integer codes (e.g. community areas) become categories; gaps stay "".
        present = _numeric(x)[1]
        value = tf.where(present, tf.strings.as_string(value), "")
    return value
