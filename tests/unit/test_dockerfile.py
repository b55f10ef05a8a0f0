"""The Dockerfile builds from this repository: what it COPYs exists, and installing what it
copies (the same `pip install .` step, as a wheel) yields a package with all the code and
data Kubeflow's steps import. No Docker engine needed."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import apache_beam
import pytest
import tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from tests.support import ROOT

DOCKERFILE = os.path.join(ROOT, "Dockerfile")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    with open(DOCKERFILE) as f:
        lines = [line.rstrip("\n") for line in f if not line.lstrip().startswith("#")]
    text = "\n".join(lines).replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, by stage name ("" for unnamed); the last is the default."""
    result: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, rest in instructions():
        if keyword == "FROM":
            parts = rest.split()
            current = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else ""
            result[current] = [(keyword, rest)]
        else:
            result[current].append((keyword, rest))
    return result


def copy_sources() -> list[str]:
    """Repository paths of every COPY (COPY --from=<image> takes nothing from the repository)."""
    sources = []
    for keyword, rest in instructions():
        if keyword != "COPY":
            continue
        parts = rest.split()
        if any(p.startswith("--from=") for p in parts):
            continue
        sources += [p for p in parts[:-1] if not p.startswith("--")]
    return sources


def entrypoint(stage: str) -> list[str]:
    (value,) = [rest for keyword, rest in stages()[stage] if keyword == "ENTRYPOINT"]
    return json.loads(value)


def test_base_image_is_the_tfx_release_installed_here():
    first_from = next(rest for keyword, rest in instructions() if keyword == "FROM")
    assert first_from.split()[0] == "tensorflow/tfx:1.16.0"
    assert tfx.__version__ == "1.16.0"


def test_every_copied_path_exists_in_the_repository():
    sources = copy_sources()
    assert {"pyproject.toml", "constraints.txt", "pipeline/", "trainer/", "components/"} <= \
        set(sources)
    for source in sources:
        assert os.path.exists(os.path.join(ROOT, source)), f"Dockerfile copies missing {source}"


def test_default_target_runs_what_the_compiled_spec_runs():
    default = list(stages())[-1]
    assert entrypoint(default) == list(kubeflow_v2_dag_runner.KUBEFLOW_TFX_CMD)


def test_beam_worker_target_starts_beams_boot_program_of_this_beam_release():
    worker = stages()["beam-worker"]
    assert entrypoint("beam-worker") == ["/opt/apache/beam/boot"]
    (copy,) = [rest for keyword, rest in worker if keyword == "COPY"]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"--from=apache/beam_python{python}_sdk:{apache_beam.__version__} " in copy


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build from a context holding only what the Dockerfile copies (like `docker build`)."""
    context = tmp_path_factory.mktemp("docker_context")
    for source in copy_sources():
        src = os.path.join(ROOT, source)
        if os.path.isdir(src):
            shutil.copytree(src, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, context / source)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(out), "."],
        cwd=context, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    (path,) = glob.glob(str(out / "hypernet_tfx-*.whl"))
    with zipfile.ZipFile(path) as z:
        return set(z.namelist())


def test_wheel_holds_the_code_kubeflow_imports(wheel):
    for name in ("trainer/task.py", "trainer/preprocessing.py", "components/__init__.py",
                 "pipeline/__init__.py", "pipeline/pipeline.py"):
        assert name in wheel, name
    for folder in ("pipeline", "trainer", "components"):
        for path in glob.glob(os.path.join(ROOT, folder, "*.py")):
            name = f"{folder}/{os.path.basename(path)}"
            assert name in wheel, name


def test_wheel_holds_the_config_and_schema(wheel):
    assert "pipeline/taxi.yaml" in wheel
    assert "pipeline/schema/taxi.pbtxt" in wheel
