# leg-cramp-cds: production image. gunicorn, non-root, health check; client authentication required.
#
#   docker build -t leg-cramp-cds .
#   docker run -p 8080:8080 -v cramp-data:/data \
#     -v "$PWD/trusted-clients.yaml:/config/trusted-clients.yaml:ro" \
#     -e CRAMP_TRUSTED_CLIENTS_FILE=/config/trusted-clients.yaml \
#     -e CRAMP_PATIENT_KEY_SECRET="$(cat patient-key-secret)" \
#     -e CRAMP_PUBLIC_BASE_URL=https://cds.example.org leg-cramp-cds
#
# CRAMP_PUBLIC_BASE_URL (the URL EHRs call; the JWT audience) and CRAMP_PATIENT_KEY_SECRET have no default
# here on purpose: without them the server refuses to start, naming the variable.
#
# tools/check-docker-commands runs the commands below (wheel build, install, CMD, HEALTHCHECK) without a
# Docker engine; keep the two in step.

# --- build: a wheel from the source (card and rule data go inside it) -------------------------------
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml setup.cfg README.md ./
COPY cds_service ./cds_service
COPY cards ./cards
COPY fhir_fixtures ./fhir_fixtures
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# --- runtime ----------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CRAMP_BIND=0.0.0.0:8080 \
    CRAMP_DATABASE_URL=sqlite:////data/leg-cramp-cds.sqlite3
RUN groupadd --system --gid 10001 cramp \
    && useradd --system --uid 10001 --gid cramp --home-dir /home/cramp --create-home \
       --shell /usr/sbin/nologin cramp \
    && mkdir -p /data \
    && chown cramp:cramp /data
COPY --from=build /wheels /wheels
# with the PostgreSQL driver and the Redis client: replicas share PostgreSQL and Redis (deploy/)
RUN pip install --no-cache-dir "$(ls /wheels/*.whl)[postgres,redis]" \
    && rm -rf /wheels
USER cramp
WORKDIR /home/cramp
VOLUME ["/data"]
EXPOSE 8080
# The health check asks the port the server is bound to: CRAMP_BIND's (docker run -e CRAMP_BIND=0.0.0.0:9090 ...).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('CRAMP_BIND', '0.0.0.0:8080').rpartition(':')[2]; sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]
CMD ["gunicorn", "-c", "python:cds_service.serve.gunicorn_conf", "cds_service.serve.wsgi:app"]
