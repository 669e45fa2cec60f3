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
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# pyproject.toml names README.md as the package's long description.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY supervisor ./supervisor
RUN pip install . && rm -rf /src

# A non-root user; its working directory holds the embedded SQLite file of the
# default database_url ("sqlite:///supervisor.db", relative to the working directory).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/supervisor \
        --create-home --shell /usr/sbin/nologin supervisor \
    && mkdir -p /etc/supervisor
WORKDIR /var/lib/supervisor
USER supervisor

EXPOSE 9464

# /healthz answers 200 while the supervisor's event loop is alive. Slim images
# have no curl, so ask Python. Follows SUPERVISOR_METRICS__PORT if you set it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SUPERVISOR_METRICS__PORT', '9464') + '/healthz', timeout=4)"]

ENTRYPOINT ["supervisor"]
CMD ["run", "-c", "/etc/supervisor/supervisor.toml"]
