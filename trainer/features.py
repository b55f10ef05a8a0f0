"""Names shared by Transform and Trainer: what each raw column becomes after Transform."""

from __future__ import annotations

from pipeline.configs import PipelineConfig

OOV_BUCKETS = 1


def transformed_name(raw: str) -> str:
    return f"{raw}_xf"


def missing_name(raw: str) -> str:
    """0/1 indicator that a numeric value was absent and filled with the training mean."""
    return f"{raw}_missing"


def vocab_filename(raw: str) -> str:
    return f"vocab_{raw}"


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
