"""The process environment every entry point needs, set before TensorFlow is imported.

Import this module first (`import pipeline.environment`), before anything that may import
TensorFlow, TFX or Beam:
- TF_USE_LEGACY_KERAS=1: `tf.keras` must be Keras 2 (tf_keras), as TFT's layer is; once
  TensorFlow is imported the choice is made (trainer/hypernet/keras_env.py checks it).
- NO_GCE_CHECK=true: google-auth's metadata probe waits on a network this may not have.
- TF_CPP_MIN_LOG_LEVEL: TensorFlow's C++ chatter, unless the caller chose a level.
Processes we do not start (the TFX CLI's, Kubeflow's container) get the same variables from
the Makefile, the Dockerfile and the tests' conftest.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
