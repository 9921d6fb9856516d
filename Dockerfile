# syntax=docker/dockerfile:1
# karen-host images: what `make run` does, bundled model included, listening on 0.0.0.0:8080.
#
#   docker build -t karen-host .                                    # CPU
#   docker build -t karen-host:cuda --build-arg BACKEND=cuda .      # NVIDIA (run with --gpus all)
#   docker build -t karen-host:vulkan --build-arg BACKEND=vulkan .  # Vulkan
#   docker build -t karen-host:rocm --build-arg BACKEND=rocm .      # AMD ROCm (HIP)
#
# Two stages: the builder has the compilers and compiles llama-cpp-python for BACKEND into
# /app/.venv; the runtime image gets that venv and the code, and no compiler (except ROCm,
# whose runtime libraries come in its dev image). cpu and vulkan run Python 3.11 (the
# python image); cuda and rocm Ubuntu 24.04's Python 3.12, the same in both stages. GIT_COMMIT
# (--build-arg GIT_COMMIT=$(git rev-parse HEAD)) is what `/` and /api/version report.

ARG BACKEND=cpu
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_VERSION=12.6.3

# -- the base images per backend: the builder needs the toolkit, the runtime its libraries
FROM ${PYTHON_IMAGE} AS base-cpu
FROM ${PYTHON_IMAGE} AS base-vulkan
FROM rocm/dev-ubuntu-24.04:6.4 AS base-rocm
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS builder-base-cuda
FROM nvidia/cuda:${CUDA_VERSION}-runtime-ubuntu24.04 AS runtime-base-cuda

FROM base-cpu AS builder-base-cpu
FROM base-cpu AS runtime-base-cpu
FROM base-vulkan AS builder-base-vulkan
FROM base-vulkan AS runtime-base-vulkan
FROM base-rocm AS builder-base-rocm
FROM base-rocm AS runtime-base-rocm

# -- builder: compilers, then the venv with llama-cpp-python built for BACKEND
# hadolint ignore=DL3006
FROM builder-base-${BACKEND} AS builder
ARG BACKEND
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake make git \
    && if ! command -v python3 >/dev/null; then \
         apt-get install -y --no-install-recommends python3 python3-venv python3-dev; fi \
    && if [ "$BACKEND" = vulkan ]; then apt-get install -y --no-install-recommends libvulkan-dev glslc; fi \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt requirements.lock requirements-model.lock Makefile ./
# The llama.cpp backend is a CMake switch of llama-cpp-python's build (its README).
RUN case "$BACKEND" in \
      cpu) cmake_args="" ;; \
      cuda) cmake_args="-DGGML_CUDA=on" ;; \
      vulkan) cmake_args="-DGGML_VULKAN=on" ;; \
      rocm) cmake_args="-DGGML_HIP=on" ;; \
      *) echo "BACKEND must be cpu, cuda, vulkan or rocm" >&2; exit 1 ;; \
    esac \
    && CMAKE_ARGS="$cmake_args" make install PYTHON=python3

# -- runtime: the venv and the code, no compiler
# hadolint ignore=DL3006
FROM runtime-base-${BACKEND} AS runtime
ARG BACKEND
ARG GIT_COMMIT=""
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && if ! command -v python3 >/dev/null; then apt-get install -y --no-install-recommends python3; fi \
    && if [ "$BACKEND" = vulkan ]; then apt-get install -y --no-install-recommends libvulkan1 mesa-vulkan-drivers; fi \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --create-home --home-dir /home/karen karen \
    && mkdir -p /data && chown karen /data
WORKDIR /app
COPY --from=builder /app/.venv /app/.venv
COPY --chown=10001 . .
ENV HOST=0.0.0.0 PORT=8080 VAR_DIR=/data/var MODELS_DIR=/data/models \
    ALLOWED_HOSTS=localhost,127.0.0.1,0.0.0.0 GIT_COMMIT=${GIT_COMMIT} PYTHONUNBUFFERED=1
USER 10001
VOLUME ["/data"]
EXPOSE 8080
# SIGTERM drains (docker stop -t 45): running generations finish before the process exits.
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=5 \
  CMD ["/app/.venv/bin/python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/health/ready', timeout=8)"]
CMD ["/app/.venv/bin/python", "manage.py", "serve"]
