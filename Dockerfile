# totp-service: the pull endpoint and admin API in a small image (README "Docker").
#   docker build -t totp-service .
#   docker run -d --name totp -p 8088:8088 -v totp-data:/data -e SKYVERN_API_KEY=... \
#       -e TOTP_SERVICE_PUBLIC_URL=http://totp:8088 totp-service
#   docker exec -i totp totp-service secret add alice@example.com --stdin < secret.txt
# The first start creates the key file and database on the volume (`init` never overwrites them).
# Back up the volume's master.key, or pass TOTP_SERVICE_MASTER_KEY instead of keeping it there.
# A bind-mounted host folder must belong to the container's user: `chown 10001:10001 ./data`,
# or run with `--user "$(id -u):$(id -g)"` on a folder you own.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    TOTP_SERVICE_DATA_DIR=/data

# EXTRAS="[postgres]" adds the PostgreSQL driver (compose.yaml builds it so); the default image stays SQLite-only
ARG EXTRAS=""
WORKDIR /app
COPY pyproject.toml README.md ./
COPY totp_service ./totp_service
# uid/gid 10001: a regular account (above SYS_UID_MAX, so useradd does not warn), numeric in USER
# so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN pip install ".${EXTRAS}" \
    && rm -rf /app/totp_service /app/build \
    && groupadd --gid 10001 totp \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin totp \
    && mkdir -p /data \
    && chown 10001:10001 /data \
    && chmod 0700 /data

USER 10001:10001
VOLUME ["/data"]
EXPOSE 8088

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8088/healthz', timeout=4).status == 200 else 1)"]

CMD ["sh", "-c", "totp-service init >/dev/null && exec totp-service serve --host 0.0.0.0"]
