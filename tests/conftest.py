"""Test process set-up: Keras 2 and no cloud probes, before anything imports TensorFlow."""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
