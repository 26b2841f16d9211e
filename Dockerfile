# The one image of a deployment: the code-location server, the webserver, the daemon and every run task
# (infra/dagster-ecs.yaml gives each its command). The project and its dependencies at the versions in
# deploy/constraints.txt; no credentials (the tasks get theirs from their IAM roles and Secrets Manager).
#
# The synthea-generator target (docker build --target synthea-generator) is the Synthea generation image of
# infra/dagster-ecs.yaml's GeneratorTaskDefinition: a JRE, the project, and the Synthea releases resolved from Maven
# Central at build time (SYNTHEA_RELEASES) into SYNTHEA_CACHE, so a task needs no Maven and no network but S3.
FROM python:3.11-slim-bookworm AS synthea-generator
ARG SYNTHEA_RELEASES="2.7.0 3.0.0 3.1.0 3.2.0 3.3.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SYNTHEA_CACHE=/opt/synthea
RUN apt-get update && apt-get install -y --no-install-recommends openjdk-17-jre-headless maven \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/synthea-pipeline
COPY deploy/constraints.txt deploy/constraints.txt
COPY pyproject.toml README.md ./
COPY synthea_pipeline synthea_pipeline
RUN pip install --constraint deploy/constraints.txt . \
    && python -m synthea_pipeline.entrypoints.generate_job --resolve ${SYNTHEA_RELEASES} \
    && apt-get purge -y maven && apt-get autoremove -y
CMD ["python", "-m", "synthea_pipeline.entrypoints.generate_job"]

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DAGSTER_HOME=/opt/dagster/home \
    DAGSTER_POSTGRES_PORT=5432

RUN groupadd --system --gid 10001 dagster \
    && useradd --system --uid 10001 --gid dagster --home-dir /opt/dagster --shell /usr/sbin/nologin dagster

WORKDIR /opt/dagster/app
COPY deploy/constraints.txt deploy/constraints.txt
COPY pyproject.toml README.md ./
COPY synthea_pipeline synthea_pipeline
RUN pip install --constraint deploy/constraints.txt .

# The repository and commit the image is built from (deploy-dagster passes both): the UI's code references link there.
ARG GIT_URL=""
ARG GIT_SHA=""
ENV SYNTHEA_GIT_URL=${GIT_URL} \
    SYNTHEA_GIT_SHA=${GIT_SHA}

COPY deploy/workspace.yaml workspace.yaml
COPY deploy/dagster.yaml ${DAGSTER_HOME}/dagster.yaml
RUN chown -R dagster:dagster /opt/dagster/home

USER dagster
# 3000: dagster-webserver; 4000: the code-location server (gRPC).
EXPOSE 3000 4000
CMD ["dagster", "code-server", "start", "--host", "0.0.0.0", "--port", "4000", "--module-name", "synthea_pipeline.definitions", "--location-name", "synthea_pipeline"]
