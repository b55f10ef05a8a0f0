"""Scheduled retraining on spans, replayed with real pipeline runs: good, bad, good data.

One replay (module fixture) runs the scheduled entry point (`python -m pipeline.local_runner
--retrain`, what `make retrain` runs) over a sequence of spans and records what happened;
each test asserts one of the six promised behaviours on that record.
"""

import csv
import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np
import pytest

from pipeline import configs
from pipeline.split_spans import split_spans
from pipeline.summary import run_artifacts, summarize
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
    runs: list = dataclasses.field(default_factory=list)  # its pipeline run ids (ML Metadata)


def metadata_store(config):
    from ml_metadata import metadata_store as mlmd
    from tfx.orchestration import metadata

    return mlmd.MetadataStore(metadata.sqlite_metadata_connection_config(config.metadata_path))


def run_ids(config) -> set[str]:
    """Every pipeline run recorded so far (a run's context exists from its first node on)."""
    if not os.path.exists(config.metadata_path):
        return set()
    return {c.name for c in metadata_store(config).get_contexts_by_type("pipeline_run")}


def execution_states(config, run_id: str) -> dict[str, list[str]]:
    """{node id: the states of its executions} in one pipeline run, as ML Metadata has them."""
    from ml_metadata.proto import metadata_store_pb2

    store = metadata_store(config)
    run = next(c for c in store.get_contexts_by_type("pipeline_run") if c.name == run_id)
    node_type = store.get_context_type("node").id
    states: dict[str, list[str]] = {}
    for execution in store.get_executions_by_context(run.id):
        node = next(c.name for c in store.get_contexts_by_execution(execution.id)
                    if c.type_id == node_type)
        states.setdefault(node.split(".", 1)[-1], []).append(
            metadata_store_pb2.Execution.State.Name(execution.last_known_state))
    return states


def trainer_history(config, run_id: str) -> dict:
    """The Keras history the Trainer saved in its model_run, for one run."""
    model_run = run_artifacts(config.metadata_path, run_id)["model_run"][0].uri
    with open(os.path.join(model_run, configs.HISTORY_FILE)) as f:
        return json.load(f)


def transform_executing(output: str) -> bool:
    """The local runner started Transform and registered its execution: Beam is running it."""
    start = output.find("Component Transform is running.")
    return start >= 0 and "Going to run a new execution" in output[start:]


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
        config = configs.load(config_path or self.config_path)  # its own store, maybe
        runs = run_ids(config)
        done = subprocess.run(self.command(config_path), cwd=ROOT, env=pipeline_env(),
                              capture_output=True, text=True)
        step = Step(name, done.returncode, done.stdout + done.stderr, before,
                    serving_snapshot(self.config), targets_before=targets,
                    targets_after=targets_snapshot(self.config),
                    runs=sorted(run_ids(config) - runs))
        if done.returncode == 0:
            assert len(step.runs) == 1, step.runs
            step.summary = summarize(config, step.runs[0])
        self.steps[name] = step
        return step

    def span(self, number: int, edit=None, source: int = 1) -> str:
        path = str(self.data / f"span-{number}" / "data.csv")
        rewrite(self.good[source - 1], path, edit or (lambda h, r: (h, r)))
        return path

    def remove_span(self, number: int) -> None:
        shutil.rmtree(self.data / f"span-{number}")

    def run_killed(self, name: str, inside: Callable[[str], bool], settle: float = 0.0,
                   timeout: float = 900) -> Step:
        """Start a run, SIGKILL its whole process group once `inside(log so far)` holds
        (and `settle` seconds more)."""
        before, targets, runs = serving_snapshot(self.config), targets_snapshot(self.config), \
            run_ids(self.config)
        log = open(self.tmp / f"{name}.log", "w+")
        proc = subprocess.Popen(self.command(), cwd=ROOT, env=pipeline_env(), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline and proc.poll() is None:
            log.flush()
            with open(log.name) as f:
                if inside(f.read()):
                    break
            time.sleep(1)
        time.sleep(settle)
        assert proc.poll() is None, f"the run ended before the kill ({name})"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with open(log.name) as f:
            output = f.read()
        step = Step(name, proc.returncode, output, before, serving_snapshot(self.config),
                    targets_before=targets, targets_after=targets_snapshot(self.config),
                    runs=sorted(run_ids(self.config) - runs))
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
    # 3a. Span 3 after span 1 on a short budget (10 steps an epoch), warm and cold, with the
    # candidate span 1's run kept (the kind its generator is): what warm start buys. An
    # unreachable gate keeps both from being blessed: span 1's model stays the baseline.
    r.span(3, source=3)
    kept = trainer_history(r.config, r.steps["first"].runs[0])
    for name, warm in (("warm_span_3", True), ("cold_span_3", False)):
        r.run(name, write_config(
            str(r.tmp / f"{name}.yaml"), base=r.config_path, gates={"lower_bound": 0.999},
            training={**TRAINING, "train_steps": 20, "warm_start": warm},
            model={k: kept[k] for k in ("generator", "pooling", "shared_l2")}))
    # 3. Good new data: blessed and pushed next to the old version.
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
    r.run_killed("killed", lambda log: "Epoch 1/" in log)  # Keras is fitting in the Trainer
    r.run("rerun_after_kill")
    # Same data, another training budget: the Trainer warm-starts, vocabularies unchanged.
    r.run("warm_restart", write_config(str(r.tmp / "more.yaml"), base=r.config_path,
                                       training={**TRAINING, "train_steps": 240}))
    # 4b. Killed inside Transform on a new span (span 3's rows again), then again.
    r.span(5, source=3)
    r.run_killed("killed_in_transform", transform_executing, settle=5)
    r.run("rerun_after_transform_kill")
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


WARM = re.compile(r"warm start from (\S+): (\d+) variables copied, (\d+) remapped by vocabulary "
                  r"\((.*)\), (\d+) initialised")
CHECK = re.compile(r"warm start check: payment_type token '(.*)' id (\d+) \(base id (\d+)\) "
                   r"embedding row \[(.*)\]")


def warm_started_candidates(output: str) -> dict[tuple[str, float, float, str], bool]:
    """{(generator, pooling, shared L2, shift pooling): warm-started?} from the Trainer's
    log, candidate by candidate."""
    out, warm = {}, None
    for m in re.finditer(r"warm start from |warm start skipped|generator (\w+), pooling "
                         r"([\d.]+), shared L2 ([\d.e-]+), shift pooling (None|[\d.e-]+): eval",
                         output):
        if m.group(1):
            out[(m.group(1), float(m.group(2)), float(m.group(3)), m.group(4))] = warm
        else:
            warm = m.group(0) == "warm start from "
    return out


def test_good_span_warm_starts_from_span_1_by_token(replay):
    """Span 3 after span 1: new vocabularies, yet the generator is copied, remapped by token."""
    import tensorflow as tf
    import tensorflow_transform  # noqa: F401 - its ops, for the exported transform graph

    from trainer.task import model_candidates
    from trainer.vocab_remap import read_vocabulary
    from trainer.warm_start import variables_under

    step, first = replay.steps["good"], replay.steps["first"]
    warm = WARM.search(step.output)
    assert warm, step.output[-3000:]
    base_dir, copied, remapped, vocabularies, initialised = warm.groups()
    assert base_dir.startswith(first.summary["model_uri"])  # span 1's blessed model
    assert int(remapped) >= 1 and int(copied) >= 1 and int(initialised) == 0
    assert re.search(r"the categorical columns: \d+ rows copied, \d+ new \(as their column's "
                     r"OOV\), \d+ dropped", vocabularies), vocabularies
    # Every candidate of span 1's generator kind warm-started (another kind cannot).
    kind = trainer_history(replay.config, first.runs[0])["generator"][0]
    candidates = warm_started_candidates(step.output)
    assert len(candidates) == len(model_candidates(replay.config.model)), candidates
    assert {warm for (k, *_), warm in candidates.items() if k == kind} == {True}, candidates
    # A shared context value's embedding row, read from the new model before its first
    # step, is the row span 1's model holds for that value, at its id there.
    check = CHECK.search(step.output)
    assert check, step.output[-3000:]
    token, new_id, old_id, row = check.group(1), int(check.group(2)), int(check.group(3)), \
        np.array([float(x) for x in check.group(4).split(",")], np.float32)
    transform = run_artifacts(replay.config.metadata_path, step.runs[0])["transform_graph"][0].uri
    new_vocab = read_vocabulary(os.path.join(transform, "transform_fn", "assets",
                                             "vocab_payment_type"))
    assert new_vocab[new_id] == token.encode()
    assert read_vocabulary(os.path.join(base_dir, "assets", "vocab_payment_type"))[old_id] == \
        token.encode()
    base = variables_under(tf.saved_model.load(base_dir).hyper)
    table = next(v for v in base if "embed_payment_type/embeddings" in v.name).numpy()
    np.testing.assert_array_equal(row, table[old_id])
    assert np.any(row != 0)


def test_warm_start_beats_a_cold_start_on_the_same_span(replay):
    """First-epoch validation loss on span 3: warm from span 1 vs the same candidate cold."""
    warm_step, cold_step = replay.steps["warm_span_3"], replay.steps["cold_span_3"]
    for step in (warm_step, cold_step):
        assert step.returncode == 0, step.output[-3000:]
        assert step.summary["blessed"] is False and step.serving_after == step.serving_before
    warm_line = WARM.search(warm_step.output)
    assert warm_line and warm_line.group(1).startswith(
        replay.steps["first"].summary["model_uri"]), warm_step.output[-3000:]
    assert "warm start" not in cold_step.output
    warm = trainer_history(replay.config, warm_step.runs[0])
    cold = trainer_history(replay.config, cold_step.runs[0])
    assert all(cold[k] == warm[k] for k in ("generator", "pooling", "shared_l2"))
    print(f"span 3, {warm['generator'][0]} pooling {warm['pooling'][0]}: first-epoch "
          f"val_data_loss warm {warm['val_data_loss'][0]:.6f}, cold {cold['val_data_loss'][0]:.6f}")
    assert warm["val_data_loss"][0] < cold["val_data_loss"][0]


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
    warm = WARM.search(step.output)
    assert warm and int(warm.group(2)) >= 1, step.output[-3000:]


FINISHED = ("COMPLETE", "CACHED")


def crash_and_rerun(replay, killed_name: str, rerun_name: str, killed_node: str):
    """The killed run's and the re-run's executions, by their own run ids; checks common
    to every kill: nothing pushed by the killed run, the killed execution left unfinished,
    every node upstream of it that finished taken from cache in the re-run."""
    killed, rerun = replay.steps[killed_name], replay.steps[rerun_name]
    assert killed.returncode == -signal.SIGKILL
    assert killed.serving_after == killed.serving_before  # byte-identical
    assert killed.targets_after == killed.targets_before
    assert rerun.returncode == 0, rerun.output[-3000:]
    assert len(killed.runs) == 1 and len(rerun.runs) == 1 and killed.runs != rerun.runs
    before, after = (execution_states(replay.config, s.runs[0]) for s in (killed, rerun))
    # The killed execution is recorded, and not as finished.
    assert len(before[killed_node]) == 1 and before[killed_node][0] not in FINISHED, before
    upstream = {node for node, states in before.items()
                if node != killed_node and all(state in FINISHED for state in states)}
    assert {"CsvExampleGen", "StatisticsGen", "ExampleValidator"} <= upstream, before
    for node in upstream - {n for n in upstream if "resolver" in n}:
        assert after[node] == ["CACHED"], (node, after)
    # The killed node ran again, and so did everything after it; the re-run is complete.
    assert after[killed_node] == ["COMPLETE"], after
    assert all(state in FINISHED for states in after.values() for state in states), after
    for node in ("Trainer", "Evaluator", "Pusher"):
        assert after[node] == ["COMPLETE"], after
    return killed, rerun, before, after, upstream


def test_rerun_after_sigkill_in_trainer_reuses_upstream_and_pushes(replay):
    killed, rerun, before, after, upstream = crash_and_rerun(
        replay, "killed", "rerun_after_kill", "Trainer")
    assert "Transform" in upstream  # finished before the kill: cached, not recomputed
    assert not {"Evaluator", "Pusher"} & set(before)  # the killed run got no further
    # Span 4 is good data: the re-run's model is blessed and pushed as a new version.
    summary = rerun.summary
    assert summary["run"] == rerun.runs[0]
    assert summary["blessed"] is True and summary["pushed"] is True, summary.get("verdict")
    version = os.path.basename(summary["pushed_destination"])
    assert {p.split(os.sep)[0] for p in rerun.serving_after} == \
        {p.split(os.sep)[0] for p in rerun.serving_before} | {version}


def test_rerun_after_sigkill_in_transform_recomputes_transform_and_downstream(replay):
    killed, rerun, before, after, upstream = crash_and_rerun(
        replay, "killed_in_transform", "rerun_after_transform_kill", "Transform")
    assert "Trainer" not in before  # killed before anything downstream of Transform
    assert "Transform" in killed.output and "Transform" not in upstream
    summary = rerun.summary
    assert summary["run"] == rerun.runs[0]
    assert summary["blessed"] == summary["verdict"]["blessed"]
    assert summary["pushed"] is summary["blessed"], summary.get("verdict")


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
