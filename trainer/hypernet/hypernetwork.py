"""The composite model: (context, features) -> prediction, with generated target weights.

Why one place for this: it alone decides how many parameter sets to generate for a
batch and which `functional_target.apply_*` runs the target on them, so the
generator kinds and the target functions never need to know about batches.

Inputs are a dict: "features" [B, input_dim] float32, plus one entry per context
feature (categorical: integer ids in [0, vocab); numeric: floats), shaped [B] or
[B, 1]. The generator runs once per possible context when there are few, else once
per *distinct* context row of the batch; each example then uses its context's
parameters. Each categorical context feature also has an output intercept per id,
fitted after training in closed form (trainer/hypernet/intercepts.py), zero until
then. With `GeneratorConfig.context_shift`, each categorical id also shifts the first
hidden layer's pre-activation by a free vector of its own. `materialize()` turns the
parameters of one context into an ordinary Keras model with identical outputs
(trainer/hypernet/materialize.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.hypernet.context import ContextEncoder, ContextSpec, safe_name, without_oov_row
from trainer.hypernet.functional_target import (
    activation,
    apply_indexed,
    apply_partitioned,
    split_params,
)
from trainer.hypernet.generator import GeneratorConfig
from trainer.hypernet.keras_env import GraphModel, require_legacy_keras
from trainer.hypernet.kinds import make_generator
from trainer.hypernet.target_spec import TargetSpec

FEATURES = "features"
# Up to this many possible contexts, parameters are generated for every one of them and
# each context's examples go through their own layers (empty parts cost next to nothing).
PARTITION_LIMIT = 32


class HyperNetwork(GraphModel):
    """A hypernetwork whose only trainable variables are the generator's."""

    def __init__(
        self,
        target: TargetSpec,
        context: ContextSpec,
        generator: GeneratorConfig | None = None,
        **kwargs: Any,
    ):
        require_legacy_keras()
        super().__init__(**kwargs)
        self.target = target
        self.context = context
        self.generator_config = generator or GeneratorConfig()
        self.generator = make_generator(self.generator_config.kind, target,
                                        self.generator_config, name="weight_generator")
        # Pooled kinds: small embeddings, so deviations grow slowly from the shared network
        # and early stopping sees the pooled fit before the per-group ones.
        self.encoder = ContextEncoder(context, constant=not self.generator.pooled,
                                      stddev=0.1 if self.generator.pooled else 1.0,
                                      name="context_encoder")
        # Pooled kinds, `context_shift`: per categorical context feature, a free shift of the
        # first hidden pre-activation per id, zero at the start and for the OOV id.
        self.shifts = {}
        if self.generator.pooled and self.generator_config.context_shift and target.hidden_units:
            self.shifts = {
                name: self.add_weight(name=f"shift_{safe_name(name)}",
                                      shape=(int(size), target.hidden_units[0]),
                                      initializer="zeros")
                for name, size in context.categorical.items()}
        if self.generator.pooled and not context.is_static and (
                self.generator_config.shrinkage or self.generator_config.shift_shrinkage):
            self.add_loss(self.pooling_penalty)  # a callable: read at every training step
        # Regression: the target network predicts a standardised label; prediction =
        # shift + scale * its output. Set from the training labels (set_output_affine),
        # saved with the model, folded into the last layer when materialized.
        self.output_affine = self.add_weight(
            name="output_affine", shape=(2,), trainable=False,
            initializer=tf.keras.initializers.Constant([1.0, 0.0]))
        # Per categorical context feature, an output offset per id, on the logit scale
        # (regression: the prediction's): set after training (set_intercepts), never by
        # gradients; the out-of-vocabulary id's stays 0 (the shared network's output).
        self.intercepts = {
            name: self.add_weight(name=f"intercept_{safe_name(name)}",
                                  shape=(int(size), target.output_dim), trainable=False,
                                  initializer="zeros")
            for name, size in context.categorical.items()}

    # -- context handling -------------------------------------------------
    def context_rows(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor | None:
        """[B, n_context] float32 (ids are exact below 2**24), or None when static."""
        if self.context.is_static:
            return None
        missing = [n for n in self.context.names if n not in inputs]
        if missing:
            raise ValueError(
                f"context feature(s) {missing} missing from the model input "
                f"(got {sorted(inputs)})")
        cols = [tf.reshape(tf.cast(inputs[n], tf.float32), [-1]) for n in self.context.names]
        return tf.stack(cols, axis=1)

    @property
    def enumerates_contexts(self) -> bool:
        """Few possible contexts (categorical, <= PARTITION_LIMIT): generate for all of them.

        Then a context's id is its row, with no de-duplication of the batch, and the
        target runs partitioned by context (`functional_target.apply_partitioned`).
        """
        bound = self.context.max_distinct
        return bound is not None and not self.context.is_static and bound <= PARTITION_LIMIT

    def conditioning_for_batch(self, inputs: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(conditioning [U, d], index [B] into it): U is every possible context when they
        are few, else the batch's distinct contexts (1 for a static hypernetwork)."""
        rows, index = self.contexts_for_batch(inputs)
        return self.encoder(rows), index

    def contexts_for_batch(self, inputs: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor | None, tf.Tensor]:
        """(context rows [U, n_context] or None when static, index [B] into them)."""
        rows = self.context_rows(inputs)
        if rows is None:
            return None, tf.zeros([tf.shape(inputs[FEATURES])[0]], tf.int32)
        if self.enumerates_contexts:
            sizes = [int(self.context.categorical[n]) for n in self.context.names]
            every = np.indices(sizes).reshape(len(sizes), -1).T  # row-major: id = flat index
            strides = np.cumprod([1, *sizes[:0:-1]])[::-1].astype(np.float32)
            index = tf.cast(tf.linalg.matvec(rows, tf.constant(strides)), tf.int32)
            return tf.constant(every, tf.float32), index
        unique, index = tf.raw_ops.UniqueV2(x=rows, axis=tf.constant([0], tf.int64),
                                            out_idx=tf.int32)
        return unique, index

    def generate_for_batch(self, inputs: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(flat parameters [U, num_params], index [B] into them), as conditioning_for_batch;
        the context shifts are in the first hidden layer's bias."""
        rows, index = self.contexts_for_batch(inputs)
        flat = self.generator(self.encoder(rows))
        if not self.shifts or rows is None:
            return flat, index
        names = list(self.context.names)
        shift = self.summed_shifts({name: rows[:, names.index(name)] for name in self.shifts})
        width = self.target.hidden_units[0]
        start = self.target.input_dim * width  # the first bias follows the first kernel
        return tf.concat([flat[:, :start], flat[:, start:start + width] + shift,
                          flat[:, start + width:]], axis=1), index

    def pooling_penalty(self) -> tf.Tensor:
        """shrinkage * the sum over every context value of its squared deviation, plus
        shift_shrinkage * the sum of its squared shifts."""
        c = self.generator_config
        penalty = c.shrinkage * self.generator.penalty(self.encoder.pooling_rows())
        for name in self.shifts:
            penalty += c.shift_shrinkage * tf.reduce_sum(tf.square(self.shift_table(name)))
        return penalty

    def shift_table(self, name: str) -> tf.Tensor:
        """A context feature's shifts [vocab, first hidden width], the OOV id's pinned to 0
        (an unseen value gets exactly the shared network)."""
        return without_oov_row(self.shifts[name], self.context.oov_ids.get(name))

    def summed_shifts(self, ids: Mapping[str, tf.Tensor]) -> tf.Tensor | None:
        """[rows, first hidden width]: each row's shifts summed over the context features,
        from each feature's ids [rows] (None without shifts)."""
        if not self.shifts:
            return None
        return tf.add_n([tf.gather(self.shift_table(name), tf.cast(tf.reshape(ids[name], [-1]), tf.int32))
                         for name in self.shifts])

    def set_output_affine(self, scale: float, shift: float) -> None:
        """prediction = shift + scale * the target's output (a linear head only)."""
        if self.target.head != "linear":
            raise ValueError(f"an output affine needs a linear head, not {self.target.head!r}")
        self.output_affine.assign([scale, shift])

    def set_intercepts(self, tables: Mapping[str, Any]) -> None:
        """Each categorical context feature's offsets ([vocab] or [vocab, output_dim])."""
        values = {}
        for name, table in tables.items():
            if name not in self.intercepts:
                raise ValueError(f"no intercepts for {name!r}: categorical contexts are "
                                 f"{sorted(self.intercepts)}")
            variable = self.intercepts[name]
            value = np.asarray(table, np.float32)
            if value.size != variable.shape.num_elements():
                raise ValueError(f"intercepts for {name!r}: {value.shape} values, the "
                                 f"vocabulary needs {tuple(variable.shape)}")
            values[name] = value.reshape(variable.shape)
        for name, value in values.items():
            self.intercepts[name].assign(value)

    def intercept_offsets(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """[B, output_dim]: each example's offsets summed over the context features."""
        return tf.add_n([tf.gather(table, tf.cast(tf.reshape(inputs[name], [-1]), tf.int32))
                         for name, table in self.intercepts.items()])

    def call(self, inputs: Mapping[str, tf.Tensor], return_logits: bool = False) -> tf.Tensor:
        if not self.intercepts:
            return self._scaled(self._target_output(inputs, return_logits))
        z = self._scaled(self._target_output(inputs, True)) + self.intercept_offsets(inputs)
        return z if return_logits else activation(self.target.head)(z)

    def _scaled(self, out: tf.Tensor) -> tf.Tensor:
        """A linear head's output through the output affine (the label's scale)."""
        if self.target.head != "linear":
            return out
        return self.output_affine[1] + self.output_affine[0] * out

    def _target_output(self, inputs: Mapping[str, tf.Tensor], return_logits: bool) -> tf.Tensor:
        x = tf.cast(inputs[FEATURES], tf.float32)
        if self.generator.applies_directly:
            conditioning, index = self.conditioning_for_batch(inputs)
            return self.generator.apply_direct(x, conditioning, index, return_logits,
                                               first_shift=self.summed_shifts(inputs))
        flat, index = self.generate_for_batch(inputs)
        params = split_params(self.target, flat)
        if self.enumerates_contexts:
            return apply_partitioned(self.target, x, params, index,
                                     int(self.context.max_distinct or 1), return_logits)
        # Distinct contexts of the batch; a static hypernetwork too (one set, index all 0):
        # apply_shared would compute the same, but not with the same ops, bit for bit.
        return apply_indexed(self.target, x, params, index, return_logits)

    # -- one context at a time (trainer/hypernet/materialize.py) ------------
    def generated_weights(self, context: Mapping[str, float] | None = None) -> list[Any]:
        """The target's parameter tensors for one context, in `get_weights()` order."""
        from trainer.hypernet.materialize import generated_weights

        return generated_weights(self, context)

    def materialize(self, context: Mapping[str, float] | None = None,
                    name: str = "target_network") -> tf.keras.Model:
        """An ordinary Keras target model with this context's generated weights set."""
        from trainer.hypernet.materialize import materialize

        return materialize(self, context, name)
