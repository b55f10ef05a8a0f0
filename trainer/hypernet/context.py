"""What conditions the hypernetwork, and how a context row becomes a conditioning vector.

Kept apart from the generator so a generator kind sees only a conditioning tensor
[U, d]: it never needs to know which features (categorical ids, numeric values, or
none at all for a static hypernetwork) made it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class ContextSpec:
    """What conditions the hypernetwork. No features at all = static hypernetwork."""

    categorical: Mapping[str, int] = dataclasses.field(default_factory=dict)  # name -> vocab size
    numeric: Sequence[str] = ()
    embedding_dim: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", dict(self.categorical))
        object.__setattr__(self, "numeric", tuple(self.numeric))
        for name, size in self.categorical.items():
            if int(size) < 1:
                raise ValueError(f"context feature {name!r}: vocabulary size must be >= 1, got {size}")
        overlap = set(self.categorical) & set(self.numeric)
        if overlap:
            raise ValueError(f"context features both categorical and numeric: {sorted(overlap)}")
        if self.embedding_dim < 1:
            raise ValueError(f"context embedding_dim must be >= 1, got {self.embedding_dim}")

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.categorical, *self.numeric)

    @property
    def is_static(self) -> bool:
        return not self.names

    @property
    def max_distinct(self) -> int | None:
        """How many distinct contexts there can be (None: unbounded, a numeric context)."""
        if self.numeric:
            return None
        return math.prod(int(size) for size in self.categorical.values())


class ContextEncoder(tf.keras.layers.Layer):
    """Context rows [U, n_context] (ids and values as float32) -> conditioning [U, d]."""

    def __init__(self, context: ContextSpec, **kwargs):
        super().__init__(**kwargs)
        self.context = context
        self.embeddings = {
            name: tf.keras.layers.Embedding(
                int(size), context.embedding_dim, name=f"embed_{_safe(name)}",
                embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=1.0))
            for name, size in context.categorical.items()
        }
        # A learned constant part of every conditioning vector: the whole of it for a static
        # hypernetwork; with contexts it keeps the vector non-zero (a numeric context of 0).
        self.constant = self.add_weight(
            name="static_embedding", shape=(1, context.embedding_dim),
            initializer=tf.keras.initializers.RandomNormal(stddev=1.0))

    def call(self, rows: tf.Tensor | None) -> tf.Tensor:
        if self.context.is_static:
            return self.constant
        parts = [tf.tile(self.constant, [tf.shape(rows)[0], 1])]
        for i, name in enumerate(self.context.names):
            column = rows[:, i]
            if name in self.embeddings:
                parts.append(self.embeddings[name](tf.cast(column, tf.int32)))
            else:
                parts.append(column[:, None])
        return tf.concat(parts, axis=-1)

    @property
    def output_dim(self) -> int:
        """d: the constant part, one embedding per categorical feature, one value per numeric."""
        c = self.context
        return c.embedding_dim * (1 + len(c.categorical)) + len(c.numeric)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)
