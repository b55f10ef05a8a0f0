"""Beam's DirectRunner inside the LocalDagRunner's process: three costs it need not pay.

Each is measured on the taxi sample (README, "Benchmarks") and applies only to this
process; cluster runners and their workers are left as they are.
"""

from __future__ import annotations

import logging

DIRECT_RUNNERS = (None, "DirectRunner", "direct", "BundleBasedDirectRunner")


def tune(beam_args: list[str]) -> None:
    apply_in_process_cache_size(beam_args)
    skip_redundant_dill_log_levels()
    skip_tfx_sdist_for_direct_runner(beam_args)


def apply_in_process_cache_size(beam_args: list[str]) -> int:
    """Give Beam's in-memory DirectRunner the side-input cache size that the args ask for.

    Beam's worker processes read --max_cache_memory_usage_mb; the in-memory runner, which
    runs every component's Beam work in this process, hard-codes 100 MB (Beam 2.61,
    fn_api_runner/worker_handlers.py). Returns the size applied.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    size = PipelineOptions(beam_args).view_as(WorkerOptions).max_cache_memory_usage_mb
    worker_handlers.STATE_CACHE_SIZE_MB = size
    return size


def skip_redundant_dill_log_levels() -> None:
    """Make dill's trace switch set its logger's level only when that level changes.

    Beam wraps every pickle and unpickle in `dill.dill._trace(False)` (thousands per
    run: each DoFn of each bundle), and `Logger.setLevel` clears the cache of every
    logger in the process (~1,000 with TFX loaded) under logging's lock: 0.7 s of
    Transform's 13 s, and as much again across the other Beam components. The level
    it sets is nearly always the one already set.
    """
    import dill

    log = dill.dill.log

    def trace(boolean: bool) -> None:
        level = logging.INFO if boolean else logging.WARN
        if log.level != level:
            log.setLevel(level)

    dill.dill._trace = trace


def skip_tfx_sdist_for_direct_runner(beam_args: list[str]) -> bool:
    """Stop TFX packaging itself for Beam workers that already run this installation.

    Unless the args name a package, setup file or container, every Beam component
    copies the installed tfx folder (49 MB) to a new temporary directory and builds an
    sdist of it for the workers: 1.5 s per component, 6 s per taxi run, and the copies
    are never deleted. The DirectRunner's workers are this process or its children, in
    this environment. Returns whether the packaging is skipped.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from tfx.utils import dependency_utils

    if PipelineOptions(beam_args).view_as(StandardOptions).runner not in DIRECT_RUNNERS:
        return False
    dependency_utils.make_beam_dependency_flags = lambda args: list(args)
    return True
