"""Dependencies point one way: config -> hypernetwork library -> TFX modules -> components -> DAG.

Read from the source (every import statement, function-level ones included), so a change
that reverses an arrow fails here, not in a later refactor.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from tests.support import ROOT, pipeline_env

# Lowest first. A module may import ours only from its own layer or a lower one.
LAYERS = ("config", "library", "tfx_modules", "components", "pipeline")
# The hypernetwork library runs without TFX: it imports none of these.
TFX_PACKAGES = ("tfx", "tfx_bsl", "tensorflow_transform", "tensorflow_model_analysis",
                "apache_beam", "ml_metadata", "tensorflow_data_validation")
OURS = ("pipeline", "trainer", "components", "bench", "tests")
CONFIG_MODULES = ("pipeline.configs", "pipeline.config_sections", "pipeline.environment")


def layer_of(module: str) -> str | None:
    """The layer of one of our modules (dotted name); None for the top (bench, tests)."""
    if module in CONFIG_MODULES:
        return "config"
    if module == "trainer.hypernet" or module.startswith("trainer.hypernet."):
        return "library"
    top = module.split(".")[0]
    return {"trainer": "tfx_modules", "components": "components", "pipeline": "pipeline"}.get(top)


def imported_modules(source: str) -> list[tuple[int, str, list[str]]]:
    """(line, module, names) of every import; `from pkg import mod` counts as pkg.mod."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [alias.name for alias in node.names]
            for name in names:
                candidate = f"{node.module}.{name}"
                is_module = os.path.exists(os.path.join(ROOT, *candidate.split(".")) + ".py")
                found.append((node.lineno, candidate if is_module else node.module, [name]))
    return found


def violations(sources: dict[str, str]) -> list[str]:
    """Every import that points up a layer, into tests/bench, or (library) into TFX."""
    out = []
    for path, source in sorted(sources.items()):
        module = path[:-3].replace(os.sep, ".").removesuffix(".__init__")
        layer = layer_of(module)
        for line, imported, names in imported_modules(source):
            top = imported.split(".")[0]
            where = f"{path}:{line} imports {imported}"
            if layer == "library" and top in TFX_PACKAGES:
                out.append(f"{where}: the hypernetwork library imports no TFX")
            if layer == "config" and top in OURS and imported not in CONFIG_MODULES:
                out.append(f"{where}: the config is a leaf")
            if top not in OURS:
                continue
            if top in ("tests", "bench") and not module.startswith(top):
                out.append(f"{where}: nothing imports the {top}/ folder but itself")
            if module.startswith("bench.") and any(n.startswith("_") for n in names):
                out.append(f"{where}: a benchmark imports a private name {names}")
            target = layer_of(imported)
            if layer is not None and target is not None and LAYERS.index(target) > LAYERS.index(layer):
                out.append(f"{where}: {layer} may not import {target}")
    return list(dict.fromkeys(out))  # `from m import a, b` is one finding


def project_sources() -> dict[str, str]:
    sources = {}
    for folder in ("pipeline", "trainer", "components", "bench"):
        for directory, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(directory, name)
                    with open(path) as f:
                        sources[os.path.relpath(path, ROOT)] = f.read()
    return sources


def test_every_import_points_down():
    sources = project_sources()
    assert {"pipeline/configs.py", "trainer/hypernet/hypernetwork.py", "trainer/task.py",
            "components/verdict.py", "pipeline/pipeline.py"} <= set(sources)
    assert violations(sources) == []


def test_an_upward_import_is_caught():
    sources = project_sources()
    sources["trainer/model.py"] += "\nfrom pipeline.pipeline import create_pipeline\n"
    sources["trainer/hypernet/generator.py"] += "\nimport tensorflow_transform as tft\n"
    sources["pipeline/configs.py"] += "\ndef f():\n    from trainer import features\n"
    sources["components/verdict.py"] += "\nfrom pipeline import summary\n"
    sources["bench/quality.py"] += "\nfrom tests.support import read_csv\nfrom trainer.x import _y\n"
    found = violations(sources)
    assert any("trainer/model.py" in v and "pipeline.pipeline" in v
               and "tfx_modules may not import pipeline" in v for v in found)
    assert any("trainer/hypernet/generator.py" in v and "no TFX" in v for v in found)
    assert any("pipeline/configs.py" in v and "trainer.features" in v and "leaf" in v
               for v in found)
    assert any("components/verdict.py" in v and "components may not import pipeline" in v
               for v in found)
    assert any("bench/quality.py" in v and "tests" in v for v in found)
    assert any("bench/quality.py" in v and "private name ['_y']" in v for v in found)
    assert len(found) == 7  # the config case is both "a leaf" and "config may not import"


# What a local run's process imports: the runner (the DAG and its components with it) and
# the modules its Trainer and Transform load by name. `tfx.v1` would bring Google Cloud's
# AI Platform client with it.
RUN_MODULES = ("pipeline.local_runner", "trainer.task", "trainer.preprocessing")
UNUSED_LOCALLY = ("tfx.v1", "google.cloud.aiplatform")


def test_a_local_run_imports_no_cloud_client():
    probe = (f"import sys; sys.argv = ['x']; import {', '.join(RUN_MODULES)}; "
             f"print(sorted(m for m in sys.modules if m.startswith({UNUSED_LOCALLY})))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=pipeline_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == "[]"

