# syntax=docker/dockerfile:1.7
# factory-twin: one image for the platform (serve, db) and the edge agent (agent run, simulate).
#   docker build -t factory-twin .
# Base pinned to an exact release; pin its digest too when you mirror it (FROM ...@sha256:...).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first, so a code change does not reinstall them: exactly the files requirements.lock names,
# each checked against its SHA-256 (scripts/lock makes the lock; docs/security.md)
COPY pyproject.toml README.md requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock
COPY plant plant
COPY twin twin
COPY edge_agent edge_agent
COPY models models
COPY factory_twin factory_twin
COPY migrations migrations
COPY examples examples
# the project itself, built with the locked setuptools: nothing fetched unpinned
RUN pip install --no-deps --no-build-isolation . && pip check && python -m compileall -q /opt/venv/lib

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 factory-twin \
    && useradd --system --uid 10001 --gid factory-twin --home-dir /var/lib/factory-twin --shell /usr/sbin/nologin factory-twin \
    && mkdir -p /var/lib/factory-twin/agent /var/lib/factory-twin/mqtt-auth \
    && chown -R factory-twin:factory-twin /var/lib/factory-twin
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TWIN_DATA_DIR=/var/lib/factory-twin \
    TWIN_HTTP_HOST=0.0.0.0 \
    EDGE_DATA_DIR=/var/lib/factory-twin/agent
USER factory-twin:factory-twin
WORKDIR /var/lib/factory-twin
VOLUME ["/var/lib/factory-twin"]
EXPOSE 8000 9464 9465
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=3)" || exit 1
CMD ["factory-twin", "serve"]
