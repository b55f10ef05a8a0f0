"""Whole pipeline, ours vs the official TFX taxi template, on the same CSV, alternating.

    python bench/pipeline_vs_template.py [--repeats 3] [--workdir DIR]

The template comes from the installed wheel (`tfx template copy --model=taxi`) with its
staged components enabled (each `# components.append(...)` line uncommented) and AUC
and ExampleCount added to its TFMA metrics so both models report the same figures; its
data folder holds data/taxi/data.csv. Each repeat runs both pipelines from scratch
(fresh output folders, so no cache), each as users do: `tfx pipeline create --engine
local`, then the timed `tfx run create --engine local` until the Pusher is done.
Four runs per repeat, so that a ratio compares pipelines, not process patches or budgets:
- `ours`: the default config;
- `ours_equal_steps`: one candidate model trained for the template's 1,000 steps at its
  batch of 40 (no early stop), the same training work as the template's Trainer;
- `template`: as shipped;
- `template_tuned`: the template under the same Beam process improvements as ours
  (`pipeline/in_process_beam.py` and our Beam arguments).
Prints one JSON line: median seconds of each, the ratios (`ratio` = ours / template_tuned,
`ratio_equal_steps` = ours_equal_steps / template_tuned, `ratio_untuned` = ours /
template), every model's test or eval accuracy and AUC, and the median seconds per
component (from ML Metadata execution times).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pipeline.environment  # noqa: F401 - first: Keras 2 before TensorFlow is imported

# isort: split

import yaml

from bench.machine import ROOT, cpu_info
from pipeline import configs
from trainer.eval_results import slice_metrics

TFX = os.path.join(os.path.dirname(sys.executable), "tfx")
TEMPLATE_NAME = "taxi-template"
TEMPLATE_STEPS, TEMPLATE_BATCH = 1000, 40  # the template's TRAIN_NUM_STEPS, TRAIN_BATCH_SIZE
STAGED = ("statistics_gen", "schema_gen", "example_validator", "transform", "trainer",
          "model_resolver", "evaluator", "pusher")


def sh(args: list[str], cwd: str, env: dict[str, str]) -> None:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} (in {cwd}) failed:\n{done.stderr[-3000:]}")


def copy_template(dest: str, env: dict[str, str]) -> None:
    sh([TFX, "template", "copy", "--model=taxi", f"--pipeline_name={TEMPLATE_NAME}",
        f"--destination_path={dest}"], cwd=ROOT, env=env)
    path = os.path.join(dest, "pipeline", "pipeline.py")
    with open(path) as f:
        text = f.read()
    for name in STAGED:
        text = re.sub(rf"^(\s*)# (components\.append\({name}\))", r"\1\2", text, flags=re.M)
    text = text.replace("tfma.MetricsSpec(metrics=[",
                        "tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name='AUC'), "
                        "tfma.MetricConfig(class_name='ExampleCount'),", 1)
    with open(path, "w") as f:
        f.write(text)
    enabled = len(re.findall(r"^\s*components\.append\(", text, flags=re.M))
    if enabled < len(STAGED):
        raise SystemExit(f"only {enabled} components enabled in {path}: the template changed")
    data = os.path.join(dest, "data")
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    shutil.copy(os.path.join(ROOT, "data", "taxi", "data.csv"), data)


def write_tuned_runner(template: str) -> str:
    """local_runner.py plus our Beam arguments and process improvements; returns its name.

    The template has its own `pipeline` package, so ours is loaded by file path.
    """
    with open(os.path.join(template, "local_runner.py")) as f:
        text = f.read()
    beam_args = configs.load(configs.DEFAULT_CONFIG).beam.pipeline_args()
    prelude = (
        "import importlib.util as _util\n"
        f"_spec = _util.spec_from_file_location('hypernet_in_process_beam', "
        f"{os.path.join(ROOT, 'pipeline', 'in_process_beam.py')!r})\n"
        "_beam = _util.module_from_spec(_spec)\n"
        "_spec.loader.exec_module(_beam)\n"
        f"BEAM_ARGS = {beam_args!r}\n"
        "_beam.tune(BEAM_ARGS)\n")
    text, n = re.subn(r"# beam_pipeline_args=configs\.\n\s*# BIG_QUERY_WITH_DIRECT_RUNNER_BEAM_PIPELINE_ARGS,",
                      "beam_pipeline_args=BEAM_ARGS,", text)
    if n != 1:
        raise SystemExit("the template's local_runner.py changed: no beam_pipeline_args slot")
    text = text.replace("\ndef run():", f"\n{prelude}\n\ndef run():", 1)
    with open(os.path.join(template, "local_runner_tuned.py"), "w") as f:
        f.write(text)
    return "local_runner_tuned.py"


def component_seconds(metadata_path: str) -> dict[str, float]:
    """Seconds per component of the only run in this store (MLMD create -> last update)."""
    from ml_metadata import metadata_store
    from tfx.orchestration import metadata

    store = metadata_store.MetadataStore(metadata.sqlite_metadata_connection_config(metadata_path))
    types = {t.id: t.name.rsplit(".", 1)[-1] for t in store.get_execution_types()}
    return {types[e.type_id]: (e.last_update_time_since_epoch - e.create_time_since_epoch) / 1e3
            for e in store.get_executions()}


def timed_run(cwd: str, runner: str, name: str, env: dict[str, str]) -> float:
    sh([TFX, "pipeline", "create", "--engine", "local", "--pipeline_path", runner], cwd, env)
    start = time.perf_counter()
    sh([TFX, "run", "create", "--engine", "local", "--pipeline_name", name], cwd, env)
    return time.perf_counter() - start


EQUAL_STEPS = {
    # One candidate (the default's first, so it follows the default) and no intercepts
    # fitted after it: no model selection on eval.
    "model": {"candidates": [dataclasses.asdict(configs.DEFAULT_CANDIDATES[0])],
              "intercept_strengths": []},
    "training": {"train_steps": TEMPLATE_STEPS, "batch_size": TEMPLATE_BATCH, "epochs": 10,
                 "early_stopping_patience": 10},
}


def ours_config(out: str, equal_steps: bool = False) -> dict:
    """The default config as a dict, writing under `out`; at the template's budget if asked."""
    with open(configs.DEFAULT_CONFIG) as f:
        data = yaml.safe_load(f)
    data.update(output_dir=out, data_root=os.path.join(ROOT, "data", "taxi"),
                schema_file=os.path.join(configs.PACKAGE_DIR, "schema", "taxi.pbtxt"))
    if equal_steps:
        for section, values in EQUAL_STEPS.items():
            data[section] = {**(data.get(section) or {}), **values}
    return data


def run_ours(work: str, base_env: dict[str, str], equal_steps: bool = False) -> dict:
    out = tempfile.mkdtemp(prefix="ours-", dir=work)
    data = ours_config(out, equal_steps)
    config_path = os.path.join(out, "taxi.yaml")
    with open(config_path, "w") as f:
        yaml.safe_dump(data, f)
    env = dict(base_env, HYPERNET_CONFIG=config_path, LOCAL_HOME=os.path.join(out, "cli"))
    seconds = timed_run(ROOT, "pipeline/local_runner.py", data["name"], env)
    config = configs.load(config_path)
    from pipeline.summary import summarize

    overall = summarize(config)["metrics"]["overall"]
    return {"seconds": seconds, "accuracy": overall["binary_accuracy"], "auc": overall["auc"],
            "components": component_seconds(config.metadata_path)}


def run_template(template: str, base_env: dict[str, str],
                 runner: str = "local_runner.py") -> dict:
    for folder in ("tfx_pipeline_output", "tfx_metadata", "cli"):
        shutil.rmtree(os.path.join(template, folder), ignore_errors=True)
    env = dict(base_env, LOCAL_HOME=os.path.join(template, "cli"))
    seconds = timed_run(template, runner, TEMPLATE_NAME, env)
    root = os.path.join(template, "tfx_pipeline_output", TEMPLATE_NAME, "Evaluator", "evaluation")
    (evaluation,) = [os.path.join(root, d) for d in os.listdir(root)]
    overall = slice_metrics(evaluation)["overall"]
    return {"seconds": seconds, "accuracy": overall["binary_accuracy"], "auc": overall["auc"],
            "components": component_seconds(
                os.path.join(template, "tfx_metadata", TEMPLATE_NAME, "metadata.db"))}


def medians(runs: list[dict]) -> dict:
    per_component = defaultdict(list)
    for r in runs:
        for name, s in r["components"].items():
            per_component[name].append(s)
    return {"seconds": statistics.median(r["seconds"] for r in runs),
            "accuracy": statistics.median(r["accuracy"] for r in runs),
            "auc": statistics.median(r["auc"] for r in runs),
            "components": {k: round(statistics.median(v), 1) for k, v in per_component.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="pipeline-bench-", dir=args.workdir)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", NO_GCE_CHECK="true",
               PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
    template = os.path.join(work, "template")
    copy_template(template, env)
    tuned = write_tuned_runner(template)
    env_template = dict(env, PYTHONPATH=os.pathsep.join([template, env["PYTHONPATH"]]))
    kinds = {
        "ours": lambda: run_ours(work, env),
        "ours_equal_steps": lambda: run_ours(work, env, equal_steps=True),
        "template": lambda: run_template(template, env_template),
        "template_tuned": lambda: run_template(template, env_template, tuned),
    }
    runs: dict[str, list[dict]] = defaultdict(list)
    for i in range(args.repeats):  # alternate, so drift hits all alike
        for kind, run in kinds.items():
            runs[kind].append(run())
        print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]['seconds']:.1f} s"
                                              for k, v in runs.items()),
              file=sys.stderr, flush=True)
    m = {kind: medians(r) for kind, r in runs.items()}
    line: dict = {"bench": "pipeline", "repeats": args.repeats,
                  "ours_s": round(m["ours"]["seconds"], 1),
                  "template_s": round(m["template_tuned"]["seconds"], 1),
                  "ratio": round(m["ours"]["seconds"] / m["template_tuned"]["seconds"], 2),
                  "ratio_equal_steps": round(m["ours_equal_steps"]["seconds"]
                                             / m["template_tuned"]["seconds"], 2),
                  "ratio_untuned": round(m["ours"]["seconds"] / m["template"]["seconds"], 2),
                  "equal_steps": {"steps": TEMPLATE_STEPS, "batch": TEMPLATE_BATCH}}
    for kind, figures in m.items():
        line[f"{kind}_seconds"] = round(figures["seconds"], 1)
        line[f"{kind}_accuracy"] = round(figures["accuracy"], 4)
        line[f"{kind}_auc"] = round(figures["auc"], 4)
        line[f"{kind}_components_s"] = figures["components"]
    print(json.dumps({**line, **cpu_info()}), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
