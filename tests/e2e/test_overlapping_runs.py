"""Overlapping scheduled runs of one pipeline (issue #15, point 6), with real processes.

Three `python -m pipeline.local_runner --retrain` processes (what `make retrain` runs) of
one pipeline, on one small span: the first runs; a second started while it runs with
`--if-running exit` leaves at once with exit code 75 and a message naming the first; a
third with `--if-running wait` waits, then runs. Both runs push, in start order, and
ML Metadata and runs.jsonl record them one after the other.
"""

import datetime
import json
import os
import subprocess
import sys
import time

import pytest

from pipeline import configs, run_history, run_lock
from pipeline.split_spans import split_spans
from tests.support import ROOT, TAXI_CSV, pipeline_env, write_config

pytestmark = pytest.mark.e2e
TRAINING = {"train_steps": 200, "epochs": 2, "eval_steps": 10}
# Not a test of the gate: every model is blessed, so both runs push.
OPEN_GATES = {"lower_bound": None, "change_tolerance": 1.0, "slice_tolerance": None}
TIMEOUT = 1800


def start(config_path: str, if_running: str, log_path: str) -> subprocess.Popen:
    log = open(log_path, "w")
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.local_runner", "--retrain", "--config", config_path,
         "--if-running", if_running], cwd=ROOT, env=pipeline_env(), stdout=log,
        stderr=subprocess.STDOUT)


def wait_for_lock_holder(config, pid: int, proc: subprocess.Popen, log: str) -> None:
    path = run_lock.lock_path(config.metadata_path)
    deadline = time.time() + 600
    while time.time() < deadline:
        assert proc.poll() is None, open(log).read()[-3000:]
        try:
            with open(path) as f:
                if json.load(f).get("pid") == pid:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"process {pid} never took {path}")


def epoch(timestamp: str) -> float:
    return datetime.datetime.fromisoformat(timestamp).timestamp()  # naive: local time


@pytest.fixture(scope="module")
def overlap(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("overlap")
    split_spans(TAXI_CSV, str(tmp / "data"), spans=3)
    for n in (2, 3):  # one span: a third of the sample
        os.remove(tmp / "data" / f"span-{n}" / "data.csv")
        os.rmdir(tmp / "data" / f"span-{n}")
    common = dict(base=configs.DEFAULT_CONFIG, data_root=str(tmp / "data"),
                  output_dir=str(tmp / "out"), gates=OPEN_GATES)
    first = write_config(str(tmp / "first.yaml"), training=TRAINING, **common)
    # Another budget, so the waiting run trains (and pushes) a model of its own.
    later = write_config(str(tmp / "later.yaml"), training={**TRAINING, "train_steps": 240},
                         **common)
    config = configs.load(first)
    logs = {name: str(tmp / f"{name}.log") for name in ("first", "exits", "waits")}
    procs = {"first": start(first, "exit", logs["first"])}
    wait_for_lock_holder(config, procs["first"].pid, procs["first"], logs["first"])
    procs["waits"] = start(later, "wait", logs["waits"])
    procs["exits"] = start(later, "exit", logs["exits"])
    procs["exits"].wait(timeout=TIMEOUT)
    first_running_when_second_exited = procs["first"].poll() is None
    for proc in procs.values():
        proc.wait(timeout=TIMEOUT)
    outputs = {name: open(path).read() for name, path in logs.items()}
    return dict(config=config, procs=procs, outputs=outputs,
                first_running=first_running_when_second_exited,
                history=run_history.read(config))


def test_a_run_started_during_another_exits_at_once_with_75(overlap):
    config, procs, outputs = overlap["config"], overlap["procs"], overlap["outputs"]
    assert procs["exits"].returncode == run_lock.EX_TEMPFAIL, outputs["exits"][-3000:]
    assert overlap["first_running"]  # it left while the first run was still going
    assert (f"another run of pipeline {config.name} is in progress "
            f"(pid {procs['first'].pid} on ") in outputs["exits"]
    assert procs["first"].returncode == 0, outputs["first"][-3000:]
    assert "blessed=True pushed=True" in outputs["first"]


def test_a_waiting_run_runs_after_and_pushes_a_later_version(overlap):
    config, procs, outputs = overlap["config"], overlap["procs"], overlap["outputs"]
    assert procs["waits"].returncode == 0, outputs["waits"][-3000:]
    assert f"waiting for another run of pipeline {config.name}" in outputs["waits"]
    skipped, first, waited = overlap["history"]  # in the order they ended
    assert (skipped["status"], skipped["exit_code"], skipped["run_id"]) == ("skipped", 75, None)
    assert first["status"] == waited["status"] == "succeeded"
    assert first["pushed"] and waited["pushed"] and first["span"] == waited["span"] == 1
    # The Pusher's version is the clock at push time (unix seconds): inside its own run,
    # and the runs did not overlap, so versions follow the order the runs started in.
    for line in (first, waited):
        assert epoch(line["run_id"]) - 1 <= int(line["version"]) <= epoch(line["ended"]) + 1
    assert epoch(waited["run_id"]) >= epoch(first["ended"])
    assert int(first["version"]) < int(waited["version"])
    assert sorted(os.listdir(config.serving_model_dir)) == [first["version"], waited["version"]]
    # Each run's own report page, named by its run id.
    for line in (first, waited):
        assert line["report"] and line["run_id"] in line["report"], line
        assert os.path.exists(line["report"])


def test_the_store_records_both_runs_one_after_the_other(overlap):
    from ml_metadata import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration import metadata

    _, first, waited = overlap["history"]
    store = metadata_store.MetadataStore(
        metadata.sqlite_metadata_connection_config(overlap["config"].metadata_path))
    runs = {c.name: c for c in store.get_contexts_by_type("pipeline_run")}
    assert set(runs) == {first["run_id"], waited["run_id"]}
    executions = {name: store.get_executions_by_context(c.id) for name, c in runs.items()}
    for name, found in executions.items():
        states = {metadata_store_pb2.Execution.State.Name(e.last_known_state) for e in found}
        assert len(found) >= 10 and states <= {"COMPLETE", "CACHED"}, (name, states)
    assert max(e.last_update_time_since_epoch for e in executions[first["run_id"]]) <= \
        min(e.create_time_since_epoch for e in executions[waited["run_id"]])
