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
    # Per categorical feature, the id of its out-of-vocabulary bucket: its embedding is
    # pinned to zero, so an unseen value gets the network of no context information.
    oov_ids: Mapping[str, int] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "categorical", dict(self.categorical))
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "oov_ids", dict(self.oov_ids))
        for name, oov in self.oov_ids.items():
            if name not in self.categorical or not 0 <= oov < int(self.categorical[name]):
                raise ValueError(f"context oov_ids: {name!r} -> {oov} is not an id of a "
                                 "categorical context feature")
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
    """Context rows [U, n_context] (ids and values as float32) -> conditioning [U, d].

    `constant`: a learned constant leads every conditioning vector (the full generator's
    anchor). `stddev`: the embeddings' initial scale. Pooled generators take none: their conditioning must be zero for a context
    that carries no information (an out-of-vocabulary id, a numeric value of 0).
    """

    def __init__(self, context: ContextSpec, constant: bool = True, stddev: float = 1.0,
                 **kwargs: object):
        super().__init__(**kwargs)
        self.context = context
        self.has_constant = constant
        self.embeddings = {
            name: tf.keras.layers.Embedding(
                int(size), context.embedding_dim, name=f"embed_{safe_name(name)}",
                embeddings_initializer=tf.keras.initializers.RandomNormal(stddev=stddev))
            for name, size in context.categorical.items()
        }
        # A learned constant part of every conditioning vector: the whole of it for a static
        # hypernetwork; with contexts it keeps the vector non-zero (a numeric context of 0).
        if constant:
            self.constant = self.add_weight(
                name="static_embedding", shape=(1, context.embedding_dim),
                initializer=tf.keras.initializers.RandomNormal(stddev=1.0))

    def call(self, rows: tf.Tensor | None) -> tf.Tensor:
        if rows is None or self.context.is_static:
            return self.constant if self.has_constant else tf.zeros([1, 0])
        parts = [tf.tile(self.constant, [tf.shape(rows)[0], 1])] if self.has_constant else []
        for i, name in enumerate(self.context.names):
            column = rows[:, i]
            if name in self.embeddings:
                ids = tf.cast(column, tf.int32)
                parts.append(self._embed(name, ids))
            else:
                parts.append(column[:, None])
        return tf.concat(parts, axis=-1)

    def _embed(self, name: str, ids: tf.Tensor) -> tf.Tensor:
        vectors = self.embeddings[name](ids)
        if name not in self.context.oov_ids:
            return vectors
        keep = tf.cast(tf.not_equal(ids, self.context.oov_ids[name]), vectors.dtype)
        return vectors * keep[:, None]

    def pooling_rows(self) -> tf.Tensor:
        """[R, d]: every context value's conditioning on its own (others' parts zero).

        Categorical: each vocabulary id's embedding (the OOV one zero); numeric: a value
        of 1. A pooled generator's deviation is linear in the conditioning, so the
        deviations of these rows are what its shrinkage penalty sums over.
        """
        c, blocks = self.context, []
        width = self.output_dim
        offset = c.embedding_dim if self.has_constant else 0
        for name in c.names:
            if name in self.embeddings:
                # The table read whole (a dense gradient, not a scatter over every row).
                table = self.embeddings[name].embeddings
                vectors = without_oov_row(table, c.oov_ids.get(name))
                blocks.append(tf.pad(vectors, [[0, 0], [offset, width - offset - c.embedding_dim]]))
                offset += c.embedding_dim
            else:
                blocks.append(tf.one_hot([offset], width))
                offset += 1
        return tf.concat(blocks, axis=0) if blocks else tf.zeros([0, width])

    @property
    def output_dim(self) -> int:
        """d: the constant part, one embedding per categorical feature, one value per numeric."""
        c = self.context
        return c.embedding_dim * (int(self.has_constant) + len(c.categorical)) + len(c.numeric)


def without_oov_row(table: tf.Tensor, oov_id: int | None) -> tf.Tensor:
    """A per-id table [vocab, width] with the out-of-vocabulary id's row read as zero (the
    variable keeps its value; an unseen value must condition on nothing)."""
    if oov_id is None:
        return table
    return table * tf.one_hot(oov_id, table.shape[0], on_value=0.0, off_value=1.0)[:, None]


def safe_name(name: str) -> str:
    """A feature name as a valid Keras layer / variable name part."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)
