# The Cairn sync server (`cairn server run`). Build: docker build -t cairn-server .
# Data: the embedded SQLite file under the /data volume, or PostgreSQL when CAIRN_SERVER_DB is set
# (compose.yaml runs it that way). The server speaks plain HTTP; put TLS in front of it.

# Python 3.11: the version the test suite runs on (requires-python is >=3.11).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/cairn
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# A regular (non-editable) install of the package and its runtime dependencies only.
RUN /opt/cairn/bin/pip install .

FROM python:3.11-slim
RUN useradd --system --create-home --uid 10001 --user-group cairn \
    && mkdir /data && chown cairn:cairn /data
COPY --from=build /opt/cairn /opt/cairn
ENV PATH=/opt/cairn/bin:$PATH PYTHONUNBUFFERED=1 CAIRN_SERVER_DATA=/data
# Declared after the chown, so a new volume starts owned by the cairn user.
VOLUME /data
USER cairn
EXPOSE 8787
# No curl in the image: the standard library does the request. urlopen raises on any status
# other than 2xx, so a non-zero exit means unhealthy. Change the port here if you change --port.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8787/healthz', timeout=4)"]
CMD ["cairn", "server", "run", "--host", "0.0.0.0", "--port", "8787"]
