"""Run the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam DirectRunner.

    python -m pipeline.local_runner [--config FILE] [--retrain] [--if-running {exit,wait}]
        [--wait-timeout SECONDS] [--direct_running_mode multi_processing
        --direct_num_workers 0] [--beam_arg=--NAME=VALUE ...] [--train-workers N]
    tfx pipeline create --engine local --pipeline_path pipeline/local_runner.py
    tfx run create --engine local --pipeline_name hypernet-taxi

The TFX CLI runs this file as a script with no arguments: it reads the config
from $HYPERNET_CONFIG (default pipeline/taxi.yaml).

A run holds its pipeline's run lock (pipeline/run_lock.py) from start to end: a second
run of the same pipeline exits with EX_TEMPFAIL (75) or waits. The lock is taken where
the run really starts (the runner's run_with_ir), so `tfx pipeline create`, which runs
this file with the run bypassed, never takes it. Each run, failed or skipped ones too,
ends with one line in <pipeline_root>/runs.jsonl (pipeline/run_history.py).
"""

import os
import sys

# Run as a script (the TFX CLI does), this file's folder comes first on sys.path and its
# pipeline.py would shadow the `pipeline` package: the project root takes its place.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import argparse
import contextlib
import dataclasses
import datetime
import signal
from typing import Any

from absl import logging
from tfx.dsl.compiler import constants
from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
from tfx.orchestration.pipeline import Pipeline
from tfx.orchestration.portable import runtime_parameter_utils

from pipeline import configs, in_process_beam, run_history, run_lock
from pipeline.inputs import check_data
from pipeline.pipeline import create_pipeline
from pipeline.split_spans import stale_spans, stale_spans_message


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="YAML config (default: $HYPERNET_CONFIG "
                        "or pipeline/taxi.yaml)")
    parser.add_argument("--direct_running_mode", default=None,
                        choices=["in_memory", "multi_threading", "multi_processing"])
    parser.add_argument("--direct_num_workers", type=int, default=None,
                        help="Beam DirectRunner workers (0: one per CPU)")
    parser.add_argument("--beam_arg", action="append", default=[], metavar="--NAME=VALUE",
                        help="an extra Beam pipeline option, repeatable, written with '=': "
                        "--beam_arg=--runner=FlinkRunner (added to the config's beam.extra_args)")
    parser.add_argument("--retrain", action="store_true",
                        help="scheduled retraining: require spans, train on the newest, print "
                        "the verdict (exit 0 even when the model is rejected)")
    parser.add_argument("--if-running", choices=run_lock.IF_RUNNING, default="exit",
                        help="when another run of this pipeline holds its lock: exit at once "
                        f"with code {run_lock.EX_TEMPFAIL} (default), or wait for it")
    parser.add_argument("--wait-timeout", type=float, default=None, metavar="SECONDS",
                        help=f"with --if-running=wait: give up (exit {run_lock.EX_TEMPFAIL}) "
                        "after this long (default: no limit)")
    parser.add_argument("--train-workers", type=int, default=None, metavar="N",
                        help="train in N local worker processes under MultiWorkerMirroredStrategy "
                        "(sets training.workers and training.distribution; the Trainer starts "
                        "them: trainer/launcher.py)")
    return parser.parse_args(argv)


def load_config(args: argparse.Namespace) -> configs.PipelineConfig:
    """The config file with the command line's training workers applied."""
    config = configs.load(args.config)
    if args.train_workers is not None:
        # Part of the Trainer's custom_config: another number of workers, another execution.
        config = configs.with_workers(config, args.train_workers)
    return config


def pipeline_for(args: argparse.Namespace, config: configs.PipelineConfig) -> Pipeline:
    """The checked DAG of this run: inputs and spans are checked before anything starts."""
    if args.retrain and not config.uses_spans:
        raise configs.ConfigError(
            f"--retrain needs spans matching {config.span_pattern!r} under {config.data_root} "
            "(make split-spans writes them from the taxi sample to data/taxi-spans/, read by "
            "pipeline/taxi-spans.yaml)")
    old = stale_spans(config.data_root) if config.uses_spans else []
    if old:
        raise configs.ConfigError(f"{config.source}: {stale_spans_message(config.data_root, old)}")
    check_data(config)
    return create_pipeline(
        config,
        metadata_connection_config=metadata.sqlite_metadata_connection_config(
            config.metadata_path),
        beam_pipeline_args=beam_pipeline_args(config, args),
    )


def beam_pipeline_args(config: configs.PipelineConfig, args: argparse.Namespace) -> list[str]:
    """The config's Beam settings with the command line's applied on top, validated.

    The flags only change how this run executes: the config that travels in the pipeline
    (custom_config, part of the components' cache keys) stays the file's.
    """
    beam = config.beam
    beam = dataclasses.replace(
        beam,
        direct_running_mode=getattr(args, "direct_running_mode", None) or beam.direct_running_mode,
        direct_num_workers=beam.direct_num_workers
        if getattr(args, "direct_num_workers", None) is None else args.direct_num_workers,
        extra_args=(*beam.extra_args, *args.beam_arg))
    return dataclasses.replace(config, beam=beam).beam.pipeline_args()  # replace() validates


class LockedRunner(LocalDagRunner):
    """LocalDagRunner that holds the pipeline's run lock and names the run itself.

    TFX's runner names a run by the clock inside run_with_ir; setting the id first lets
    the history line name the run even when it fails. The lock is entered on `stack`, so
    it stays held until the caller has summarised and recorded the run.
    """

    def __init__(self, config: configs.PipelineConfig, args: argparse.Namespace,
                 stack: contextlib.ExitStack):
        super().__init__()  # type: ignore[no-untyped-call]
        self._config, self._args, self._stack = config, args, stack
        self.run_id: str | None = None  # set once the run really starts

    def run_with_ir(self, pipeline: Any, run_options: Any = None, **kwargs: Any) -> Any:
        self._stack.enter_context(run_lock.hold(
            run_lock.lock_path(self._config.metadata_path), self._config.name,
            if_running=self._args.if_running, timeout=self._args.wait_timeout))
        self.run_id = datetime.datetime.now().isoformat()  # TFX's own format
        runtime_parameter_utils.substitute_runtime_parameter(
            pipeline, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: self.run_id})
        return super().run_with_ir(pipeline, run_options, **kwargs)


def main(argv: list[str]) -> int:
    """Run the pipeline once; the exit code: 0, EX_TEMPFAIL when skipped, else the error's."""
    logging.set_verbosity(logging.INFO)
    args = parse_args(argv)
    if not _is_cli_create():  # a scheduler's SIGTERM still leaves the run's line
        signal.signal(signal.SIGTERM, _terminate)
    started = _now()
    config: configs.PipelineConfig | None = None
    with contextlib.ExitStack() as stack:
        runner: LockedRunner | None = None
        try:
            config = load_config(args)
            runner = LockedRunner(config, args, stack)
            pipeline = pipeline_for(args, config)
            in_process_beam.tune(pipeline.beam_pipeline_args)
            runner.run(pipeline)
        except run_lock.RunInProgress as e:
            print(f"{e}", file=sys.stderr)
            if config is not None:
                _record(config, None, "skipped", run_lock.EX_TEMPFAIL, started, error=str(e))
            return run_lock.EX_TEMPFAIL
        except BaseException as e:
            if config is not None and not _is_cli_create():
                try:
                    _record(config, runner.run_id if runner else None, "failed", _exit_code(e),
                            started, error=f"{type(e).__name__}: {e}")
                except Exception as record_error:  # the run's own error is the one to see
                    logging.error("could not record the failed run: %s", record_error)
            raise
        if runner.run_id is None:  # `tfx pipeline create`: the CLI bypassed the run
            return 0
        summary = _record(config, runner.run_id, "succeeded", 0, started)
        if args.retrain and summary is not None:
            from pipeline.summary import show

            show(config, summary)
    return 0


def _record(config: configs.PipelineConfig, run_id: str | None, status: str, exit_code: int,
            started: str, error: str | None = None) -> dict[str, Any] | None:
    """Append the run's line to runs.jsonl; returns the run's summary (None if unreadable)."""
    from pipeline.summary import summarize

    summary = None
    if run_id:
        try:
            summary = summarize(config, run_id)
        except Exception as e:  # the line must still be written
            logging.error("could not summarise run %s: %s", run_id, e)
            error = error or f"summary failed: {e}"
    try:
        spans = config.spans() if config.uses_spans else []
    except OSError:  # e.g. data_root is gone: the line still goes out
        spans = []
    line = run_history.record(config, run_id=run_id, status=status, exit_code=exit_code,
                              started=started, ended=_now(), summary=summary,
                              span=spans[-1] if spans else None, error=error)
    path = run_history.append(config, line)
    logging.info("run recorded in %s: %s", path, line)
    return summary


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def _is_cli_create() -> bool:
    """Whether the TFX CLI is only reading the pipeline (`tfx pipeline create/update`): it
    runs this file with LocalDagRunner.run wrapped (functools.wraps) to bypass the run."""
    return hasattr(LocalDagRunner.run, "__wrapped__")


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


def _exit_code(e: BaseException) -> int:
    """The exit code Python gives the process for `e` (uncaught: 1)."""
    if isinstance(e, SystemExit):
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if isinstance(e, KeyboardInterrupt):
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
