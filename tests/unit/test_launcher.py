"""The local multi-worker launcher's process handling, with stand-in workers (no TensorFlow).

Run as a script, this module is a stand-in worker: `python -m tests.unit.test_launcher SPEC INDEX`
records its $TF_CONFIG, prints lines, and fails or hangs as the spec says.
"""

from __future__ import annotations

import json
import os
import sys
import time

import pytest

from trainer import launcher

MODULE = "tests.unit.test_launcher"


def fake_worker(spec_path: str, index: int) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    with open(os.path.join(spec["out"], f"worker-{index}.json"), "w") as f:
        json.dump({"tf_config": json.loads(os.environ["TF_CONFIG"]), "pid": os.getpid()}, f)
    print(f"hello from {index}", flush=True)
    if index == spec.get("fail"):
        print("Traceback: something broke", flush=True)
        return 3
    if index == spec.get("hang"):  # a peer waiting on the failed worker's collectives
        time.sleep(600)
    return 0


def write_spec(tmp_path, **extra) -> str:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"out": str(tmp_path), **extra}))
    return str(path)


def test_every_worker_gets_its_own_tf_config_in_one_cluster(tmp_path):
    launcher.launch(write_spec(tmp_path), 3, module=MODULE, timeout_s=120)
    configs = [json.loads((tmp_path / f"worker-{i}.json").read_text())["tf_config"]
               for i in range(3)]
    clusters = {json.dumps(c["cluster"]) for c in configs}
    assert len(clusters) == 1
    addresses = configs[0]["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]


def test_a_failed_worker_is_named_with_its_output_and_the_others_stopped(tmp_path):
    started = time.monotonic()
    with pytest.raises(launcher.WorkerFailed) as err:
        launcher.launch(write_spec(tmp_path, fail=1, hang=0), 2, module=MODULE, timeout_s=120)
    assert time.monotonic() - started < 60  # worker 0 was not waited for
    message = str(err.value)
    assert "training worker 1 of 2 exited with code 3" in message
    assert "Traceback: something broke" in message
    pid = json.loads((tmp_path / "worker-0.json").read_text())["pid"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_workers_launch_only_without_a_cluster(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert launcher.should_launch({"training": {"workers": 2}})
    assert not launcher.should_launch({"training": {"workers": 1}})
    monkeypatch.setenv("TF_CONFIG", launcher.tf_config(["127.0.0.1:1"], 0))
    assert not launcher.should_launch({"training": {"workers": 2}})  # one replica of Vertex's


if __name__ == "__main__":
    sys.exit(fake_worker(sys.argv[1], int(sys.argv[2])))
