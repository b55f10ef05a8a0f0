# The pipeline's container image for Kubeflow: TFX's own image plus this project,
# installed from the same lock as local runs.
FROM tensorflow/tfx:1.16.0

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

# What TFX's Kubeflow V2 container runs for every component.
ENTRYPOINT ["python", "-m", "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor"]
