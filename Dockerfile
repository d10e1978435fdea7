# syntax=docker/dockerfile:1
# CPU image by default; `--build-arg VARIANT=gpu` builds on a CUDA runtime with faiss-gpu and onnxruntime-gpu.
# The image serves a store mounted at /data/store (EBR_STORE); it holds no torch: train and build elsewhere.
ARG VARIANT=cpu

FROM python:3.11-slim AS base-cpu

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 AS base-gpu
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python

FROM base-${VARIANT} AS build
ARG VARIANT
WORKDIR /src
COPY pyproject.toml README.md ./
COPY export export
COPY index index
COPY service service
COPY loadtest loadtest
# faiss-gpu and onnxruntime-gpu ship the same modules as their CPU twins, so the twins are removed and the
# GPU wheels reinstalled over the files the removal took with it.
RUN python -m venv /opt/ebr \
    && if [ "$VARIANT" = gpu ]; then \
         /opt/ebr/bin/pip install --no-cache-dir '.[gpu]' \
         && /opt/ebr/bin/pip uninstall -y faiss-cpu onnxruntime \
         && /opt/ebr/bin/pip install --no-cache-dir --force-reinstall --no-deps faiss-gpu onnxruntime-gpu; \
       else \
         /opt/ebr/bin/pip install --no-cache-dir .; \
       fi

FROM base-${VARIANT} AS runtime
RUN useradd --create-home --uid 10001 ebr && mkdir -p /data/store && chown ebr /data/store
COPY --from=build /opt/ebr /opt/ebr
ENV PATH=/opt/ebr/bin:$PATH \
    EBR_HOST=0.0.0.0 \
    EBR_PORT=8000 \
    EBR_STORE=/data/store \
    EBR_WORKERS=1 \
    OMP_WAIT_POLICY=PASSIVE
USER ebr
WORKDIR /home/ebr
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['EBR_PORT']}/livez\", timeout=2)"]
CMD ["ebr", "serve"]
