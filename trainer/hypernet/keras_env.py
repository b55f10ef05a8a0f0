"""Keras 2 guard: TFT's TransformFeaturesLayer is a tf_keras model, so ours must be too.

TFX/TFMA touch `tf.keras` at import time; unless TF_USE_LEGACY_KERAS=1 was exported
before TensorFlow was imported, `tf.keras` silently becomes Keras 3 and mixing it
with the TFT layer fails far from the cause. Fail here, early and clearly.
"""

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import tensorflow as tf


def require_legacy_keras() -> None:
    """Raise if this process's `tf.keras` is not Keras 2 (tf_keras)."""
    implementation = tf.keras.Model.__module__.split(".")[0]
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1" or implementation != "tf_keras":
        raise RuntimeError(
            "hypernet-tfx needs Keras 2: export TF_USE_LEGACY_KERAS=1 before TensorFlow is "
            f"imported (found TF_USE_LEGACY_KERAS={os.environ.get('TF_USE_LEGACY_KERAS')!r}, "
            f"tf.keras from {implementation!r})."
        )


# Every tensor-dependent branch in this package is an explicit tf.cond, so nothing needs
# AutoGraph's source rewriting. Left on, it transpiles our layers and Keras's own step,
# loss, metric and optimizer code at every trace: most of the Trainer's first epoch and of
# each SavedModel export (bench/pipeline_vs_template.py times the components).
_F = TypeVar("_F", bound=Callable[..., Any])


def without_autograph(fn: _F) -> _F:
    """`fn` traced as written, never rewritten by AutoGraph."""
    return cast(_F, tf.autograph.experimental.do_not_convert(fn))


class GraphModel(tf.keras.Model):
    """A Keras model whose fit/evaluate/predict steps (and all they call) skip AutoGraph."""

    @without_autograph
    def train_step(self, data: Any) -> Any:
        return super().train_step(data)

    @without_autograph
    def test_step(self, data: Any) -> Any:
        return super().test_step(data)

    @without_autograph
    def predict_step(self, data: Any) -> Any:
        return super().predict_step(data)


@contextlib.contextmanager
def without_keras_traces() -> Iterator[None]:
    """tf.saved_model.save without tf_keras's extra traces of every layer's call.

    Those traces (the "keras_api" functions and a default signature, for reloading
    as Keras) cost seconds per export, and nothing here reloads a model as Keras:
    TFMA, serving and warm start use the signatures and the variables. It is what
    `model.save(..., save_traces=False)` sets, without writing the Keras format.
    """
    from tf_keras.src.saving.legacy.saved_model import utils

    with utils.keras_option_scope(save_traces=False,
                                  in_tf_saved_model_scope=utils.in_tf_saved_model_scope()):
        yield
