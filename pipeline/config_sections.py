"""The config's sections: typed, frozen dataclasses, one per YAML section, and the names
every layer shares (tasks, generator kinds, gate metrics, artifact file names).

Split from pipeline/configs.py (which assembles, validates and loads them) to keep each
module readable; pipeline.configs re-exports every name, so readers import from there.
Like it, this module imports nothing of ours.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

TASKS = ("binary", "multiclass", "regression")
GENERATORS = ("full", "lowrank", "film")  # trainer/hypernet/kinds.py registers each
POOLED_GENERATORS = ("lowrank", "film")  # shared network + shrunk deviation: pooling, shared L2
RANK_LAYERS = ("first", "all")  # "lowrank": trainer/hypernet/generator.py's RANK_LAYERS
DISTRIBUTIONS = ("default", "multi_worker_mirrored")
# "<column> <op> [<number> *] <column-or-number>", e.g. "tips > 0.2 * fare".
_RULE = re.compile(
    r"^\s*(?P<lhs>[A-Za-z_]\w*)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?:(?P<factor>[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*\*\s*)?"
    r"(?P<rhs>[A-Za-z_]\w*|[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*$"
)


# Files our components and modules write, by what reads them back.
VERDICT_FILE = "verdict.json"  # ModelVerdict's verdict, next to each deployment_blessing
HISTORY_FILE = "history.json"  # the Trainer's Keras history, in its model_run
MANIFEST_FILE = "manifest.json"  # the exported target networks, by context
WEIGHTS_FILE = "generated_weights.npz"  # every exported target network's weights, flattened
REPORT_FILE = "report.html"  # RunReport's page, in the pipeline root
RUNS_FILE = "runs.jsonl"  # one line per run of pipeline.local_runner, in the pipeline root
# The exported hypernetwork's second signature: raw tf.Examples -> transformed features.
TRANSFORM_SIGNATURE = "transform_features"


class GateMetric(NamedTuple):
    """A metric the deployment gate can judge: TFMA's class, its direction, its result key."""

    tfma_class: str
    higher_is_better: bool
    result_key: str  # the metric's name in TFMA's results


GATE_METRICS: dict[tuple[str, str], GateMetric] = {
    ("binary", "auc"): GateMetric("AUC", True, "auc"),
    ("binary", "accuracy"): GateMetric("BinaryAccuracy", True, "binary_accuracy"),
    ("multiclass", "accuracy"): GateMetric("SparseCategoricalAccuracy", True,
                                           "sparse_categorical_accuracy"),
    ("regression", "mse"): GateMetric("MeanSquaredError", False, "mean_squared_error"),
    ("regression", "mae"): GateMetric("MeanAbsoluteError", False, "mean_absolute_error"),
}


def gate_metrics_of(task: str) -> tuple[str, ...]:
    """The gate metrics a task can use, e.g. ("auc", "accuracy") for binary."""
    return tuple(metric for t, metric in GATE_METRICS if t == task)


_COMPARISONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
                "==": operator.eq, "!=": operator.ne}




class ConfigError(ValueError):
    """A configuration that cannot run; the message names the file and the field."""

    # Users import and see it as pipeline.configs.ConfigError (tracebacks print this name).
    __module__ = "pipeline.configs"


@dataclasses.dataclass(frozen=True)
class LabelRule:
    """A binary label derived from raw columns: lhs op factor * rhs."""

    lhs: str
    op: str
    factor: float
    rhs: str | float

    @classmethod
    def parse(cls, text: str) -> LabelRule:
        m = _RULE.match(text)
        if not m:
            raise ConfigError(
                f"label.positive_when {text!r} is not of the form "
                "'<column> <op> [<number> *] <column or number>' (e.g. 'tips > 0.2 * fare')")
        rhs: str | float = m["rhs"]
        if re.fullmatch(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", m["rhs"]):
            rhs = float(m["rhs"])
        return cls(m["lhs"], m["op"], float(m["factor"] or 1.0), rhs)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.lhs,) + ((self.rhs,) if isinstance(self.rhs, str) else ())

    def holds(self, lhs: Any, rhs: Any) -> Any:
        """The rule on values (numbers, arrays or tensors alike): lhs op factor * rhs."""
        return _COMPARISONS[self.op](lhs, self.factor * rhs)


@dataclasses.dataclass(frozen=True)
class LabelConfig:
    name: str
    task: str
    column: str | None = None  # raw column holding the label as-is
    positive_when: str | None = None  # binary label derived from raw columns
    # Binary label given as values (Y/N, yes/no, >50K/<=50K): the value that means 1.
    # Without it a binary column must hold 0 and 1.
    positive: str | None = None
    num_classes: int | None = None  # multiclass: filled from the vocabulary when None

    @property
    def rule(self) -> LabelRule | None:
        return LabelRule.parse(self.positive_when) if self.positive_when else None

    @property
    def raw_columns(self) -> tuple[str, ...]:
        """The raw columns the label is made from."""
        rule = self.rule
        if rule is not None:
            return rule.columns
        return (self.column,) if self.column else ()


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    numeric: tuple[str, ...] = ()
    log_numeric: tuple[str, ...] = ()  # log1p of the clipped value, then z-score
    categorical: tuple[str, ...] = ()
    vocab_min_count: int = 5  # rarer values share the out-of-vocabulary bucket
    # Numeric features that also enter as one-hot quantile buckets (tft.bucketize), which
    # lets the network fit thresholds and non-monotone effects of the value.
    bucketized: tuple[str, ...] = ()
    num_buckets: int = 10

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.numeric, *self.log_numeric, *self.categorical)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    hidden_units: tuple[int, ...] = (64, 32)
    activation: str = "relu"
    context_embedding_dim: int = 8
    # How the context becomes weights (README, "The hypernetwork"): "film" and "lowrank"
    # pool (shared network + a shrunk per-context deviation), "full" generates every weight.
    # Pooling strength lambda: the loss adds lambda / N * sum over contexts of |deviation|^2
    # (N training examples), a prior that keeps small groups near the shared network;
    # shared_l2 is weight decay on the shared network's kernels (what every context
    # shares); both in units of the standardised label.
    # The Trainer fits several models and keeps the best on eval, as exported. They are
    # either listed one by one in `candidates`, or crossed from a grid: every kind of
    # `generator` with each of its `pooling` and `shared_l2` strengths (a list for every
    # pooled kind or a list per kind; a field left out takes GRID_DEFAULTS'). Neither
    # given: DEFAULT_CANDIDATES (chosen on bench/grouped.py's tables: README,
    # "Benchmarks"; docs/grouped-defaults.md, sections 11-19).
    candidates: tuple[Candidate, ...] = ()
    generator: tuple[str, ...] | None = None
    pooling: tuple[float, ...] | Mapping[str, tuple[float, ...]] | None = None
    shared_l2: tuple[float, ...] | Mapping[str, tuple[float, ...]] | None = None
    rank: int = 4  # generator "lowrank": the rank of each kernel's deviation
    # generator "lowrank": the kernels with that deviation, "first" (the input layer's) or
    # "all"; every bias deviates either way (docs/grouped-defaults.md, section 21).
    rank_layers: str = "first"
    # After training, each categorical context value gets an output intercept in closed
    # form: its train residuals' sum / (its rows + k), k chosen on eval from these (or
    # no intercepts); [] turns it off (trainer/hypernet/intercepts.py; the grid was
    # chosen on bench/grouped.py's tables: docs/grouped-defaults.md, section 5).
    intercept_strengths: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
    # Generator "full": its trunk, optional chunking, and L2 on its head's kernel.
    generator_units: tuple[int, ...] = (64,)
    chunk_size: int = 0
    chunk_embedding_dim: int = 16
    generator_l2: float = 0.0

    @property
    def grid_given(self) -> bool:
        """Whether any of generator, pooling or shared_l2 is set (the grid form)."""
        return any(v is not None for v in (self.generator, self.pooling, self.shared_l2))

    @property
    def grid_generators(self) -> tuple[str, ...]:
        """The grid's generator kinds (left out: GRID_DEFAULTS')."""
        return tuple(self.generator or GRID_DEFAULTS["generator"])

    def pooling_of(self, kind: str) -> tuple[float, ...]:
        """The grid's pooling strengths for a pooled `kind` (none configured: ())."""
        return _of_kind(GRID_DEFAULTS["pooling"] if self.pooling is None else self.pooling, kind)

    def shared_l2_of(self, kind: str) -> tuple[float, ...]:
        """The grid's shared-L2 strengths for a pooled `kind` (none configured: ())."""
        return _of_kind(GRID_DEFAULTS["shared_l2"] if self.shared_l2 is None else self.shared_l2,
                        kind)

    def candidate_models(self) -> tuple[Candidate, ...]:
        """Every model the Trainer fits, in order: the list, the grid's cross, or the default.
        The grid crosses, per pooled kind, each pooling strength with each shared L2
        ("full" is one model, no pooling)."""
        if self.candidates:
            return self.candidates
        if not self.grid_given:
            return DEFAULT_CANDIDATES
        crossed: list[Candidate] = []
        for kind in self.grid_generators:
            if kind in POOLED_GENERATORS:
                crossed += [Candidate(kind, pooling, l2) for pooling in self.pooling_of(kind)
                            for l2 in self.shared_l2_of(kind)]
            else:
                crossed.append(Candidate(kind))
        return tuple(crossed)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The generator kinds trained, in order of their first candidate."""
        return tuple(dict.fromkeys(c.generator for c in self.candidate_models()))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One model the Trainer fits: generator kind, pooling strength, shared L2 (the last
    two in units of the standardised label; both 0 for the unpooled kind "full").

    `shift_pooling` (pooled kinds; None: none): each categorical context value also shifts
    the first hidden layer's pre-activation by a free vector of its own, as a one-hot
    context input shifts a plain MLP's, under the prior shift_pooling / N * |shift|^2
    (docs/grouped-defaults.md, section 22)."""
    generator: str
    pooling: float = 0.0
    shared_l2: float = 0.0
    shift_pooling: float | None = None


# Three models, one kept on eval: film unregularised (kept where contexts are few and
# rules differ, STAR and bikeshare), lowrank at two strengths of pooling and shared L2
# (docs/grouped-defaults.md, sections 18-19).
DEFAULT_CANDIDATES = (Candidate("film", 30.0, 0.0), Candidate("lowrank", 30.0, 0.003),
                      Candidate("lowrank", 300.0, 0.01))
# What a grid leaves unset: the defaults before the list (section 14).
GRID_DEFAULTS: dict[str, Any] = {
    "generator": ("film", "lowrank"), "pooling": (30.0,),
    "shared_l2": {"film": (0.0, 0.003), "lowrank": (0.003,)}}


def _of_kind(values: tuple[float, ...] | Mapping[str, tuple[float, ...]],
             kind: str) -> tuple[float, ...]:
    """A per-kind setting's values for `kind`: its own list, or the list every kind shares."""
    if isinstance(values, Mapping):
        return tuple(values.get(kind, ()))
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    # The budget follows the data: whole epochs over the train split, at most `epochs` of
    # them, ended by early stopping on the eval split (the best epoch is kept). A number
    # here instead fixes the total steps, spread over `epochs` checks.
    train_steps: int | None = None
    eval_steps: int | None = None  # None: the whole eval split at every check
    batch_size: int = 256
    learning_rate: float = 3e-3
    epochs: int = 100
    early_stopping_patience: int = 5
    # After this many epochs without a better eval loss the learning rate is multiplied by
    # lr_plateau_factor (1.0: never), before early stopping gives up: the slower steps
    # settle per-group parameters that the first rate only circles (docs/grouped-defaults.md, §6).
    lr_plateau_patience: int = 2
    lr_plateau_factor: float = 0.3
    seed: int = 42
    # Start from the last blessed model's generator when the architecture matches.
    warm_start: bool = True
    # "default": one process, TensorFlow's default strategy. "multi_worker_mirrored":
    # tf.distribute.MultiWorkerMirroredStrategy over the workers named in $TF_CONFIG (each
    # worker runs run_fn; gradients are all-reduced; only the chief exports).
    distribution: str = "default"
    # Worker processes that train together (README, "Scale out"). Above 1 it needs
    # distribution: multi_worker_mirrored. Locally, run_fn starts them (trainer/launcher.py);
    # the Kubeflow compile makes the Trainer a Vertex AI CustomJob: a chief and workers - 1
    # workers of the pipeline image, on vertex_machine_type, in vertex_project/vertex_region.
    workers: int = 1
    vertex_project: str | None = None
    vertex_region: str = "us-central1"
    vertex_machine_type: str = "n1-standard-8"


@dataclasses.dataclass(frozen=True)
class GatesConfig:
    # auc | accuracy (classification), mse | mae (regression); None: the task's first
    # (auc, accuracy, mse). Bounds are absolute and optional: a lower bound for metrics
    # where higher is better, an upper bound for errors. Without one, the gate is the
    # change against the last blessed model.
    metric: str | None = None
    lower_bound: float | None = None
    upper_bound: float | None = None
    change_tolerance: float = 0.01  # how far below the last blessed model a candidate may fall
    # Per context slice, vs the last blessed model: how far a slice may fall (None: no
    # slice gate), judged only on slices with at least min_slice_examples examples (binary
    # labels: and a tenth of that in the rarer class).
    slice_tolerance: float | None = 0.03
    min_slice_examples: int = 200
    # ExampleValidator anomalies at or above this severity fail the run (None: record only).
    anomaly_severity: str | None = "ERROR"


@dataclasses.dataclass(frozen=True)
class SplitsConfig:
    """ExampleGen's hash buckets per split: train fits, eval stops early and selects, test
    is read only by the gate, the report and the benchmarks (it chose nothing)."""

    train: int = 3
    eval: int = 1
    test: int = 1

    def buckets(self) -> dict[str, int]:
        return {"train": self.train, "eval": self.eval, "test": self.test}


@dataclasses.dataclass(frozen=True)
class BeamConfig:
    direct_running_mode: str = "in_memory"  # in_memory | multi_threading | multi_processing
    direct_num_workers: int = 1  # 0: one per CPU
    # Beam's side-input cache. Beam weighs each cached value by walking every loaded
    # module's globals, TensorFlow's included, at each read; TFT reads one side input per
    # analyzer and bundle, so at 100 MB (Beam's default) Transform spent ~5 s of 30 on it.
    # Beam's own workers take the flag; pipeline/local_runner.py applies it in process.
    max_cache_memory_usage_mb: int = 0
    # Any other Beam pipeline option, one "--name=value" (or "--flag") string each, e.g.
    # ["--runner=FlinkRunner", "--flink_master=flink:8081"] (README, "Scale out").
    extra_args: tuple[str, ...] = ()

    def pipeline_args(self) -> list[str]:
        return [
            f"--direct_running_mode={self.direct_running_mode}",
            f"--direct_num_workers={self.direct_num_workers}",
            f"--max_cache_memory_usage_mb={self.max_cache_memory_usage_mb}",
            *self.extra_args,
        ]

    def unknown_args(self) -> list[str]:
        """Options of pipeline_args() that no Beam options class defines (Beam drops them)."""
        if not self.extra_args:
            return []
        from apache_beam.options.pipeline_options import PipelineOptions

        options = PipelineOptions(self.pipeline_args())
        known = options.get_all_options(retain_unknown_options=False)
        everything = options.get_all_options(retain_unknown_options=True)
        unknown = set(everything) - set(known)
        return [a for a in self.pipeline_args()
                if a.split("=", 1)[0].lstrip("-").replace("-", "_") in unknown]


@dataclasses.dataclass(frozen=True)
class TargetNetworksConfig:
    # Context values to materialize, by context feature: categorical contexts default to
    # their vocabulary (most frequent first) plus the out-of-vocabulary bucket; numeric
    # ones must be listed.
    context_values: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    # At most this many target networks are exported (the most frequent contexts), plus
    # the out-of-vocabulary one; the manifest says how many contexts exist. Listed
    # values are exported as listed: more combinations of them than this is an error.
    max_networks: int = 20
    # The run report charts and tabulates the context slices with the most examples, at
    # most this many (every slice's numbers stay in the report's embedded data).
    report_slices: int = 20
