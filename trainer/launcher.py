"""Multi-worker training on one machine: run_fn starts `training.workers` processes.

Why processes: MultiWorkerMirroredStrategy configures TensorFlow's collective ops, which
must happen before TensorFlow's eager context starts, and LocalDagRunner runs the Trainer
in a process where earlier components already started it. So run_fn, given workers > 1
and no $TF_CONFIG (`python -m pipeline.local_runner --train-workers N`), launches: it
writes its FnArgs to a spec file, starts N worker processes on free localhost ports, each
with its own $TF_CONFIG (worker 0 is the chief and exports to serving_model_dir, as
`trainer.task.train_and_export` does), streams their output into the Trainer's log with
the worker's index, and fails naming the worker (and its last lines) if one fails,
stopping the others, which would wait on their dead peer forever.

Where a cluster sets $TF_CONFIG itself (Vertex AI: the Kubeflow compile with workers > 1),
every replica runs run_fn as one worker and nothing is launched.

    python -m trainer.launcher SPEC.json INDEX    # one worker; launch() starts these
"""

from __future__ import annotations

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import collections
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from absl import logging

CLUSTER_FILE = "cluster.json"  # in model_run: how many workers ran, and as what
TAIL_LINES = 40  # of a failed worker's output, in the error
STOP_GRACE_S = 10.0
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPEC_KEYS = ("train_files", "eval_files", "train_steps", "eval_steps", "transform_output",
              "serving_model_dir", "model_run_dir", "base_model", "custom_config")


class WorkerFailed(RuntimeError):
    """A training worker exited non-zero; the message names it and ends with its output."""


def should_launch(custom_config: dict[str, Any]) -> bool:
    """Whether run_fn starts the workers: several configured, and no cluster around us."""
    workers = int(custom_config.get("training", {}).get("workers", 1))
    return workers > 1 and not os.environ.get("TF_CONFIG")


def free_addresses(count: int) -> list[str]:
    """`count` localhost addresses on ports free now (held together, so all distinct)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(addresses: Sequence[str], index: int) -> str:
    """Worker `index`'s $TF_CONFIG: a cluster of workers only, so worker 0 is the chief."""
    return json.dumps({"cluster": {"worker": list(addresses)},
                       "task": {"type": "worker", "index": index}})


def launch_from_fn_args(fn_args: Any) -> dict[str, Any]:
    """run_fn's launcher: the FnArgs to a spec file, then launch() the configured workers."""
    spec = {key: getattr(fn_args, key) for key in _SPEC_KEYS}
    workers = int(spec["custom_config"]["training"]["workers"])
    with tempfile.TemporaryDirectory(prefix="hypernet-workers-") as scratch:
        spec["results_dir"] = scratch
        spec_path = os.path.join(scratch, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        started = time.monotonic()
        launch(spec_path, workers)
        results = [_read_json(os.path.join(scratch, f"worker-{i}.json")) for i in range(workers)]
    cluster = {"workers": workers, "seconds": round(time.monotonic() - started, 1),
               "replicas_in_sync": [r["replicas_in_sync"] for r in results],
               "chief": [r["chief"] for r in results]}
    import tensorflow as tf

    tf.io.gfile.makedirs(spec["model_run_dir"])
    with tf.io.gfile.GFile(os.path.join(spec["model_run_dir"], CLUSTER_FILE), "w") as f:
        json.dump(cluster, f)
    logging.info("multi-worker training done: %s", cluster)
    return cluster


def launch(spec_path: str, workers: int, module: str = "trainer.launcher",
           timeout_s: float | None = None) -> None:
    """Run `python -m MODULE SPEC INDEX` for each worker under one cluster; wait for all.

    Raises WorkerFailed for the first worker to fail (the others are stopped), or for the
    chief when the cluster outlives `timeout_s`.
    """
    addresses = free_addresses(workers)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"  # their lines reach the log as they are written
    procs: list[subprocess.Popen[str]] = []
    tails: list[collections.deque[str]] = []
    readers: list[threading.Thread] = []
    logging.info("starting %d training workers on %s", workers, ", ".join(addresses))
    try:
        for index in range(workers):
            proc = subprocess.Popen(
                [sys.executable, "-m", module, spec_path, str(index)], cwd=_ROOT,
                env={**env, "TF_CONFIG": tf_config(addresses, index)}, text=True,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=1)
            tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
            assert proc.stdout is not None
            reader = threading.Thread(target=_relay, args=(index, proc.stdout, tail), daemon=True)
            reader.start()
            procs.append(proc)
            tails.append(tail)
            readers.append(reader)
        _wait(procs, readers, tails, timeout_s)
    finally:
        _stop(procs)


def _wait(procs: list[subprocess.Popen[str]], readers: list[threading.Thread],
          tails: list[collections.deque[str]], timeout_s: float | None) -> None:
    """Poll until every worker exits 0; the first failure (or the timeout) raises."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        codes = [p.poll() for p in procs]
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            index, code = failed[0]
            readers[index].join(timeout=5)  # its last lines
            raise WorkerFailed(f"training worker {index} of {len(procs)} exited with code "
                               f"{code}; its last lines:\n" + "".join(tails[index]))
        if all(c == 0 for c in codes):
            for reader in readers:
                reader.join(timeout=5)
            return
        if deadline is not None and time.monotonic() > deadline:
            raise WorkerFailed(f"training workers still running after {timeout_s} s; worker 0's "
                               "last lines:\n" + "".join(tails[0]))
        time.sleep(0.5)


def _relay(index: int, stream: IO[str], tail: collections.deque[str]) -> None:
    """Each line of a worker's output into our log, prefixed with its index."""
    for line in stream:
        tail.append(line)
        logging.info("[worker %d] %s", index, line.rstrip("\n"))


def _stop(procs: list[subprocess.Popen[str]]) -> None:
    """Terminate the workers still running (then kill what ignores it)."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def await_chief_export(serving_model_dir: str, timeout_s: float = 600.0) -> None:
    """On a cluster's non-chief replica: return once the chief's export exists.

    TFX's Trainer executor fails every replica whose serving_model_dir is missing after
    run_fn, and only the chief writes it (in a shared bucket); a worker may finish first.
    """
    import tensorflow as tf

    deadline = time.monotonic() + timeout_s
    while not tf.io.gfile.exists(serving_model_dir) and time.monotonic() < deadline:
        time.sleep(2.0)


def _read_json(path: str) -> dict[str, Any]:
    with open(path) as f:
        result: dict[str, Any] = json.load(f)
    return result


def run_worker(spec_path: str) -> Any:
    """One worker: run_fn's training and export on the spec's FnArgs; returns the model.

    The data accessor is rebuilt as the Trainer builds it for tf.Example payloads (ours
    reads the files itself, see trainer.task.make_dataset, but run_fn's contract has one).
    """
    from tfx.components.trainer.fn_args_utils import DataAccessor, FnArgs
    from tfx_bsl.public import tfxio

    from trainer import task

    spec = _read_json(spec_path)

    def dataset_factory(file_pattern: Any, options: Any, schema: Any) -> Any:
        return tfxio.TFExampleRecord(file_pattern=file_pattern, schema=schema) \
            .TensorFlowDataset(options)

    fn_args = FnArgs(
        **{k: spec[k] for k in _SPEC_KEYS}, transform_graph_path=spec["transform_output"],
        data_accessor=DataAccessor(tf_dataset_factory=dataset_factory,
                                   record_batch_factory=None, data_view_decode_fn=None))
    return task.train_and_export(fn_args)


def main(argv: list[str]) -> int:
    """`python -m trainer.launcher SPEC.json INDEX`: train as worker INDEX, record its role."""
    spec_path, index = argv[0], int(argv[1])
    logging.set_verbosity(logging.INFO)
    from trainer import task

    model = run_worker(spec_path)
    strategy = model.distribute_strategy
    result = {"index": index, "replicas_in_sync": int(strategy.num_replicas_in_sync),
              "chief": task.is_chief(strategy)}
    logging.info("worker %d: %d replicas in sync, chief: %s", index,
                 result["replicas_in_sync"], result["chief"])
    results_dir = _read_json(spec_path).get("results_dir")
    if results_dir:
        with open(os.path.join(results_dir, f"worker-{index}.json"), "w") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
