# syntax=docker/dockerfile:1
# The Fintegrate image: the API (default command), the outbox relay, the event consumer
# and the migration job all run from it. Secrets come from the environment at run time
# (compose/fintegrate.env), never from the image.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements-runtime.lock ./
RUN /opt/venv/bin/pip install --require-hashes -r requirements-runtime.lock
COPY pyproject.toml README.md ./
COPY service ./service
COPY fintegrate_cli ./fintegrate_cli
RUN /opt/venv/bin/pip install --no-deps .

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 fintegrate \
    && useradd --system --uid 10001 --gid fintegrate --home-dir /app --no-create-home fintegrate
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY migrations ./migrations
# The migration runner looks for migrations/ next to the installed package.
RUN ln -s /app/migrations "$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/migrations"
USER fintegrate
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=2)"]
CMD ["fintegrate", "serve", "--host", "0.0.0.0", "--port", "8000"]
