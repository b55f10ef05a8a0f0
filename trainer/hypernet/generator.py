"""Generators: a conditioning vector in, the target's flat parameter vector out.

Why a registry: the way conditioning becomes weights is the design choice most worth
varying (one dense head, low-rank factors, shared weights plus a per-context
deviation, ...). Every kind is a `ParameterGenerator` with one contract, so the
composite model, materialization and export never depend on which kind is in use;
`GeneratorConfig.kind` picks one from `kinds.GENERATOR_KINDS` and `kinds.make_generator`
builds it. The pooled kinds ("film", "lowrank") live in pooled.py.

Kind "full" (`FullGenerator`) maps the conditioning to all `TargetSpec.num_params`
parameters, either with one dense head or with chunks (Ha et al. 2016; von Oswald et
al. 2020): a shared network emits fixed-size chunks, each selected by a learned chunk
embedding, so the generator's size does not grow with the target's.

Its initialisation is hyperfan-in (Chang, Flokas & Lipson, ICLR 2020): the trunk ends
in a LayerNorm, so every conditioning row has mean square exactly 1; the head then
emits unit-variance "standardised" parameters and a fixed per-parameter scale gives
each generated kernel variance gain/(2*fan_in) and each bias gain/2. Kernel and bias
heads split the He variance, so the generated target's pre-activations start with
the variance a He-initialised MLP has.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.hypernet.target_spec import TargetSpec

INITS = ("hyperfan_in", "default")
RANK_LAYERS = ("first", "all")


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
    kind: str = "full"  # a key of kinds.GENERATOR_KINDS
    rank: int = 4  # kind "lowrank": the rank of each kernel's deviation
    # kind "lowrank": which kernels get it, "first" (the input layer's; the others' biases
    # still deviate) or "all"; on the grouped tables "first" scored the same and its step
    # is cheaper (docs/grouped-defaults.md, section 21).
    rank_layers: str = "first"
    # Pooled kinds: the loss adds shrinkage * sum over contexts of |deviation|^2. As
    # lambda / N (N training examples) it is a Gaussian prior on each group's deviation.
    shrinkage: float = 0.0
    # Pooled kinds: L2 on the shared network's kernels (weight decay of what every context
    # shares; the deviation keeps its own prior, `shrinkage`).
    shared_l2: float = 0.0
    # Pooled kinds: each categorical context value also shifts the first hidden layer's
    # pre-activation by a free vector of its own (what a one-hot context input gives a
    # plain MLP: no embedding between the value and the shift), under its own prior,
    # shift_shrinkage * sum over values of |shift|^2 (docs/grouped-defaults.md, section 22).
    context_shift: bool = False
    shift_shrinkage: float = 0.0

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
        from trainer.hypernet.kinds import GENERATOR_KINDS  # the registry imports this module

        if self.kind not in GENERATOR_KINDS:
            raise ValueError(f"generator kind {self.kind!r} unknown; "
                             f"choose one of {sorted(GENERATOR_KINDS)}")
        if self.rank < 1:
            raise ValueError(f"generator rank must be >= 1, got {self.rank}")
        if self.rank_layers not in RANK_LAYERS:
            raise ValueError(f"generator rank_layers {self.rank_layers!r} unknown; "
                             f"choose one of {RANK_LAYERS}")
        if self.shrinkage < 0:
            raise ValueError(f"generator shrinkage must be >= 0, got {self.shrinkage}")
        if self.shared_l2 < 0:
            raise ValueError(f"generator shared_l2 must be >= 0, got {self.shared_l2}")
        if self.shift_shrinkage < 0:
            raise ValueError(f"generator shift_shrinkage must be >= 0, got {self.shift_shrinkage}")


class ParameterGenerator(tf.keras.layers.Layer):
    """The contract of every generator kind: conditioning [U, d] -> flat params [U, num_params].

    Row u of the output is the target's whole parameter vector for conditioning row u,
    flattened in `TargetSpec.params()` order (`functional_target.split_params` cuts it).
    A kind owns only its own variables; it is built as `Kind(spec, config, name=...)`.
    Two optional parts of the contract:
    - `pooled`: the parameters are shared ones plus `deviation(conditioning)`, which is
      zero for zero conditioning; the encoder then gives no constant part and an
      out-of-vocabulary context zero conditioning, and the composite model shrinks
      every context's deviation (`GeneratorConfig.shrinkage`).
    - `applies_directly`: `apply_direct(x, conditioning, index, first_shift=...)` runs
      the target on a batch without building each context's full parameter set (a plain
      MLP's work); `first_shift` [B, first hidden width], if given, is added to each
      example's first hidden pre-activation (the composite model's context shifts).
    """

    pooled = False
    applies_directly = False

    def __init__(self, spec: TargetSpec, config: GeneratorConfig, **kwargs: Any):
        super().__init__(**kwargs)
        self.spec = spec
        self.config = config

    def call(self, conditioning: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement call(conditioning)")

    def deviation(self, conditioning: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError(f"{type(self).__name__} is not a pooled kind")

    def penalty(self, rows: tf.Tensor) -> tf.Tensor:
        """The sum over conditioning rows of |deviation(row)|^2 (pooled kinds)."""
        return tf.reduce_sum(tf.square(self.deviation(rows)))

    def apply_direct(self, x: tf.Tensor, conditioning: tf.Tensor, index: tf.Tensor,
                     return_logits: bool = False, first_shift: tf.Tensor | None = None) -> tf.Tensor:
        raise NotImplementedError(f"{type(self).__name__} does not apply directly")

    @property
    def num_generator_params(self) -> int:
        return int(sum(np.prod(v.shape) for v in self.trainable_variables))


def hyperfan_in_scale(spec: TargetSpec) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Per-parameter standard deviation of the generated target, flattened in spec order."""
    parts = []
    for p in spec.params():
        var = spec.gain / 2.0 if p.is_bias else spec.gain / (2.0 * p.fan_in)
        parts.append(np.full(p.size, math.sqrt(var), dtype=np.float32))
    return np.concatenate(parts)


class FullGenerator(ParameterGenerator):
    """Kind "full": a trunk, a LayerNorm and a head emitting every parameter (or chunk)."""

    def __init__(self, spec: TargetSpec, config: GeneratorConfig, **kwargs: Any):
        super().__init__(spec, config, **kwargs)
        self.trunk = [
            tf.keras.layers.Dense(u, activation="relu", name=f"trunk_{i}")
            for i, u in enumerate(config.trunk_units)
        ]
        self.norm = tf.keras.layers.LayerNormalization(name="trunk_norm")
        width = config.chunk_size or spec.num_params
        if config.init == "hyperfan_in":
            # Unit-variance output: the normalised trunk output has mean square 1.
            head_init: tf.keras.initializers.Initializer | str = _UnitOutputNormal()
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


class _UnitOutputNormal(tf.keras.initializers.Initializer):
    """N(0, 1/fan_in): unit output variance for inputs of mean square 1."""

    def __call__(self, shape: Any, dtype: Any = None, **kwargs: Any) -> tf.Tensor:
        return tf.random.normal(shape, stddev=1.0 / math.sqrt(shape[0]), dtype=dtype or tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {}
