"""Raw CSV rows as serialized tf.Examples: what a serving client sends the pushed models.

The tests and the serving benchmark build requests the way a client would, with the
column types CsvExampleGen infers from the same file.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from typing import Any

import tensorflow as tf


def read_csv(path: str, limit: int | None = None) -> tuple[list[dict[str, str]], dict[str, tf.dtypes.DType]]:
    """Rows as strings ('' = missing) and each column's dtype as CsvExampleGen infers it."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    dtypes: dict[str, tf.dtypes.DType] = {}
    for column in rows[0]:
        values = [r[column] for r in rows if r[column] != ""]
        dtypes[column] = _infer(values)
    return rows[:limit] if limit else rows, dtypes


def _infer(values: list[str]) -> tf.dtypes.DType:
    for dtype, parse in ((tf.int64, int), (tf.float32, float)):
        try:
            for v in values:
                parse(v)
            return dtype
        except ValueError:
            continue
    return tf.string


def to_example(row: Mapping[str, Any], dtypes: Mapping[str, tf.dtypes.DType] | None = None) -> bytes:
    """A serialized tf.Example; '' and None values are left out (missing)."""
    example = tf.train.Example()
    for key, value in row.items():
        if value in ("", None):
            continue
        dtype = dtypes[key] if dtypes else (
            tf.string if isinstance(value, str) else tf.int64 if isinstance(value, int) else tf.float32)
        feature = example.features.feature[key]
        if dtype == tf.string:
            feature.bytes_list.value.append(str(value).encode())
        elif dtype == tf.int64:
            feature.int64_list.value.append(int(value))
        else:
            feature.float_list.value.append(float(value))
    return example.SerializeToString()
