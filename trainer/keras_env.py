"""Keras 2 guard: TFT's TransformFeaturesLayer is a tf_keras model, so ours must be too.

TFX/TFMA touch `tf.keras` at import time; unless TF_USE_LEGACY_KERAS=1 was exported
before TensorFlow was imported, `tf.keras` silently becomes Keras 3 and mixing it
with the TFT layer fails far from the cause. Fail here, early and clearly.
"""

import os

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
