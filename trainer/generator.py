"""The generator: a conditioning vector in, the target's flat parameter vector out.

Two pieces, each a Keras layer:
- `ContextEncoder` turns context rows (categorical ids and numeric values, or
  nothing for a static hypernetwork) into a conditioning vector.
- `WeightGenerator` maps that vector to all `TargetSpec.num_params` parameters,
  either with one dense head or with chunks (Ha et al. 2016; von Oswald et al.
  2020): a shared network emits fixed-size chunks, each selected by a learned
  chunk embedding, so the generator's size does not grow with the target's.

Initialisation is hyperfan-in (Chang, Flokas & Lipson, ICLR 2020): the trunk ends
in a LayerNorm, so every conditioning row has mean square exactly 1; the head
then emits unit-variance "standardised" parameters and a fixed per-parameter
scale gives each generated kernel variance gain/(2*fan_in) and each bias
gain/2. Kernel and bias heads split the He variance, so the generated target's
pre-activations start with the variance a He-initialised MLP has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from trainer.target_spec import TargetSpec

INITS = ("hyperfan_in", "default")


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


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
    """Size and style of the generator."""

    trunk_units: Sequence[int] = (64,)
    chunk_size: int = 0  # 0: one dense head for all parameters
    chunk_embedding_dim: int = 16
    init: str = "hyperfan_in"
    # L2 penalty on the head's kernel, through which the conditioning reaches the weights:
    # it shrinks each context's generated weights toward shared ones (the head's bias).
    head_l2: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "trunk_units", tuple(int(u) for u in self.trunk_units))
        if any(u <= 0 for u in self.trunk_units):
            raise ValueError(f"generator trunk_units must be positive, got {self.trunk_units}")
        if self.chunk_size < 0:
            raise ValueError(f"generator chunk_size must be >= 0, got {self.chunk_size}")
        if self.init not in INITS:
            raise ValueError(f"generator init {self.init!r} unknown; choose one of {INITS}")
        if self.head_l2 < 0:
            raise ValueError(f"generator head_l2 must be >= 0, got {self.head_l2}")


def hyperfan_in_scale(spec: TargetSpec) -> np.ndarray:
    """Per-parameter standard deviation of the generated target, flattened in spec order."""
    parts = []
    for p in spec.params():
        var = spec.gain / 2.0 if p.is_bias else spec.gain / (2.0 * p.fan_in)
        parts.append(np.full(p.size, math.sqrt(var), dtype=np.float32))
    return np.concatenate(parts)


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


class WeightGenerator(tf.keras.layers.Layer):
    """Conditioning [U, d] -> flat target parameters [U, spec.num_params]."""

    def __init__(self, spec: TargetSpec, config: GeneratorConfig, **kwargs):
        super().__init__(**kwargs)
        self.spec = spec
        self.config = config
        self.trunk = [
            tf.keras.layers.Dense(u, activation="relu", name=f"trunk_{i}")
            for i, u in enumerate(config.trunk_units)
        ]
        self.norm = tf.keras.layers.LayerNormalization(name="trunk_norm")
        width = config.chunk_size or spec.num_params
        if config.init == "hyperfan_in":
            # Unit-variance output: the normalised trunk output has mean square 1.
            head_init = _UnitOutputNormal()
            self.scale = tf.constant(hyperfan_in_scale(spec))
        else:
            head_init = "glorot_uniform"
            self.scale = None
        self.head = tf.keras.layers.Dense(
            width, kernel_initializer=head_init, name="head",
            kernel_regularizer=tf.keras.regularizers.L2(config.head_l2) if config.head_l2 else None)
        if config.chunk_size:
            self.num_chunks = math.ceil(spec.num_params / config.chunk_size)
            self.chunk_embeddings = self.add_weight(
                name="chunk_embeddings", shape=(self.num_chunks, config.chunk_embedding_dim),
                initializer=tf.keras.initializers.RandomNormal(stddev=1.0))

    def call(self, conditioning: tf.Tensor) -> tf.Tensor:
        if self.config.chunk_size:
            # Every (context, chunk) pair is one row through the shared network.
            rows = tf.shape(conditioning)[0]
            cond = tf.repeat(conditioning[:, None, :], self.num_chunks, axis=1)
            chunks = tf.tile(self.chunk_embeddings[None], [rows, 1, 1])
            h = tf.concat([cond, chunks], axis=-1)
        else:
            h = conditioning
        for layer in self.trunk:
            h = layer(h)
        raw = self.head(self.norm(h))
        if self.config.chunk_size:
            raw = tf.reshape(raw, [-1, self.num_chunks * self.config.chunk_size])
            raw = raw[:, : self.spec.num_params]
        return raw * self.scale if self.scale is not None else raw

    @property
    def num_generator_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))


class _UnitOutputNormal(tf.keras.initializers.Initializer):
    """N(0, 1/fan_in): unit output variance for inputs of mean square 1."""

    def __call__(self, shape, dtype=None, **kwargs):
        return tf.random.normal(shape, stddev=1.0 / math.sqrt(shape[0]), dtype=dtype or tf.float32)

    def get_config(self):
        return {}


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)
