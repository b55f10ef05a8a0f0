"""Custom TFX components of hypernet-tfx."""
