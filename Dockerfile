# syntax=docker/dockerfile:1.7
# her2ops image: every service of docker-compose.yml (migrate, workers, dispatcher, dashboard and
# the MLflow server) runs from it.
#
#   docker build -t her2ops:cuda .                              # GPU workers (the default)
#   docker build -t her2ops:cpu --build-arg TORCH_VARIANT=cpu .  # CPU services, ~4 GB smaller
#
# TORCH_VARIANT=cuda installs requirements.lock exactly as CI tested it (hash-checked): the CUDA
# build of torch/torchvision with the CUDA libraries as pip wheels, so the base image needs no
# CUDA toolkit; the host needs the NVIDIA driver and the NVIDIA container toolkit. The same image
# runs on a CPU. TORCH_VARIANT=cpu installs every other locked package from the same lock, and
# torch/torchvision at the same versions from the PyTorch CPU wheel index (TORCH_CPU_INDEX);
# those two are pinned by version, not by hash.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ARG TORCH_VARIANT=cuda
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Dependencies first (their layer is rebuilt only when the lock changes).
COPY requirements.lock ./
# The quoted heredoc is left alone by the frontend; the shell sees the ARGs as variables.
RUN --mount=type=cache,target=/root/.cache/pip <<'EOF'
set -eu
case "${TORCH_VARIANT}" in
  cuda)
    pip install --require-hashes -r requirements.lock ;;
  cpu)
    # Drop torch, torchvision and the CUDA wheels only they need; keep every other pin + hash.
    awk '/^[A-Za-z0-9]/ { skip = ($0 ~ /^(torch|torchvision|triton|nvidia-[^=]+|cuda-[^=]+)==/) }
         !skip' requirements.lock > /tmp/cpu.lock
    pip install --require-hashes -r /tmp/cpu.lock
    torch=$(sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements.lock)
    vision=$(sed -n 's/^torchvision==\([^ ]*\).*/\1/p' requirements.lock)
    pip install --no-deps --index-url "${TORCH_CPU_INDEX}" \
      "torch==${torch}+cpu" "torchvision==${vision}+cpu" ;;
  *)
    echo "TORCH_VARIANT must be cuda or cpu, not '${TORCH_VARIANT}'" >&2; exit 1 ;;
esac
pip check
EOF

# Then the package itself, built from the repository with the locked setuptools/wheel.
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-deps --no-build-isolation . \
 && her2ops --help > /dev/null

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG TORCH_VARIANT=cuda
LABEL org.opencontainers.image.title="her2ops" \
      org.opencontainers.image.description="HER2 IHC scoring platform" \
      org.opencontainers.image.licenses="Apache-2.0" \
      her2ops.torch-variant="${TORCH_VARIANT}"

# libgomp: torch's CPU kernels; tini: PID 1 that forwards signals (workers shut down cleanly).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 her2ops \
 && useradd --system --uid 10001 --gid her2ops --home-dir /home/her2ops --create-home \
      --shell /usr/sbin/nologin her2ops \
 && mkdir -p /data /srv/mlartifacts \
 && chown her2ops:her2ops /data /srv/mlartifacts

COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    HER2OPS_DATA_DIR=/data \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

USER her2ops
# A named volume mounted on /data or /srv/mlartifacts starts out owned by her2ops, as the
# image's directories are.
WORKDIR /data
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["her2ops", "--help"]
