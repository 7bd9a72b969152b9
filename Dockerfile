# syntax=docker/dockerfile:1.7
# factory-twin: two images from one file.
#   docker build --target edge -t factory-twin-edge .   # the edge agent (agent run, simulate): the base install
#   docker build --target platform -t factory-twin .    # the platform (serve, db, keys, ...): base + [platform]
# The platform is the last stage, so a plain `docker build .` makes it. Training ([train]) is in neither.
# Base pinned to an exact release; pin its digest too when you mirror it (FROM ...@sha256:...).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# the project's files, for both builds
FROM scratch AS source
COPY plant /src/plant
COPY twin /src/twin
COPY edge_agent /src/edge_agent
COPY models /src/models
COPY factory_twin /src/factory_twin
COPY migrations /src/migrations
COPY examples /src/examples

# dependencies first, so a code change does not reinstall them: exactly the files the role's lock names, each
# checked against its SHA-256 (scripts/lock makes the locks; docs/security.md)
FROM ${PYTHON_IMAGE} AS edge-deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md requirements-edge.lock ./
RUN pip install --require-hashes --no-deps -r requirements-edge.lock

FROM edge-deps AS platform-deps
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

# the project itself, built with the locked setuptools: nothing fetched unpinned; pip check fails the build if
# the lock misses a dependency of the base install, the import of the platform's code one of the platform extra
# a gateway runs the agent and installs nothing: pip and setuptools leave the edge image once the build is done
FROM edge-deps AS edge-build
COPY --from=source /src ./
RUN pip install --no-deps --no-build-isolation . && pip check && python -m pip uninstall -y -q setuptools pip \
    && python -m compileall -q /opt/venv/lib

FROM platform-deps AS platform-build
COPY --from=source /src ./
RUN pip install --no-deps --no-build-isolation . && pip check && python -m compileall -q /opt/venv/lib \
    && python -c "import twin.api, twin.broker, twin.live, migrations.run, factory_twin.stack"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 factory-twin \
    && useradd --system --uid 10001 --gid factory-twin --home-dir /var/lib/factory-twin --shell /usr/sbin/nologin factory-twin \
    && mkdir -p /var/lib/factory-twin/agent /var/lib/factory-twin/mqtt-auth \
    && chown -R factory-twin:factory-twin /var/lib/factory-twin
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TWIN_DATA_DIR=/var/lib/factory-twin \
    EDGE_DATA_DIR=/var/lib/factory-twin/agent
WORKDIR /var/lib/factory-twin
VOLUME ["/var/lib/factory-twin"]

# the gateway's image: paho, asyncua, onnxruntime, numpy and the committed ONNX models; no platform, no training
FROM runtime AS edge
COPY --from=edge-build /opt/venv /opt/venv
USER factory-twin:factory-twin
EXPOSE 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:9464/metrics', timeout=3)" || exit 1
CMD ["factory-twin", "agent", "run"]

FROM runtime AS platform
COPY --from=platform-build /opt/venv /opt/venv
ENV TWIN_HTTP_HOST=0.0.0.0
USER factory-twin:factory-twin
EXPOSE 8000 9465
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/healthz', timeout=3)" || exit 1
CMD ["factory-twin", "serve"]
