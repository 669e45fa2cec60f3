# fleet-supervisor as a container's main process.
#
#   docker build -t fleet-supervisor .
#   docker run --rm -p 9464:9464 \
#     -v "$PWD/my.toml:/etc/supervisor/supervisor.toml:ro" fleet-supervisor
#
# No tini or dumb-init: the supervisor is a proper PID 1. It handles SIGTERM and
# SIGINT itself (stopping every worker in parallel) and reaps the orphaned
# processes the kernel re-parents to it, without taking its own children's exit
# statuses. Give `docker stop -t` / terminationGracePeriodSeconds more time than
# the largest stop_timeout in your file.
#
# Your own worker code goes into a derived image (FROM this one) that installs it
# as the same non-root user into the same virtualenv: see examples/container/.
#
# The base is pinned to a patch release of Python 3.11 on Debian bookworm. To pin
# the exact bytes too, append the digest your registry reports for that tag:
#   docker buildx imagetools inspect python:3.11.13-slim-bookworm
# and write FROM python:3.11.13-slim-bookworm@sha256:<digest>.
FROM python:3.11.13-slim-bookworm

ARG VERSION=0.2.0.dev0
LABEL org.opencontainers.image.title="fleet-supervisor" \
      org.opencontainers.image.description="A process supervisor whose nodes coordinate leaders, partitioned workers and cron runs through one SQL database." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.13-slim-bookworm"

# The supervisor and every package a derived image adds live in one virtualenv that
# the non-root user owns, so `pip install` in a derived image needs no root.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/fleet-supervisor \
    PATH=/opt/fleet-supervisor/bin:$PATH

# The only step as root: a numeric user (10001:10001, so Kubernetes runAsNonRoot can
# verify it without reading /etc/passwd) and the directories it owns. Its home is the
# working directory, which holds the embedded SQLite file of the default
# database_url ("sqlite:///supervisor.db", relative to the working directory).
RUN groupadd --system --gid 10001 supervisor \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/supervisor \
        --create-home --shell /usr/sbin/nologin supervisor \
    && install -d -o 10001 -g 10001 /opt/fleet-supervisor /src \
    && install -d /etc/supervisor
USER 10001:10001

# Dependencies first, in their own layer: it is rebuilt only when pyproject.toml or
# the install script changes, not on every source change. With both database drivers
# (the extras `postgres` and `mysql`), so one image speaks to every database.
WORKDIR /src
COPY --chown=10001:10001 pyproject.toml container/install.sh ./
RUN sh install.sh deps

# pyproject.toml names README.md as the package's long description.
COPY --chown=10001:10001 README.md ./
COPY --chown=10001:10001 supervisor ./supervisor
RUN sh install.sh app

WORKDIR /var/lib/supervisor
EXPOSE 9464

# /healthz answers 200 while the supervisor's event loop is alive. `supervisor
# healthcheck` asks it on the metrics address the file and SUPERVISOR_* variables
# configure (127.0.0.1 for 0.0.0.0); mount your file elsewhere and pass its path here
# and in CMD alike.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["supervisor", "healthcheck", "-c", "/etc/supervisor/supervisor.toml"]

ENTRYPOINT ["supervisor"]
CMD ["run", "-c", "/etc/supervisor/supervisor.toml"]
