"""Scheduled retraining on spans, replayed with real pipeline runs: good, bad, good data.

One replay (module fixture) runs the scheduled entry point (`python -m pipeline.local_runner
--retrain`, what `make retrain` runs) over a sequence of spans and records what happened;
each test asserts one of the six promised behaviours on that record.
"""

import csv
import dataclasses
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from pipeline import configs
from pipeline.split_spans import split_spans
from pipeline.summary import summarize
from tests.support import ROOT, TAXI_CSV, pipeline_env, write_config
from trainer.eval_results import slice_metrics

pytestmark = pytest.mark.e2e
TRAINING = {"train_steps": 200, "epochs": 2, "eval_steps": 10}


@dataclasses.dataclass
class Step:
    name: str
    returncode: int
    output: str
    serving_before: dict
    serving_after: dict
    summary: dict | None = None
    targets_before: dict = dataclasses.field(default_factory=dict)  # pushed target networks
    targets_after: dict = dataclasses.field(default_factory=dict)


def serving_snapshot(config, folder: str | None = None) -> dict[str, str]:
    """{relative path: sha256} of everything under the serving directory (or `folder`)."""
    folder = folder or config.serving_model_dir
    out = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def targets_snapshot(config) -> dict[str, str]:
    return serving_snapshot(config, config.serving_target_networks_dir)


def rewrite(src: str, dst: str, edit) -> None:
    """Copy a span's CSV through edit(header, rows) -> (header, rows)."""
    with open(src, newline="") as f:
        reader = csv.reader(f)
        header, rows = next(reader), list(reader)
    header, rows = edit(header, rows)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    with open(dst, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def drop_column(name):
    def edit(header, rows):
        i = header.index(name)
        return header[:i] + header[i + 1:], [r[:i] + r[i + 1:] for r in rows]
    return edit


def set_values(name, value, every=1):
    def edit(header, rows):
        i = header.index(name)
        return header, [r[:i] + [value] + r[i + 1:] if n % every == 0 else r
                        for n, r in enumerate(rows)]
    return edit


def shuffle_column(name, seed=0):
    def edit(header, rows):
        i = header.index(name)
        values = [r[i] for r in rows]
        random.Random(seed).shuffle(values)
        return header, [r[:i] + [v] + r[i + 1:] for r, v in zip(rows, values)]
    return edit


class Replay:
    def __init__(self, tmp):
        self.tmp = tmp
        self.good = split_spans(TAXI_CSV, str(tmp / "good"), spans=3)
        self.data = tmp / "data"
        self.data.mkdir()
        self.config_path = write_config(
            str(tmp / "taxi.yaml"), base=configs.DEFAULT_CONFIG, data_root=str(self.data),
            output_dir=str(tmp / "out"), training=TRAINING,
            # A span's Credit Card slice has ~680 eval examples at AUC ~0.65 after this short
            # training: two models on good spans differ there by ~0.03 (a standard error of
            # AUC is ~0.02), so the default 0.03 tolerance would judge noise. The
            # slice_regression step below gates at 0.03 against a real drop of ~0.13.
            gates={"slice_tolerance": 0.05},
            schema_file=os.path.join(configs.PACKAGE_DIR, "schema", "taxi.pbtxt"))
        self.config = configs.load(self.config_path)
        self.steps: dict[str, Step] = {}

    def command(self, config_path=None):
        return [sys.executable, "-m", "pipeline.local_runner", "--retrain",
                "--config", config_path or self.config_path]

    def run(self, name: str, config_path=None, data_edit=None) -> Step:
        """One retraining pass; data_edit=(span, edit, source) writes that span first."""
        if data_edit:
            self.span(data_edit[0], data_edit[1], source=data_edit[2])
        before, targets = serving_snapshot(self.config), targets_snapshot(self.config)
        done = subprocess.run(self.command(config_path), cwd=ROOT, env=pipeline_env(),
                              capture_output=True, text=True)
        step = Step(name, done.returncode, done.stdout + done.stderr, before,
                    serving_snapshot(self.config), targets_before=targets,
                    targets_after=targets_snapshot(self.config))
        if done.returncode == 0:
            step.summary = summarize(configs.load(config_path or self.config_path))
        self.steps[name] = step
        return step

    def span(self, number: int, edit=None, source: int = 1) -> str:
        path = str(self.data / f"span-{number}" / "data.csv")
        rewrite(self.good[source - 1], path, edit or (lambda h, r: (h, r)))
        return path

    def remove_span(self, number: int) -> None:
        shutil.rmtree(self.data / f"span-{number}")

    def run_killed_in_trainer(self, name: str, timeout: float = 900) -> Step:
        """Start a run, SIGKILL its whole process group once the Trainer is running."""
        before = serving_snapshot(self.config)
        log = open(self.tmp / f"{name}.log", "w+")
        proc = subprocess.Popen(self.command(), cwd=ROOT, env=pipeline_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            log.flush()
            with open(log.name) as f:
                if "Epoch 1/" in f.read():  # Keras is fitting inside the Trainer
                    break
            time.sleep(1)
        assert proc.poll() is None, "the run ended before the Trainer started"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with open(log.name) as f:
            output = f.read()
        step = Step(name, proc.returncode, output, before, serving_snapshot(self.config))
        self.steps[name] = step
        return step


@pytest.fixture(scope="module")
def replay(tmp_path_factory):
    r = Replay(tmp_path_factory.mktemp("retrain"))
    r.span(1)
    r.run("first")
    # 1. Bad data in a new span: the anomaly gate stops the run.
    for name, edit in (("missing_column", drop_column("trip_miles")),
                       ("wrong_type", set_values("fare", "twelve dollars")),
                       ("unparsable", set_values("trip_seconds", "n/a", every=50))):
        r.span(2, edit, source=2)
        r.run(name)
        r.remove_span(2)
    # 5. An empty span, and a CSV with only a header.
    (r.data / "span-2").mkdir()
    r.run("empty_span")
    r.span(2, lambda h, rows: (h, []))
    r.run("header_only")
    r.remove_span(2)
    # 2. Shuffled labels: a worse model, not blessed.
    r.span(2, shuffle_column("tips"), source=2)
    r.run("shuffled_labels")
    # 3. Good new data: blessed and pushed next to the old version.
    r.span(3, source=3)
    r.run("good")
    # A candidate worse in a context slice while the overall gates are opened wide: only
    # the per-slice gate can reject it. (Both models are judged on the new span's eval
    # split, so bad labels there would hurt the baseline as much: a barely trained
    # candidate is what is worse.)
    r.run("slice_regression", write_config(
        str(r.tmp / "slices.yaml"), base=r.config_path,
        training={**TRAINING, "train_steps": 2, "epochs": 1, "warm_start": False},
        gates={"metric": "auc", "lower_bound": None, "change_tolerance": 1.0,
               "slice_tolerance": 0.03, "min_slice_examples": 200, "anomaly_severity": "ERROR"}),
        data_edit=(4, None, 2))
    # 4. Killed in the Trainer, then the same command again (span 4 as above).
    r.run_killed_in_trainer("killed")
    r.run("rerun_after_kill")
    # Same data, another training budget: Transform is reused, the Trainer warm-starts.
    r.run("warm_restart", write_config(str(r.tmp / "more.yaml"), base=r.config_path,
                                       training={**TRAINING, "train_steps": 240}))
    return r


def test_first_span_is_blessed_and_pushed(replay):
    step = replay.steps["first"]
    assert step.returncode == 0, step.output[-3000:]
    assert step.summary["blessed"] and step.summary["pushed"], step.summary.get("verdict")
    assert step.serving_before == {} and len({p.split(os.sep)[0] for p in step.serving_after}) == 1


@pytest.mark.parametrize("name, feature", [("missing_column", "trip_miles"),
                                           ("wrong_type", "fare"),
                                           ("unparsable", "trip_seconds")])
def test_bad_span_fails_the_anomaly_gate_naming_the_feature(replay, name, feature):
    step = replay.steps[name]
    assert step.returncode != 0
    assert "DataAnomalyError: data validation failed" in step.output
    gate_lines = [line for line in step.output.splitlines() if line.strip().startswith("[")]
    assert any(f"] {feature}:" in line for line in gate_lines), gate_lines
    assert step.serving_after == step.serving_before  # byte-identical
    assert step.targets_after == step.targets_before


@pytest.mark.parametrize("name, message", [("empty_span", "(an empty span)"),
                                           ("header_only", "a header and no rows")])
def test_empty_inputs_fail_with_a_clear_error(replay, name, message):
    step = replay.steps[name]
    assert step.returncode != 0
    assert message in step.output and "span-2" in step.output
    assert step.serving_after == step.serving_before
    assert step.targets_after == step.targets_before


def test_shuffled_labels_are_not_blessed_and_nothing_is_pushed(replay):
    step = replay.steps["shuffled_labels"]
    assert step.returncode == 0, step.output[-3000:]  # a rejected model is a successful run
    assert step.summary["blessed"] is False and step.summary["pushed"] is False
    assert step.serving_after == step.serving_before
    assert step.targets_after == step.targets_before
    verdict = step.summary["verdict"]
    assert verdict["blessed"] is False and verdict["value"] < replay.config.gates.lower_bound
    assert any("auc" in reason for reason in verdict["reasons"])
    assert "rejected: overall: auc" in step.output


def test_good_span_is_pushed_as_a_new_version_next_to_the_old(replay):
    step = replay.steps["good"]
    assert step.returncode == 0, step.output[-3000:]
    assert step.summary["blessed"] and step.summary["pushed"], step.summary.get("verdict")
    before = {p.split(os.sep)[0] for p in step.serving_before}
    after = {p.split(os.sep)[0] for p in step.serving_after}
    assert len(before) == 1 and len(after) == 2 and before < after
    old = {p: h for p, h in step.serving_after.items() if p.split(os.sep)[0] in before}
    assert old == step.serving_before  # the old version is untouched
    # The target networks went out with it, under the same version; the old ones untouched.
    version = os.path.basename(step.summary["pushed_destination"])
    assert {p.split(os.sep)[0] for p in step.targets_after} == \
        {p.split(os.sep)[0] for p in step.targets_before} | {version}
    assert {p: h for p, h in step.targets_after.items() if p in step.targets_before} == \
        step.targets_before
    # New span, new vocabularies: ids mean other values, so no copy; the log says why.
    assert "warm start skipped, training from scratch: vocabulary of" in step.output


def test_a_context_slice_that_regressed_blocks_the_push(replay):
    step = replay.steps["slice_regression"]
    assert step.returncode == 0, step.output[-3000:]
    verdict = step.summary["verdict"]
    assert verdict["evaluator_blessed"] is True and verdict["blessed"] is False
    assert step.summary["blessed"] is False and step.summary["pushed"] is False
    failed = [r for r in verdict["reasons"] if r.startswith("payment_type=Credit Card: auc")]
    assert failed and "for the last blessed model" in failed[0], verdict["reasons"]
    assert not any(r.startswith("payment_type=Cash") for r in verdict["reasons"])  # ~no tippers
    assert step.serving_after == step.serving_before
    assert step.targets_after == step.targets_before


def test_warm_start_when_vocabularies_match(replay):
    """Same span, a changed training budget: Transform is cached, the generator is copied."""
    step = replay.steps["warm_restart"]
    assert step.returncode == 0, step.output[-3000:]
    assert "warm start: " in step.output and "generator variables from" in step.output


def test_rerun_after_sigkill_in_trainer_completes_with_cached_upstream(replay):
    killed, rerun = replay.steps["killed"], replay.steps["rerun_after_kill"]
    assert killed.returncode == -signal.SIGKILL
    assert killed.serving_after == killed.serving_before
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert rerun.summary["blessed"] is not None
    # Upstream of the Trainer came from the killed run's executions, not recomputed.
    assert rerun.output.count("A cached execution") >= 4
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata

    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(replay.config.metadata_path))
    run = max(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.create_time_since_epoch)
    states = [(store.get_execution_types_by_id([e.type_id])[0].name.rsplit(".", 1)[-1],
               metadata_store_pb2.Execution.State.Name(e.last_known_state))
              for e in store.get_executions_by_context(run.id)]
    assert len(states) >= 10, states  # every component of the rerun is recorded
    assert all(state in ("COMPLETE", "CACHED") for _, state in states), states


def test_same_span_and_seed_give_the_same_model(replay, tmp_path):
    """Determinism: a second pipeline, same data and config, fresh output dir."""
    first = replay.steps["first"].summary["metrics"]["overall"]
    data = tmp_path / "data"
    shutil.copytree(replay.data / "span-1", data / "span-1")
    path = write_config(str(tmp_path / "again.yaml"), base=replay.config_path,
                        data_root=str(data), output_dir=str(tmp_path / "out"))
    step = replay.run("again", path)
    assert step.returncode == 0, step.output[-3000:]
    again = slice_metrics(step.summary["evaluation_uri"])["overall"]
    for metric in ("auc", "binary_accuracy", "calibration"):
        assert again[metric] == pytest.approx(first[metric], abs=1e-6), metric
    # The model itself, not only its metrics: the pushed variables are the same bytes.
    variables = [serving_snapshot(replay.config, os.path.join(s.summary["pushed_destination"],
                                                              "variables"))
                 for s in (replay.steps["first"], step)]
    assert variables[0] and variables[0] == variables[1]
