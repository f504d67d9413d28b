# syntax=docker/dockerfile:1
# The lparkube operator image. One image, two entry points: `lparkube run` (the operator, the
# default command) and the crash-diagnosis pod, which runs the same `lparkube` executable with
# its own subcommand as the pod's args.
#
# Build: make image (docker build --build-arg VERSION=... --build-arg REVISION=$(git rev-parse HEAD) .)
# Runs as uid/gid 65532 with a read-only root filesystem: nothing is written outside /tmp.

# Python 3.11 slim on Debian bookworm, pinned by tag and by the digest of its multi-architecture
# index, so every build starts from the same bytes on amd64 and arm64.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src

# The build backend, by hash, into this throwaway stage only.
COPY requirements-image-build.txt ./
RUN pip install --require-hashes --no-deps -r requirements-image-build.txt

# Every runtime dependency, by exact version and hash, into a venv that the final stage copies.
# --no-deps: the file is the whole closure, so pip resolves nothing on its own.
COPY requirements-image.txt ./
RUN python -m venv /opt/lparkube \
 && /opt/lparkube/bin/pip install --require-hashes --no-deps -r requirements-image.txt

# lparkube, which ships the guest agent's package too (the operator signs and verifies agent
# messages with its protocol module), built offline with the pinned backend and installed without
# dependencies. Importing every module proves the pinned closure is complete before the image
# exists.
COPY pyproject.toml ./
COPY operator ./operator
COPY guest-agent ./guest-agent
RUN pip wheel --no-deps --no-build-isolation --no-index --wheel-dir /wheels . \
 && /opt/lparkube/bin/pip install --no-deps --no-index /wheels/*.whl \
 && /opt/lparkube/bin/pip uninstall -y pip \
 && /opt/lparkube/bin/python -c "import importlib, pkgutil, lparkube; \
[importlib.import_module(m.name) for m in pkgutil.walk_packages(lparkube.__path__, 'lparkube.')]" \
 && /opt/lparkube/bin/lparkube version

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="lparkube" \
      org.opencontainers.image.description="Resilience operator for KubeVirt virtual machines: save-on-event, hibernation, remote restart, failover, crash diagnosis" \
      org.opencontainers.image.source="https://github.com/lparkube/lparkube" \
      org.opencontainers.image.url="https://github.com/lparkube/lparkube" \
      org.opencontainers.image.documentation="https://github.com/lparkube/lparkube/blob/main/README.md" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"

# A named account for the fixed uid, so tools that look the user up find one; its home is /tmp,
# the only writable place (an emptyDir in the chart).
RUN groupadd --system --gid 65532 lparkube \
 && useradd --system --uid 65532 --gid 65532 --home-dir /tmp --no-create-home \
      --shell /usr/sbin/nologin lparkube

COPY --from=build /opt/lparkube /opt/lparkube
ENV PATH=/opt/lparkube/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp

USER 65532:65532
WORKDIR /tmp
# Health (8080), metrics (9090) and the agent gateway (8081); see `lparkube run --help`.
EXPOSE 8080 8081 9090
ENTRYPOINT ["lparkube"]
CMD ["run"]
