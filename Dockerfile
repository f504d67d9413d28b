# The lparkube operator image; the same image runs the crash-diagnosis pod's entry point.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY guest-agent ./guest-agent
# The operator signs and verifies agent messages with the agent's own protocol module.
RUN pip install --no-cache-dir --prefix=/install ./guest-agent .

FROM python:3.11-slim-bookworm
LABEL org.opencontainers.image.title="lparkube" \
      org.opencontainers.image.description="Resilience layer for KubeVirt virtual machines" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/lparkube/lparkube"
COPY --from=build /install /usr/local
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin lparkube
USER 65532:65532
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
ENTRYPOINT ["lparkube"]
CMD ["run"]
