"""Partial pooling: generated weights = shared weights + a shrunk, context-specific deviation.

Why: a hypernetwork earns its place on data whose rule differs between groups, some
large and many small. Generating every weight from the context lets each group fit
its own network and over-fit the small ones. Here, as in a mixed-effects model, every
context starts from one shared target network (its own variables, He-initialised) and
moves away from it by a deviation that is a linear function of its conditioning:
- an out-of-vocabulary or unseen context has zero conditioning, so it gets exactly the
  shared network;
- the composite model adds `shrinkage * sum over contexts of |deviation|^2` to the
  loss (with shrinkage = lambda / N, a Gaussian prior on each group's deviation), so a
  context with few examples stays near the shared network and a large one moves freely;
- optionally (`shared_l2`), the shared network's kernels get an L2 penalty of their own.

Kinds (GeneratorConfig.kind):
- "film": per hidden unit, a scale and a shift of the shared network's pre-activation
  (FiLM; PEPNet, KDD 2023; STAR, CIKM 2021), and a per-context deviation of the output
  layer: random intercepts and slopes on the last hidden features.
- "lowrank": the first layer's kernel (or every layer's: `rank_layers`) W0 + A(c) B(c)^T
  of rank `rank`, and a deviation of every bias (APG, NeurIPS 2022).
Both apply directly to a batch (from each example's conditioning row, never its full
parameter set) and also emit full parameter vectors, for materialization.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import tensorflow as tf

from trainer.hypernet.functional_target import activation
from trainer.hypernet.generator import GeneratorConfig, ParameterGenerator
from trainer.hypernet.target_spec import TargetSpec


class PooledGenerator(ParameterGenerator):
    """Shared target variables plus a bias-free linear map: conditioning -> deviation."""

    pooled = True
    applies_directly = True
    # A name scope for the map's kernel: a kind whose columns changed layout names its
    # kernel anew, so warm start never copies a base model's kernel of the old layout
    # (warm_start.py matches variables by name).
    kernel_scope = ""

    def __init__(self, spec: TargetSpec, config: GeneratorConfig, **kwargs: object):
        super().__init__(spec, config, **kwargs)
        self.shared = []
        decay = tf.keras.regularizers.L2(config.shared_l2) if config.shared_l2 else None
        for p in spec.params():
            last = p.name.startswith(f"dense_{spec.num_layers - 1}/")
            std = math.sqrt((1.0 if last else spec.gain) / p.fan_in)
            init = "zeros" if p.is_bias else tf.keras.initializers.RandomNormal(stddev=std)
            self.shared.append(self.add_weight(name=f"shared/{p.name}", shape=p.shape,
                                               initializer=init,
                                               regularizer=None if p.is_bias else decay))
        self.sizes = self.deviation_sizes()
        self.to_deviation = tf.keras.layers.Dense(
            sum(self.sizes), use_bias=False, name="deviation",
            kernel_initializer=self.deviation_initializer())

    # -- what a kind defines -------------------------------------------------------------
    def deviation_sizes(self) -> list[int]:
        raise NotImplementedError

    def deviation_initializer(self) -> tf.keras.initializers.Initializer:
        """Zero: every context starts as the shared network."""
        return tf.keras.initializers.Zeros()

    # -- the contract ----------------------------------------------------------------
    def deviation(self, conditioning: tf.Tensor) -> tf.Tensor:
        """[U, d] -> [U, D]: zero for zero conditioning (the shared network). The kernel is
        built by _deviation_kernel whichever path runs first, so it is named the same."""
        return tf.matmul(conditioning, self._deviation_kernel(conditioning))

    def parts(self, conditioning: tf.Tensor) -> list[tf.Tensor]:
        return list(tf.split(self.deviation(conditioning), self.sizes, axis=-1))

    def _deviation_kernel(self, conditioning: tf.Tensor) -> tf.Tensor:
        """The map's [d, D] kernel, built from the conditioning's width on first use."""
        if not self.to_deviation.built:
            with tf.name_scope(self.kernel_scope) if self.kernel_scope else contextlib.nullcontext():
                self.to_deviation.build(conditioning.shape)
        return self.to_deviation.kernel

    def parts_per_example(self, conditioning: tf.Tensor, index: tf.Tensor) -> list[tf.Tensor]:
        """Each example's deviation, part by part: its conditioning row times each part's
        slice of the map (no [B, D] tensor split apart, whose gradient is a concat)."""
        rows = tf.gather(conditioning, index)
        return [tf.matmul(rows, k)
                for k in tf.split(self._deviation_kernel(conditioning), self.sizes, axis=1)]

    def penalty(self, rows: tf.Tensor) -> tf.Tensor:
        """sum over rows of |deviation(row)|^2, as sum((R^T R) * (K K^T)) for the bias-free
        map K: two [d, d] products instead of a [rows, D] matrix every step."""
        kernel = self._deviation_kernel(rows)
        return tf.reduce_sum(tf.matmul(rows, rows, transpose_a=True)
                             * tf.matmul(kernel, kernel, transpose_b=True))


class FilmGenerator(PooledGenerator):
    """Kind "film": per-unit scale and shift of each hidden layer, and a deviation of the
    output layer (its kernel and bias) per context."""

    def deviation_sizes(self) -> list[int]:
        s = self.spec
        last_in = s.layer_widths[-2]
        return [2 * u for u in s.hidden_units] + [last_in * s.output_dim + s.output_dim]

    def call(self, conditioning: tf.Tensor) -> tf.Tensor:
        """Flat parameters [U, num_params]: the scales folded into the shared kernels."""
        s, parts, flat = self.spec, self.parts(conditioning), []
        for layer, units in enumerate(s.hidden_units):
            gamma, beta = tf.split(parts[layer], 2, axis=-1)
            kernel, bias = self.shared[2 * layer], self.shared[2 * layer + 1]
            flat.append(tf.reshape(kernel[None] * (1.0 + gamma)[:, None, :], [-1, kernel.shape[0] * units]))
            flat.append(bias[None] * (1.0 + gamma) + beta)
        d_kernel, d_bias = self._output_deviation(parts[-1])
        flat.append(tf.reshape(self.shared[-2][None] + d_kernel, [-1, self.shared[-2].shape.num_elements()]))
        flat.append(self.shared[-1][None] + d_bias)
        return tf.concat(flat, axis=-1)

    def apply_direct(self, x: tf.Tensor, conditioning: tf.Tensor, index: tf.Tensor,
                     return_logits: bool = False, first_shift: tf.Tensor | None = None) -> tf.Tensor:
        s, parts, h = self.spec, self.parts_per_example(conditioning, index), x
        for layer in range(len(s.hidden_units)):
            gamma, beta = tf.split(parts[layer], 2, axis=-1)
            z = tf.matmul(h, self.shared[2 * layer]) + self.shared[2 * layer + 1]
            z = z * (1.0 + gamma) + beta
            if layer == 0 and first_shift is not None:
                z += first_shift
            h = activation(s.activation)(z)
        d_kernel, d_bias = self._output_deviation(parts[-1])
        # h [B, in] through each example's own [in, out]: a broadcast product and a sum
        # (an einsum ran it as B tiny matrix products).
        z = (tf.matmul(h, self.shared[-2]) + self.shared[-1]
             + tf.reduce_sum(h[:, :, None] * d_kernel, axis=1) + d_bias)
        return z if return_logits else activation(s.head)(z)

    def _output_deviation(self, part: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        last_in, out = self.spec.layer_widths[-2], self.spec.output_dim
        d_kernel, d_bias = tf.split(part, [last_in * out, out], axis=-1)
        return tf.reshape(d_kernel, [-1, last_in, out]), d_bias


class LowRankGenerator(PooledGenerator):
    """Kind "lowrank": kernels W0 + A(c) B(c)^T of rank `config.rank` (the first layer's, or
    every layer's: `config.rank_layers`), each bias b0 + d(c).

    The map's columns hold, layer by layer, A rank-major ([r, in]: row k of the map,
    reshaped [d r, in], is K_A with no transpose), then B the same way ([r, out]), then
    the bias deviation; a layer without a rank deviation has only the last. The training
    step multiplies by them as stored: an [in, r] layout cost a transpose of K_A and K_B
    every step, forward and backward (docs/performance.md, "Its transposes").
    """

    kernel_scope = "rank_major"  # until 2026-12-07 the blocks were [in, r], the kernel unscoped

    @property
    def ranked_layers(self) -> int:
        """How many layers, from the input, have a rank deviation of their kernel."""
        return 1 if self.config.rank_layers == "first" else self.spec.num_layers

    def by_layer(self, items: list[Any]) -> list[tuple[Any, Any, Any]]:
        """A flat per-part list (sizes, parts, kernel slices) as (A, B, bias) per layer;
        A and B None where the layer's kernel has no deviation."""
        grouped, i = [], 0
        for layer in range(self.spec.num_layers):
            if layer < self.ranked_layers:
                grouped.append((items[i], items[i + 1], items[i + 2]))
                i += 3
            else:
                grouped.append((None, None, items[i]))
                i += 1
        return grouped

    def deviation_sizes(self) -> list[int]:
        r, widths, sizes = self.config.rank, self.spec.layer_widths, []
        for layer, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
            sizes += [r * fan_in, r * fan_out, fan_out] if layer < self.ranked_layers else [fan_out]
        return sizes

    def deviation_initializer(self) -> Any:
        """A random, B and the bias deviation zero: A B^T = 0, yet B gets gradients. A's
        values are drawn [d, in, r], as before the rank-major layout, so a seed gives the
        model it gave then."""
        r, fan_ins = self.config.rank, self.spec.layer_widths[:-1]

        def init(shape: tuple[int, ...], dtype: tf.DType | None = None, **_: object) -> tf.Tensor:
            columns = []
            for fan_in, (a, b, bias) in zip(fan_ins, self.by_layer(self.sizes)):
                if a is not None:
                    std = 1.0 / math.sqrt(max(1, shape[0]) * r)
                    drawn = tf.random.normal([shape[0], fan_in, r], stddev=std)
                    columns += [tf.reshape(tf.transpose(drawn, [0, 2, 1]), [shape[0], a])]
                columns.append(tf.zeros([shape[0], (b or 0) + bias]))
            return tf.cast(tf.concat(columns, axis=1), dtype or tf.float32)

        return init

    def call(self, conditioning: tf.Tensor) -> tf.Tensor:
        """Flat parameters [U, num_params]: each kernel W0 + A B^T (A [U, r, in] and
        B [U, r, out], rank-major) or W0 where it has no deviation; each bias b0 + d."""
        r, widths, flat = self.config.rank, self.spec.layer_widths, []
        rows = tf.shape(conditioning)[0]
        for layer, (a, b, d_bias) in enumerate(self.by_layer(self.parts(conditioning))):
            kernel = self.shared[2 * layer]
            if a is None:
                flat.append(tf.tile(tf.reshape(kernel, [1, -1]), [rows, 1]))
            else:
                a = tf.reshape(a, [-1, r, widths[layer]])
                b = tf.reshape(b, [-1, r, widths[layer + 1]])
                flat.append(tf.reshape(kernel[None] + tf.einsum("uri,uro->uio", a, b), [rows, -1]))
            flat.append(self.shared[2 * layer + 1][None] + d_bias)
        return tf.concat(flat, axis=-1)

    def apply_direct(self, x: tf.Tensor, conditioning: tf.Tensor, index: tf.Tensor,
                     return_logits: bool = False, first_shift: tf.Tensor | None = None) -> tf.Tensor:
        """Each example's A(c) and B(c) are never formed. With e its conditioning row and
        K the map's kernel, h A(c) = sum_k e_k (h K_A[k]) is one [B, in] x [in, d r]
        product (K_A stored [d r, in], transposed inside the multiply), and
        (h A(c)) B(c)^T = (e (x) h A(c)) K_B one [B, d r] x [d r, out]: the per-example
        [B, in, r] and [B, out, r] tensors (and their gradients) cost taxi's lowrank step
        about a quarter of its time. A layer without a rank deviation adds only e K_bias."""
        s, r, h = self.spec, self.config.rank, x
        e = tf.gather(conditioning, index)  # [B, d]
        d, batch = conditioning.shape[-1], tf.shape(x)[0]  # d may be 0 (static): no -1 in a reshape
        kernels = tf.split(self._deviation_kernel(conditioning), self.sizes, axis=1)
        for layer, (k_a, k_b, k_bias) in enumerate(self.by_layer(kernels)):
            fan_in, fan_out = s.layer_widths[layer], s.layer_widths[layer + 1]
            z = tf.matmul(h, self.shared[2 * layer]) + self.shared[2 * layer + 1] + tf.matmul(e, k_bias)
            if layer == 0 and first_shift is not None:
                z += first_shift
            if k_a is not None:
                projected = tf.matmul(h, tf.reshape(k_a, [d * r, fan_in]), transpose_b=True)
                h_a = tf.reduce_sum(tf.reshape(projected, [batch, d, r]) * e[:, :, None], axis=1)
                z += tf.matmul(tf.reshape(e[:, :, None] * h_a[:, None, :], [batch, d * r]),
                               tf.reshape(k_b, [d * r, fan_out]))
            h = activation(s.activation)(z) if layer < s.num_layers - 1 else z
        return h if return_logits else activation(s.head)(h)
