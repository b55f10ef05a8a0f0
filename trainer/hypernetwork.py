"""The composite model: (context, features) -> prediction, with generated target weights.

Inputs are a dict: "features" [B, input_dim] float32, plus one entry per context
feature (categorical: integer ids in [0, vocab); numeric: floats), shaped [B] or
[B, 1]. The generator runs once per possible context when there are few, else once
per *distinct* context row of the batch; each example then uses its context's
parameters. `materialize()` turns the parameters
of one context into an ordinary Keras model with identical outputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

from trainer.functional_target import apply_target, build_target_model, split_params
from trainer.generator import ContextEncoder, ContextSpec, GeneratorConfig, WeightGenerator
from trainer.keras_env import GraphModel, require_legacy_keras
from trainer.target_spec import TargetSpec

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
        **kwargs,
    ):
        require_legacy_keras()
        super().__init__(**kwargs)
        self.target = target
        self.context = context
        self.generator_config = generator or GeneratorConfig()
        self.encoder = ContextEncoder(context, name="context_encoder")
        self.generator = WeightGenerator(target, self.generator_config, name="weight_generator")

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
        target runs partitioned by context (trainer/functional_target.py).
        """
        bound = self.context.max_distinct
        return bound is not None and not self.context.is_static and bound <= PARTITION_LIMIT

    def generate_for_batch(self, inputs: Mapping[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        """(flat parameters [U, num_params], index [B] into them): U is every possible
        context when they are few, else the batch's distinct contexts."""
        rows = self.context_rows(inputs)
        if rows is None:
            batch = tf.shape(inputs[FEATURES])[0]
            return self.generator(self.encoder(None)), tf.zeros([batch], tf.int32)
        if self.enumerates_contexts:
            sizes = [int(self.context.categorical[n]) for n in self.context.names]
            every = np.indices(sizes).reshape(len(sizes), -1).T  # row-major: id = flat index
            strides = np.cumprod([1, *sizes[:0:-1]])[::-1].astype(np.float32)
            index = tf.cast(tf.linalg.matvec(rows, tf.constant(strides)), tf.int32)
            return self.generator(self.encoder(tf.constant(every, tf.float32))), index
        unique, index = tf.raw_ops.UniqueV2(x=rows, axis=tf.constant([0], tf.int64),
                                            out_idx=tf.int32)
        return self.generator(self.encoder(unique)), index

    def call(self, inputs: Mapping[str, tf.Tensor], return_logits: bool = False) -> tf.Tensor:
        flat, index = self.generate_for_batch(inputs)
        x = tf.cast(inputs[FEATURES], tf.float32)
        return apply_target(self.target, x, split_params(self.target, flat), index, return_logits,
                            contexts=self.context.max_distinct if self.enumerates_contexts
                            else None)

    # -- one context at a time ----------------------------------------------
    def generated_weights(self, context: Mapping[str, float] | None = None) -> list[np.ndarray]:
        """The target's parameter tensors for one context, in `get_weights()` order."""
        context = dict(context or {})
        unknown = set(context) - set(self.context.names)
        missing = set(self.context.names) - set(context)
        if unknown or missing:
            raise ValueError(
                f"context must give exactly {list(self.context.names)}; "
                f"missing {sorted(missing)}, unknown {sorted(unknown)}")
        inputs = {n: tf.constant([context[n]]) for n in self.context.names}
        inputs[FEATURES] = tf.zeros([1, self.target.input_dim])
        flat, index = self.generate_for_batch(inputs)
        return [t[int(index[0])].numpy() for t in split_params(self.target, flat)]

    def materialize(self, context: Mapping[str, float] | None = None,
                    name: str = "target_network") -> tf.keras.Model:
        """An ordinary Keras target model with this context's generated weights set."""
        model = build_target_model(self.target, name=name)
        model.set_weights(self.generated_weights(context))
        return model
