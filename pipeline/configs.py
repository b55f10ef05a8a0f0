"""The one source of configuration: a YAML file loaded into typed, validated dataclasses.

A user with their own CSV writes a YAML file like `pipeline/taxi.yaml` and points
HYPERNET_CONFIG (or `--config`) at it; no Python changes. The loaded config travels
to Transform and Trainer inside the pipeline (custom_config), so every component
sees the same values.

This module (with pipeline/config_sections.py, its sections, re-exported here) is the
bottom layer: it imports nothing else of ours, and everything above it (the hypernetwork
library, the TFX modules, components, the DAG) reads its names from here, the gate-metric
table and the artifact file names included.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from pipeline.config_sections import (  # noqa: F401 - re-exported: readers import from here
    DEFAULT_CANDIDATES,
    DISTRIBUTIONS,
    GATE_METRICS,
    GENERATORS,
    GRID_DEFAULTS,
    HISTORY_FILE,
    MANIFEST_FILE,
    POOLED_GENERATORS,
    RANK_LAYERS,
    REPORT_FILE,
    RUNS_FILE,
    TASKS,
    TRANSFORM_SIGNATURE,
    VERDICT_FILE,
    WEIGHTS_FILE,
    BeamConfig,
    Candidate,
    ConfigError,
    FeaturesConfig,
    GateMetric,
    GatesConfig,
    LabelConfig,
    LabelRule,
    ModelConfig,
    SplitsConfig,
    TargetNetworksConfig,
    TrainingConfig,
    gate_metrics_of,
)

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(PACKAGE_DIR, "taxi.yaml")
CONFIG_ENV = "HYPERNET_CONFIG"

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]*$")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    name: str
    data_root: str
    label: LabelConfig
    features: FeaturesConfig
    context: tuple[str, ...] = ()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    splits: SplitsConfig = SplitsConfig()
    gates: GatesConfig = GatesConfig()
    beam: BeamConfig = BeamConfig()
    target_networks: TargetNetworksConfig = TargetNetworksConfig()
    output_dir: str = "."
    enable_cache: bool = True
    # Curated schema to validate against (ImportSchemaGen); None infers one (SchemaGen).
    schema_file: str | None = None
    # Data arriving in spans: files matching this pattern under data_root ({SPAN} = 1, 2, ...).
    # Used when such files exist; otherwise data_root is read as one plain folder.
    span_pattern: str | None = "span-{SPAN}/*.csv"
    num_spans: int = 1  # the latest span, or a rolling window of the last N
    source: str = "<dict>"

    def __post_init__(self) -> None:
        if self.gates.metric is None and self.label.task in TASKS:  # the task's first
            object.__setattr__(self, "gates", dataclasses.replace(
                self.gates, metric=gate_metrics_of(self.label.task)[0]))
        self.validate()

    # -- derived views -------------------------------------------------------
    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_dir, "tfx_pipeline_output", self.name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.output_dir, "tfx_metadata", self.name, "metadata.db")

    @property
    def serving_model_dir(self) -> str:
        return os.path.join(self.pipeline_root, "serving_model")

    @property
    def serving_target_networks_dir(self) -> str:
        """Pushed target networks: <this>/<version>, the hypernetwork's push version."""
        return os.path.join(self.pipeline_root, "serving_target_networks")

    @property
    def uses_spans(self) -> bool:
        """Whether files matching span_pattern exist under data_root (else: one plain folder).

        Listed through tf.io.gfile, so a gs:// data_root is looked at, not assumed. A
        remote root that cannot be listed here (a Kubeflow spec compiled without the
        bucket's credentials) is taken as spans, as configured, with a warning;
        `span_pattern: null` declares a plain folder.
        """
        if not self.span_pattern:
            return False
        import tensorflow as tf

        pattern = os.path.join(self.data_root, self.span_pattern.replace("{SPAN}", "*"))
        try:
            return bool(tf.io.gfile.glob(pattern))
        except tf.errors.OpError as e:
            if not _is_remote(self.data_root):
                raise
            logging.getLogger(__name__).warning(
                "%s: cannot list data_root %s (%s); reading it as spans %r (set span_pattern: "
                "null for a plain folder)", self.source, self.data_root, e.message,
                self.span_pattern)
            return True

    def spans(self) -> list[int]:
        """Span numbers present under data_root (any filesystem tf.io.gfile reads), ascending."""
        if not self.span_pattern:
            return []
        import tensorflow as tf

        span_dir = self.span_pattern.split("/")[0]
        regex = re.compile("^" + re.escape(span_dir).replace(re.escape("{SPAN}"), r"(\d+)") + "$")
        # Object stores list a folder as "span-1/".
        found = (regex.match(name.rstrip("/")) for name in tf.io.gfile.listdir(self.data_root))
        return sorted(int(m[1]) for m in found if m)

    @property
    def output_name(self) -> str:
        """The model's output in every signature: "predictions" or "probabilities"."""
        return "predictions" if self.label.task == "regression" else "probabilities"

    @property
    def gate_metric(self) -> GateMetric:
        return GATE_METRICS[(self.label.task, str(self.gates.metric))]

    @property
    def label_only_columns(self) -> tuple[str, ...]:
        """Raw columns used for the label alone: absent from serving requests."""
        return tuple(c for c in self.label.raw_columns if c not in self.features.all)

    @property
    def raw_columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*self.features.all, *self.label.raw_columns)))

    # -- validation ----------------------------------------------------------
    def _fail(self, message: str) -> None:
        raise ConfigError(f"{self.source}: {message}")

    def _validate_per_kind(self, field: str) -> None:
        """model.pooling / model.shared_l2: a list of numbers >= 0 for every pooled kind,
        or a list per pooled kind trained."""
        m = self.model
        values = getattr(m, field)
        if values is None:
            return  # the grid's default
        if isinstance(values, Mapping):
            unknown = sorted(set(values) - set(POOLED_GENERATORS))
            if unknown:
                self._fail(f"model.{field} names {unknown}: it applies to the pooled "
                           f"generator kinds {list(POOLED_GENERATORS)} only")
            lists = {f"model.{field}.{kind}": v for kind, v in values.items()}
        else:
            lists = {f"model.{field}": values}  # by the field that gives them
        for name, strengths in lists.items():
            if not strengths or not _non_negative_numbers(strengths):
                self._fail(f"{name} must be one or more numbers >= 0, got {strengths!r}")
        of_kind = m.pooling_of if field == "pooling" else m.shared_l2_of
        missing = [g for g in m.grid_generators if g in POOLED_GENERATORS and not of_kind(g)]
        if missing:
            self._fail(f"model.{field} gives no strengths for generator {missing}: "
                       f"add {missing[0]}: [0] or a list")

    def _validate_candidates(self) -> None:
        """The models to fit: listed (model.candidates) or a grid, not both; each valid."""
        m = self.model
        if m.candidates and m.grid_given:
            self._fail("model.candidates lists the models one by one; model.generator, "
                       "pooling and shared_l2 cross a grid instead: give one form, not both")
        if m.generator is not None:
            unknown = [g for g in m.generator if g not in GENERATORS]
            if not m.generator or unknown:
                self._fail(f"model.generator {list(m.generator)} must be one or more of "
                           f"{GENERATORS}")
        self._validate_per_kind("pooling")
        self._validate_per_kind("shared_l2")
        for i, c in enumerate(m.candidates):
            where = f"model.candidates[{i}]"
            if c.generator not in GENERATORS:
                self._fail(f"{where}.generator {c.generator!r} must be one of {GENERATORS}")
            if not _non_negative_numbers([c.pooling, c.shared_l2]):
                self._fail(f"{where}: pooling and shared_l2 must be numbers >= 0, got "
                           f"{c.pooling!r} and {c.shared_l2!r}")
            if c.shift_pooling is not None and not _non_negative_numbers([c.shift_pooling]):
                self._fail(f"{where}: shift_pooling must be a number >= 0 (or null for no "
                           f"context shift), got {c.shift_pooling!r}")
            if c.generator not in POOLED_GENERATORS and (
                    c.pooling or c.shared_l2 or c.shift_pooling is not None):
                self._fail(f"{where}: generator {c.generator!r} pools nothing; drop its "
                           f"pooling, shared_l2 and shift_pooling")
        models = m.candidate_models()
        if len(set(models)) < len(models):
            listed = [dataclasses.astuple(c) for c in models]
            self._fail(f"model gives the same candidate twice (generator, pooling, "
                       f"shared_l2, shift_pooling): {listed}")

    def _validate_gate_bounds(self) -> None:
        """A bound must point the metric's way: AUC >= x, MSE <= x; never the reverse."""
        g = self.gates
        if g.metric not in gate_metrics_of(self.label.task):
            return  # reported by validate()
        if self.gate_metric.higher_is_better and g.upper_bound is not None:
            self._fail(f"gates.upper_bound {g.upper_bound} caps {g.metric}, where higher is "
                       f"better: set gates.lower_bound (the least {g.metric} to push) instead")
        if not self.gate_metric.higher_is_better and g.lower_bound is not None:
            self._fail(f"gates.lower_bound {g.lower_bound} would demand an {g.metric} of at "
                       f"least {g.lower_bound}, where lower is better: set gates.upper_bound "
                       f"(the largest {g.metric} to push) instead")
        bound = g.lower_bound if g.lower_bound is not None else g.upper_bound
        if bound is not None and g.metric in ("auc", "accuracy") and not 0.0 <= bound <= 1.0:
            self._fail(f"gates.lower_bound {bound} is outside [0, 1], where {g.metric} lives")
        if bound is not None and g.metric in ("mse", "mae") and bound < 0:
            self._fail(f"gates.upper_bound {bound} is negative: {g.metric} never is")

    def validate(self) -> None:
        if not _NAME.match(self.name):
            self._fail(f"name {self.name!r} must match [a-z0-9][a-z0-9-]* (Kubeflow's rule)")
        if self.label.task not in TASKS:
            self._fail(f"label.task {self.label.task!r} is not one of {TASKS}")
        if bool(self.label.column) == bool(self.label.positive_when):
            self._fail("label needs exactly one of 'column' or 'positive_when'")
        if self.label.positive is not None:
            if self.label.task != "binary" or not self.label.column:
                self._fail("label.positive names the positive value of a binary label column: "
                           "it needs task: binary and label.column")
            object.__setattr__(self, "label", dataclasses.replace(
                self.label, positive=str(self.label.positive)))  # YAML may read yes as True
        if self.label.positive_when:
            if self.label.task != "binary":
                self._fail("label.positive_when derives a binary label; set task: binary")
            try:
                self.label.rule  # noqa: B018 - parse for the error
            except ConfigError as e:
                self._fail(str(e))
        seen: dict[str, str] = {}
        for kind in ("numeric", "log_numeric", "categorical"):
            for name in getattr(self.features, kind):
                if name in seen:
                    self._fail(f"feature {name!r} listed twice (features.{seen[name]} and "
                               f"features.{kind})")
                seen[name] = kind
        if not seen:
            self._fail("no features: list at least one under features.numeric/log_numeric/categorical")
        for name in self.features.bucketized:
            if seen.get(name) not in ("numeric", "log_numeric"):
                self._fail(f"features.bucketized {name!r} is not a numeric or log_numeric feature")
        if self.features.bucketized and self.features.num_buckets < 2:
            self._fail(f"features.num_buckets must be >= 2, got {self.features.num_buckets}")
        if self.label.name in seen or (self.label.column and self.label.column in seen):
            self._fail(f"label {self.label.column or self.label.name!r} is also listed as a feature")
        for name in self.context:
            if name not in seen:
                self._fail(f"context feature {name!r} is not a declared feature "
                           f"(declared: {sorted(seen)})")
        if not set(seen) - set(self.context):
            self._fail("every feature is a context feature: the target network needs inputs")
        if self.gates.metric not in gate_metrics_of(self.label.task):
            self._fail(f"gates.metric {self.gates.metric!r} does not fit task "
                       f"{self.label.task!r}; choose one of {gate_metrics_of(self.label.task)}")
        if self.num_spans < 1:
            self._fail(f"num_spans must be >= 1, got {self.num_spans}")
        if self.span_pattern and "{SPAN}" not in self.span_pattern:
            self._fail(f"span_pattern {self.span_pattern!r} has no {{SPAN}}")
        self._validate_gate_bounds()
        m = self.model
        self._validate_candidates()
        if m.rank < 1:
            self._fail(f"model.rank must be >= 1, got {m.rank}")
        if m.rank_layers not in RANK_LAYERS:
            self._fail(f"model.rank_layers must be one of {list(RANK_LAYERS)}, "
                       f"got {m.rank_layers!r}")
        if not _non_negative_numbers(m.intercept_strengths):
            self._fail("model.intercept_strengths must be numbers >= 0 (or [] for none), "
                       f"got {list(m.intercept_strengths)!r}")
        for split, buckets in self.splits.buckets().items():
            if not isinstance(buckets, int) or buckets < 1:
                self._fail(f"splits.{split} must be a positive number of hash buckets, "
                           f"got {buckets!r}")
        t = self.training
        for field in ("train_steps", "eval_steps", "batch_size", "epochs"):
            value = getattr(t, field)
            if value is not None and value <= 0:
                self._fail(f"training.{field} must be positive, got {value}")
        if not 0.0 < t.lr_plateau_factor <= 1.0:
            self._fail(f"training.lr_plateau_factor must be in (0, 1] (1: no decay), "
                       f"got {t.lr_plateau_factor}")
        if t.lr_plateau_patience < 1:
            self._fail(f"training.lr_plateau_patience must be >= 1, got {t.lr_plateau_patience}")
        if self.gates.anomaly_severity not in (None, "WARNING", "ERROR"):
            self._fail(f"gates.anomaly_severity {self.gates.anomaly_severity!r} is not "
                       "WARNING, ERROR or null")
        if self.beam.direct_running_mode not in ("in_memory", "multi_threading", "multi_processing"):
            self._fail(f"beam.direct_running_mode {self.beam.direct_running_mode!r} is unknown")
        values = self.target_networks.context_values
        for name in values:
            if name not in self.context:
                self._fail(f"target_networks.context_values names {name!r}, not a context feature")
        for name in self.context:
            if name not in self.features.categorical and not values.get(name):
                self._fail(f"target_networks.context_values needs a list of values for the "
                           f"numeric context feature {name!r}")
        if self.target_networks.max_networks < 1:
            self._fail("target_networks.max_networks must be >= 1")
        if self.target_networks.report_slices < 1:
            self._fail("target_networks.report_slices must be >= 1")
        if t.distribution not in DISTRIBUTIONS:
            self._fail(f"training.distribution {t.distribution!r} is not one of {DISTRIBUTIONS}")
        if not isinstance(t.workers, int) or t.workers < 1:
            self._fail(f"training.workers must be a positive number of processes, got {t.workers!r}")
        if t.workers > 1 and t.distribution != "multi_worker_mirrored":
            self._fail(f"training.workers {t.workers} needs training.distribution: "
                       f"multi_worker_mirrored (is {t.distribution!r}); --train-workers sets both")
        if self.beam.max_cache_memory_usage_mb < 0:
            self._fail(f"beam.max_cache_memory_usage_mb must be >= 0, "
                       f"got {self.beam.max_cache_memory_usage_mb}")
        malformed = [a for a in self.beam.extra_args if not (isinstance(a, str) and a.startswith("--"))]
        if malformed:
            self._fail(f"beam.extra_args {malformed} must be '--name=value' or '--flag' strings")
        unknown = self.beam.unknown_args()
        if unknown:
            self._fail(f"beam.extra_args: unknown Beam pipeline option(s) {unknown} (misspelled?)")


_Section = TypeVar("_Section", bound="DataclassInstance")


def _non_negative_numbers(values: Sequence[Any]) -> bool:
    """Every value a number >= 0 (a YAML true/false is not a number here)."""
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) and not v < 0
               for v in values)


def _build(cls: type[_Section], data: Mapping[str, Any] | None, where: str) -> _Section:
    data = dict(data or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(value)
    if cls is ModelConfig:
        for field in ("pooling", "shared_l2"):  # one value, written as a number
            if isinstance(data.get(field), (int, float)):
                data[field] = (data[field],)
            if isinstance(data.get(field), Mapping):  # a list (or a number) per kind
                data[field] = {kind: tuple(v) if isinstance(v, (list, tuple)) else (v,)
                               for kind, v in data[field].items()}
    if cls is ModelConfig and isinstance(data.get("generator"), str):
        data["generator"] = (data["generator"],)
    if cls is ModelConfig and data.get("candidates"):
        data["candidates"] = tuple(_candidate(entry, f"{where}: candidates[{i}]")
                                   for i, entry in enumerate(data["candidates"]))
    return cls(**data)


def _candidate(entry: Any, where: str) -> Candidate:
    """One model of model.candidates, e.g. {generator: lowrank, pooling: 300, shared_l2: 0.01}."""
    if not isinstance(entry, Mapping) or "generator" not in entry:
        raise ConfigError(f"{where}: expected a mapping with a generator (and pooling, "
                          f"shared_l2), got {entry!r}")
    return _build(Candidate, entry, where)


def from_dict(data: Mapping[str, Any], source: str = "<dict>", base_dir: str = ".") -> PipelineConfig:
    """Build and validate a config; relative paths are taken from base_dir."""
    data = dict(data)
    required = {"name", "data_root", "label", "features"}
    missing = sorted(required - set(data))
    if missing:
        raise ConfigError(f"{source}: missing required key(s) {missing}")
    sections = {
        "label": LabelConfig, "features": FeaturesConfig, "model": ModelConfig,
        "training": TrainingConfig, "splits": SplitsConfig, "gates": GatesConfig,
        "beam": BeamConfig,
        "target_networks": TargetNetworksConfig,
    }
    try:
        for key, cls in sections.items():
            if key in data and not isinstance(data[key], cls):
                data[key] = _build(cls, data[key], f"{source}: {key}")
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from e
    for key in ("data_root", "output_dir", "schema_file"):
        if data.get(key) and not _is_remote(data[key]) and not os.path.isabs(data[key]):
            data[key] = os.path.normpath(os.path.join(base_dir, data[key]))
    data["context"] = tuple(data.get("context") or ())
    data.pop("source", None)
    allowed = {f.name for f in dataclasses.fields(PipelineConfig)}
    unknown = set(data) - allowed
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    return PipelineConfig(source=source, **data)


def load(path: str | None = None) -> PipelineConfig:
    """Load the YAML config at `path`, $HYPERNET_CONFIG, or the taxi default.

    data_root is relative to the config file; output_dir to the working directory
    (where ML Metadata and pipeline outputs go, as in the TFX templates).
    """
    path = path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    data.setdefault("output_dir", os.getcwd())
    return from_dict(data, source=path, base_dir=os.path.dirname(os.path.abspath(path)))


def _is_remote(path: str) -> bool:
    return "://" in path


def serialize(config: PipelineConfig) -> dict[str, Any]:
    """JSON-safe form for custom_config (tuples become lists)."""
    return dataclasses.asdict(config)


# custom_config keys TFX's Vertex AI Trainer reads and passes on to run_fn with ours
# (tfx.extensions.google_cloud_ai_platform: ai_platform_training_args, ..._enable_vertex, ...).
_VERTEX_KEY_PREFIX = "ai_platform_"


def deserialize(data: Mapping[str, Any]) -> PipelineConfig:
    """The config in a component's custom_config (the Vertex Trainer's own keys dropped)."""
    ours = {k: v for k, v in data.items() if not k.startswith(_VERTEX_KEY_PREFIX)}
    return from_dict(ours, source=data.get("source", "<custom_config>"))


def with_workers(config: PipelineConfig, workers: int) -> PipelineConfig:
    """`--train-workers N`: N training processes, under multi_worker_mirrored when N > 1.

    Part of the Trainer's custom_config, so a different N is a different Trainer execution.
    """
    distribution = "multi_worker_mirrored" if workers > 1 else config.training.distribution
    return dataclasses.replace(config, training=dataclasses.replace(
        config.training, workers=workers, distribution=distribution))  # replace() validates


if __name__ == "__main__":
    # `python -m pipeline.configs [FILE]`: validate a config and print its pipeline name.
    import sys

    print(load(sys.argv[1] if len(sys.argv) > 1 else None).name)
