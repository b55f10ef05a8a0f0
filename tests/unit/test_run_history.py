"""Run history (runs.jsonl) and the run lock: what a scheduler reads and what keeps two
runs of one pipeline apart (issue #15, points 5 and 6). The pipeline runs themselves are
in tests/e2e/test_overlapping_runs.py; here the runner stops before training."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import configs, local_runner, run_history, run_lock
from pipeline.split_spans import split_spans
from tests.support import ROOT, TAXI_CSV, pipeline_env, write_config

# pipeline.summary.summarize()'s view of a blessed, pushed run (its keys, real values).
SUMMARY = {
    "pipeline": "hypernet-taxi-spans", "run": "2026-12-01T03:00:00.000001", "span": 3,
    "gate_metric": "auc", "blessed": True, "pushed": True,
    "pushed_destination": "/srv/out/tfx_pipeline_output/hypernet-taxi-spans/serving_model/1795755637",
    "verdict": {"blessed": True, "evaluator_blessed": True, "metric": "auc", "value": 0.9412,
                "baseline_value": 0.9388, "reasons": []},
    "run_report": "/srv/out/tfx_pipeline_output/hypernet-taxi-spans/"
                  "report-2026-12-01T03:00:00.000001.html",
}


@pytest.fixture
def spans_config(tmp_path):
    """A taxi config on one real span, outputs under tmp_path."""
    split_spans(TAXI_CSV, str(tmp_path / "data"), spans=3)
    for n in (2, 3):
        os.remove(tmp_path / "data" / f"span-{n}" / "data.csv")
        os.rmdir(tmp_path / "data" / f"span-{n}")
    path = write_config(str(tmp_path / "taxi.yaml"), base=configs.DEFAULT_CONFIG,
                        data_root=str(tmp_path / "data"), output_dir=str(tmp_path / "out"))
    return path, configs.load(path)


@pytest.fixture
def restore_sigterm():
    """local_runner.main installs a SIGTERM handler; the test process gets its own back."""
    old = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, old)


def test_a_line_names_the_run_its_span_verdict_and_pushed_version(spans_config):
    _, config = spans_config
    line = run_history.record(config, run_id=SUMMARY["run"], status="succeeded", exit_code=0,
                              started="2026-12-01T03:00:00+00:00",
                              ended="2026-12-01T03:04:00+00:00", summary=SUMMARY, span=1)
    assert line == {
        "run_id": "2026-12-01T03:00:00.000001", "pipeline": config.name,
        "status": "succeeded", "exit_code": 0, "error": None,
        "span": 3,  # ML Metadata's, over the runner's guess
        "blessed": True, "pushed": True, "version": "1795755637",
        "pushed_destination": SUMMARY["pushed_destination"],
        "gate_metric": "auc", "value": 0.9412, "baseline_value": 0.9388, "reasons": [],
        "report": SUMMARY["run_report"],
        "started": "2026-12-01T03:00:00+00:00", "ended": "2026-12-01T03:04:00+00:00",
        "config": config.source,
    }
    failed = run_history.record(config, run_id=None, status="failed", exit_code=1, started="a",
                                ended="b", span=1, error="ConfigError: no CSV file")
    assert (failed["span"], failed["blessed"], failed["pushed"], failed["version"],
            failed["reasons"]) == (1, None, False, None, [])
    with pytest.raises(ValueError, match="status"):
        run_history.record(config, run_id=None, status="ok", exit_code=0, started="a", ended="b")


@pytest.mark.parametrize("where", ["local", "ram"])
def test_append_adds_one_line_per_run_through_gfile(spans_config, where, tmp_path):
    """Local, and a non-local filesystem (TensorFlow's ram://, no append mode needed)."""
    _, config = spans_config
    if where == "ram":
        import dataclasses

        config = dataclasses.replace(config, output_dir=f"ram://{tmp_path.name}/out")
    assert run_history.read(config) == []
    for n in range(3):
        line = run_history.record(config, run_id=f"run-{n}", status="succeeded", exit_code=0,
                                  started="a", ended="b", summary=SUMMARY)
        path = run_history.append(config, line)
    assert path == f"{config.pipeline_root}/runs.jsonl"
    assert [r["run_id"] for r in run_history.read(config)] == ["run-0", "run-1", "run-2"]
    import tensorflow as tf

    assert tf.io.gfile.listdir(config.pipeline_root) == ["runs.jsonl"]  # no temp file left


def test_the_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    path = run_lock.lock_path(str(tmp_path / "md" / "metadata.db"))
    assert path == str(tmp_path / "md" / "run.lock")
    with run_lock.hold(path, "p") as me:
        assert me["pid"] == os.getpid()
        with pytest.raises(run_lock.RunInProgress) as e:
            with run_lock.hold(path, "p", if_running="exit"):
                pass
        assert str(e.value).startswith(
            f"another run of pipeline p is in progress (pid {os.getpid()} on ")
        assert e.value.holder["pid"] == os.getpid()
        t0 = time.monotonic()
        with pytest.raises(run_lock.RunInProgress, match="gave up after waiting"):
            with run_lock.hold(path, "p", if_running="wait", timeout=0.3, poll_seconds=0.1):
                pass
        assert time.monotonic() - t0 < 5
    with run_lock.hold(path, "p", if_running="exit"):  # released with the block
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    path = str(tmp_path / "run.lock")
    code = ("import sys, time; from pipeline import run_lock\n"
            "with run_lock.hold(sys.argv[1], 'p'):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    child = subprocess.Popen([sys.executable, "-c", code, path], cwd=ROOT, env=pipeline_env(),
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(run_lock.RunInProgress, match=f"pid {child.pid} "):
            with run_lock.hold(path, "p"):
                pass
    finally:
        child.kill()
        child.wait()
    with run_lock.hold(path, "p"):  # the kernel released it with the process
        pass


def test_a_run_started_while_another_holds_the_lock_exits_75_and_is_recorded(
        spans_config, capsys, restore_sigterm):
    path, config = spans_config
    with run_lock.hold(run_lock.lock_path(config.metadata_path), config.name):
        code = local_runner.main(["--retrain", "--config", path])
    assert code == run_lock.EX_TEMPFAIL == 75
    err = capsys.readouterr().err
    assert f"another run of pipeline {config.name} is in progress (pid {os.getpid()}" in err
    assert "--if-running=wait waits for it" in err
    [line] = run_history.read(config)
    assert (line["status"], line["exit_code"], line["run_id"], line["span"], line["pushed"]) == \
        ("skipped", 75, None, 1, False)
    assert "is in progress" in line["error"]
    assert not os.path.exists(config.metadata_path)  # nothing ran


def test_a_run_that_fails_before_training_is_recorded(spans_config, restore_sigterm):
    path, config = spans_config
    os.makedirs(os.path.join(config.data_root, "span-2"))  # an empty newest span
    with pytest.raises(configs.ConfigError, match="an empty span"):
        local_runner.main(["--retrain", "--config", path])
    [line] = run_history.read(config)
    assert (line["status"], line["exit_code"], line["span"], line["blessed"]) == \
        ("failed", 1, 2, None)
    assert line["error"].startswith("ConfigError: ") and "span-2" in line["error"]
    json.dumps(line)  # machine-readable as is
