"""Names shared by Transform and Trainer: what each raw column becomes after Transform."""

from __future__ import annotations

from pipeline.configs import PipelineConfig

OOV_BUCKETS = 1
SHARED_VOCAB = "vocab_categorical"  # "column=value" tokens of every non-context categorical


def transformed_name(raw: str) -> str:
    return f"{raw}_xf"


def missing_name(raw: str) -> str:
    """0/1 indicator that a numeric value was absent and filled with the training mean."""
    return f"{raw}_missing"


def vocab_filename(raw: str) -> str:
    return f"vocab_{raw}"


def own_vocabulary_columns(config: PipelineConfig) -> list[str]:
    """Categorical contexts: each value is a row of the generator's embedding."""
    return [c for c in config.features.categorical if c in config.context]


def shared_vocabulary_columns(config: PipelineConfig) -> list[str]:
    """Every other categorical column: ids in one shared vocabulary (SHARED_VOCAB)."""
    return [c for c in config.features.categorical if c not in config.context]


def bucket_name(raw: str) -> str:
    """The categorical feature holding a numeric feature's quantile bucket."""
    return f"{raw}_bucket"


def numeric_inputs(config: PipelineConfig) -> list[str]:
    """Transformed float features fed to the target network, in a fixed order."""
    names: list[str] = []
    for raw in (*config.features.log_numeric, *config.features.numeric):
        if raw in config.context:
            continue
        names += [transformed_name(raw), missing_name(raw)]
    return names


def categorical_inputs(config: PipelineConfig) -> list[str]:
    """Categorical features (raw columns, then numeric features' buckets) one-hot encoded
    into the target network's input."""
    names = [c for c in config.features.categorical if c not in config.context]
    return names + [bucket_name(c) for c in config.features.bucketized if c not in config.context]
