"""hypernet-tfx trainer: the hypernetwork library and the TFX Trainer/Transform modules."""
