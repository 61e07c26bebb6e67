# syntax=docker/dockerfile:1
# An MLflow tracking server with the PostgreSQL driver, at the MLflow version the syncer is tested
# with (constraints.txt). Build from the repository root:
#   docker build -f deploy/docker/mlflow.Dockerfile -t mlflow-server .
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIT_PYTHON_REFRESH=quiet

COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt mlflow psycopg2-binary==2.9.13 \
    && rm /tmp/constraints.txt \
    && mlflow --version

# artifacts are served by the tracking server (--serve-artifacts) from a volume on /mlartifacts
RUN groupadd --system --gid 10002 mlflow \
    && useradd --system --uid 10002 --gid mlflow --create-home --home-dir /home/mlflow \
       --shell /usr/sbin/nologin mlflow \
    && mkdir -p /mlartifacts \
    && chown mlflow:mlflow /mlartifacts
USER mlflow:mlflow
WORKDIR /home/mlflow

EXPOSE 5000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000", "--artifacts-destination", "/mlartifacts"]
