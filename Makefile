# One entry point for set-up, the main job, tests and benchmarks.
# Every target creates .venv (Python 3.10) from constraints.txt when it is missing or stale.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
LOCK := constraints.txt
# The stamp names the hash of the lock and pyproject: an unchanged tree never reinstalls.
DEPS_HASH := $(shell cat $(LOCK) pyproject.toml | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(DEPS_HASH)

# Keras 2 (tf_keras) everywhere, set before TensorFlow is ever imported; no GCE metadata probe.
export TF_USE_LEGACY_KERAS := 1
export NO_GCE_CHECK := true
export TF_CPP_MIN_LOG_LEVEL ?= 1
export PYTHONHASHSEED := 0

HYPERNET_CONFIG ?= pipeline/taxi.yaml
export HYPERNET_CONFIG
TFX := $(VENV)/bin/tfx

.PHONY: help venv run retrain split-spans test test-fast test-e2e lint typecheck bench image lock clean chromium
help:
	@echo "make run        set up .venv, then run the pipeline on the taxi data through the TFX CLI"
	@echo "make retrain    one scheduled retraining pass over the newest span of data/taxi-spans"
	@echo "                (RETRAIN_CONFIG=pipeline/taxi-spans.yaml; IF_RUNNING=exit|wait)"
	@echo "make split-spans  split the taxi sample into time-ordered spans in data/taxi-spans/"
	@echo "make test       set up .venv, then run every test (unit + e2e)"
	@echo "make test-fast  unit tests only (about 2 minutes)"
	@echo "make lint       ruff"
	@echo "make typecheck  mypy over the config and the hypernetwork library"
	@echo "make bench      every benchmark: bench/results/<date>.jsonl + a Markdown table"
	@echo "make image      docker build -t $(IMAGE) . (the Kubeflow image; needs a Docker engine)"

venv: $(STAMP)

$(STAMP): $(LOCK) pyproject.toml
	@py=$$(bash .ci/find-python310); \
	if [ ! -x $(PY) ]; then echo "creating $(VENV) with $$py"; $$py -m venv $(VENV); fi
	$(PY) -m pip install --quiet --disable-pip-version-check -c $(LOCK) pip setuptools wheel
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -c $(LOCK) -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -c $(LOCK) ISLP
	rm -f $(VENV)/.installed-*
	touch $@

# The way users run it: register the runner with the TFX CLI, then start a run (from this folder:
# the CLI stores the runner's path as given).
run: $(STAMP)
	@name=$$($(PY) -m pipeline.configs $(HYPERNET_CONFIG)) || exit 1; \
	if $(TFX) pipeline list --engine local 2>/dev/null | grep -qx "$$name"; then verb=update; else verb=create; fi; \
	$(TFX) pipeline $$verb --engine local --pipeline_path pipeline/local_runner.py && \
	$(TFX) run create --engine local --pipeline_name "$$name"
	$(PY) -m pipeline.summary --config $(HYPERNET_CONFIG)

# Scheduled retraining: one pass over the newest span; non-zero exit when the data fails the
# anomaly gate (a rejected model is a successful run that pushes nothing), 75 when another run
# of the pipeline is in progress (IF_RUNNING=wait: wait for it instead). Its own config
# variable: HYPERNET_CONFIG is make run's.
RETRAIN_CONFIG ?= pipeline/taxi-spans.yaml
IF_RUNNING ?= exit
retrain: $(STAMP)
	$(PY) -m pipeline.local_runner --retrain --config $(RETRAIN_CONFIG) --if-running $(IF_RUNNING)

# Replay retraining on real data: the taxi sample split by time into data/taxi-spans/span-1..3
# (their own folder: data/taxi, what make run reads, is left as it is).
split-spans: $(STAMP)
	$(PY) -m pipeline.split_spans --spans 3

test: $(STAMP) chromium
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not e2e" tests

test-e2e: $(STAMP) chromium
	$(PY) -m pytest -q -m e2e tests

# Debian's chromium: the e2e test opens the run report in it headless and screenshots it.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  sudo=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  echo "installing Debian's chromium (for the report's headless-browser test)"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $$sudo apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

lint: $(STAMP)
	$(VENV)/bin/ruff check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# Every benchmark; appends to bench/results/<date>.jsonl and prints a Markdown table.
bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

# The Kubeflow image (Dockerfile's default target); IMAGE=registry/name:tag to tag it for a push.
IMAGE ?= hypernet-tfx:latest
image:
	@command -v docker >/dev/null 2>&1 || { echo "make image: the docker client is not installed" >&2; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "make image: no Docker engine is reachable (is dockerd running? DOCKER_HOST=$${DOCKER_HOST:-unset}); nothing was built" >&2; exit 1; }
	docker build -t $(IMAGE) .

# Re-pin after changing dependencies: freeze the working venv back into the lock.
lock: $(STAMP)
	{ sed -n '/^#/p' $(LOCK); echo pip==24.2; echo setuptools==65.5.0; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^-e'; } > $(LOCK).new && mv $(LOCK).new $(LOCK)

clean:
	rm -rf tfx_pipeline_output tfx_metadata .pytest_cache
