# The pipeline's container image for Kubeflow: TFX's own image plus this project,
# installed from the same lock as local runs.
FROM tensorflow/tfx:1.16.0 AS base

# Keras 2 before TensorFlow is imported; no GCE metadata probe at import.
ENV TF_USE_LEGACY_KERAS=1 \
    NO_GCE_CHECK=true \
    PYTHONHASHSEED=0 \
    PYTHONUNBUFFERED=1

WORKDIR /hypernet
COPY constraints.txt pyproject.toml README.md ./
COPY pipeline/ pipeline/
COPY trainer/ trainer/
COPY components/ components/
RUN python -m pip install --no-cache-dir -c constraints.txt .

# `docker build --target beam-worker`: the same environment as a Beam SDK worker for
# Dataflow (--sdk_container_image) or a portable runner's DOCKER environment; those start
# the container with Beam's boot program (README, "Scale out").
FROM base AS beam-worker
COPY --from=apache/beam_python3.10_sdk:2.61.0 /opt/apache/beam /opt/apache/beam
ENTRYPOINT ["/opt/apache/beam/boot"]

# The default target, what Kubeflow runs. The compiled spec sets each step's command
# itself (this one; ExampleGen's driver for its pre-cache check); the ENTRYPOINT matches
# it so that `docker run IMAGE --executor_class_path ...` runs a step as Kubeflow does.
# (TFX's own image's entry point, tfx/scripts/run_executor.py, takes --inputs/--outputs
# JSON, not the V2 ExecutorInput.)
FROM base AS kubeflow
ENTRYPOINT ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
