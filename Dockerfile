# Wanka operator and GPU health agent image.
#   docker build -t ghcr.io/wanka-io/wanka:0.1.0 .
# The tag must match the chart's appVersion (charts/wanka/Chart.yaml) and pyproject's version.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/wanka
# Only what the wheel is built from (see .dockerignore).
COPY pyproject.toml README.md constraints.txt ./
COPY operator/ operator/
# Build the wheel, then install it with the nvml extra (the agent's probe), every dependency at
# the version constraints.txt (the lock file, `make lock`) pins. Never the examples
# extra: it pulls torch, which the operator does not use.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/wanka/bin/pip install -c constraints.txt "$(ls /wheels/wanka-*.whl)[nvml]" \
 && /opt/wanka/bin/wanka --help >/dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="wanka" \
      org.opencontainers.image.description="Kubernetes operator that makes a GPU fleet behave like one computer for AI training" \
      org.opencontainers.image.source="https://github.com/wanka-io/wanka" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed non-root uid the chart's securityContext (runAsUser 65532) matches.
RUN groupadd --system --gid 65532 wanka \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin wanka
COPY --from=builder /opt/wanka /opt/wanka
# Read-only root filesystem in the chart: no bytecode writes, unbuffered logs.
ENV PATH=/opt/wanka/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8000 8080
ENTRYPOINT ["wanka"]
CMD ["run"]
