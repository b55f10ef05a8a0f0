"""`make bench`: every benchmark, one results file, one Markdown table.

    python bench/run_all.py [--only train_step,quality,serving,scale,pipeline,grouped] [--quick]
                            [--scale-rows 15000,150000,1500000]

Runs each bench script in its own process (so one's threads and memory do not colour
another's), collects the JSON lines they print, appends them to
bench/results/<YYYY-MM-DD>.jsonl and prints a Markdown table of the headline figures
with each reference next to ours. `--quick` uses fewer repeats and sizes (a smoke run,
not figures to quote). The serving bench needs a finished run: if the default
pipeline has pushed nothing yet, the pipeline runs first (python -m pipeline.local_runner).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import ROOT, cpu_info


def _train_step(*flags: str) -> tuple[list[str], list[str]]:
    """bench/train_step.py with `flags`: 300 timed steps, or 30 with --quick."""
    return (["bench/train_step.py", *flags, "--steps", "300"],
            ["bench/train_step.py", *flags, "--steps", "30"])


BENCHES = {
    # name: (arguments, --quick arguments)
    # The step at taxi's context, and at a synthetic one of 5 and of 2,410 uniform values
    # (goals: ratio <= 1.5, 1.5 and 2 to the plain MLP), for the first candidate (film) and
    # for lowrank (two of the three default candidates, the one eval keeps on taxi).
    "train_step": _train_step(),
    "train_step_5": _train_step("--contexts", "5"),
    "train_step_2410": _train_step("--contexts", "2410"),
    "train_step_lowrank": _train_step("--kind", "lowrank"),
    "train_step_5_lowrank": _train_step("--kind", "lowrank", "--contexts", "5"),
    "train_step_2410_lowrank": _train_step("--kind", "lowrank", "--contexts", "2410"),
    "quality": (["bench/quality.py", "--seeds", "3"], ["bench/quality.py", "--seeds", "1"]),
    "serving": (["bench/serving.py", "--repeats", "500"], ["bench/serving.py", "--repeats", "30"]),
    "scale": (["bench/scale.py", "--rows", "15000,150000"], ["bench/scale.py", "--rows", "15000"]),
    "pipeline": (["bench/pipeline_vs_template.py", "--repeats", "3"],
                 ["bench/pipeline_vs_template.py", "--repeats", "1"]),
    # Six tables (~20 min on 2 shared cores); --quick: bikeshare and taxi, one seed.
    "grouped": (["bench/grouped.py", "--seeds", "3"], ["bench/grouped.py", "--quick"]),
}


def ensure_pushed_model() -> None:
    from pipeline import configs

    config = configs.load(None)
    if not os.path.isdir(config.serving_target_networks_dir) or not os.listdir(
            config.serving_target_networks_dir):
        print("bench: no pushed model yet; running the pipeline first", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pipeline.local_runner"], cwd=ROOT, check=True)


def run(name: str, argv: Sequence[str]) -> list[dict]:
    if name == "serving":
        ensure_pushed_model()
    print(f"bench: {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, *argv], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0:
        lines.append({"bench": name, "error": f"exit code {done.returncode}"})
    return lines


def _f(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(results: Sequence[dict]) -> str:
    """Headline figures, ours next to the reference, one row per measured figure."""
    rows = [("bench", "figure", "ours", "reference", "reference is")]
    for r in results:
        kind = r.get("bench")
        if "error" in r:
            rows.append((kind, "failed", r["error"], "", ""))
        elif kind == "train_step":
            contexts = (f"{r.get('contexts')} contexts ({r.get('context_source')}), "
                        f"{r.get('generator_kind')}")
            rows.append((kind, f"ms per step, batch {r['batch']}, {contexts}", _f(r["hyper_ms"]),
                         _f(r["plain_ms"]), f"plain MLP (ratio {r['ratio']})"))
            if r.get("generator_gflops") is not None:  # "full" kind only
                rows.append((kind, "generator GFLOP/s", _f(r["generator_gflops"]), "", ""))
        elif kind == "quality":
            split = r.get("split", "eval")
            rows.append((kind, f"{split} AUC", _f(r["auc"], 4), _f(r["plain_mlp_auc"], 4),
                         f"plain MLP; GBT {_f(r['gbt_auc'], 4)}"))
            rows.append((kind, f"{split} accuracy", _f(r["accuracy"], 4),
                         _f(r["plain_mlp_accuracy"], 4), f"plain MLP; GBT {_f(r['gbt_accuracy'], 4)}"))
        elif kind == "serving":
            rows.append((kind, f"ms per call, batch {r['batch']}", _f(r["target_ms"]),
                         _f(r["plain_ms"]), f"plain MLP; hypernetwork {_f(r['hyper_ms'])}"))
        elif kind == "scale":
            rows.append((kind, f"ExampleGen→Transform, {r['rows']} rows", f"{r['seconds']} s",
                         "", f"{r['rows_per_s']} rows/s"))
            for component, rate in (r.get("component_rows_per_s") or {}).items():
                rows.append((kind, f"{component}, {r['rows']} rows", f"{rate} rows/s", "", ""))
        elif kind == "pipeline":
            rows.append((kind, "whole pipeline, s (median)", _f(r["ours_s"], 1),
                         _f(r["template_s"], 1), f"TFX taxi template, same Beam improvements "
                         f"(ratio {r['ratio']}; as shipped: {r.get('ratio_untuned')})"))
            if r.get("ratio_equal_steps") is not None:
                steps = r["equal_steps"]
                rows.append((kind, f"whole pipeline, s, {steps['steps']} steps of {steps['batch']}",
                             _f(r["ours_equal_steps_seconds"], 1), _f(r["template_s"], 1),
                             f"same template (ratio {r['ratio_equal_steps']}; AUC "
                             f"{_f(r['ours_equal_steps_auc'], 3)} vs {_f(r['template_tuned_auc'], 3)})"))
        elif kind == "grouped" and "best_anchor" in r:  # one summary row per table
            rows.append((kind, f"{r['dataset']}: test {r['metric'].upper()}", _f(r["ours"], 4),
                         _f(r["best_anchor_value"], 4),
                         f"best anchor {r['best_anchor']} (ratio {r['ratio']}: "
                         f"{'win' if r['wins'] else 'loss'})"))
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows[1:]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(BENCHES))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scale-rows", default=None, metavar="N,N,...",
                        help="the scale bench's sizes instead of 15000,150000 (the README's "
                        "1.5M-row line: --scale-rows 15000,150000,1500000, ~15 min more)")
    args = parser.parse_args()
    if args.scale_rows:
        BENCHES["scale"] = (["bench/scale.py", "--rows", args.scale_rows],) * 2
    results: list[dict] = []
    for name in args.only.split(","):
        full, quick = BENCHES[name]
        results += run(name, quick if args.quick else full)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    out_dir = os.path.join(ROOT, "bench", "results")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{stamp:%Y-%m-%d}.jsonl")
    with open(path, "a") as f:
        for r in results:
            f.write(json.dumps({**r, "at": f"{stamp:%Y-%m-%dT%H:%M:%SZ}",
                                "quick": args.quick}) + "\n")
    print(f"machine: {json.dumps(cpu_info())}; results appended to {os.path.relpath(path, ROOT)}")
    print(table(results))


if __name__ == "__main__":
    main()
