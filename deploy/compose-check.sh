#!/usr/bin/env bash
# Run compose.yaml where no image registry is reachable (as ../shared/tools/docker-check.sh does for the Dockerfile): Debian docker.io (vfs, no iptables, private socket) + docker-compose,
# stand-ins built from a debootstrap rootfs for python:3.11-slim, postgres:16 and haproxy:2.8 (Debian's
# postgresql-15 with an entrypoint honouring POSTGRES_USER/PASSWORD/DB, Debian's haproxy), then
# `docker-compose up`, a secret, signed pulls through HAProxy, the database stopped and started again,
# the audit trail. Root; KEEP=1 leaves it running. Traffic: PyPI and the Debian mirror only.
set -uo pipefail
REPO=${REPO:-$(git -C "$(dirname "$0")" rev-parse --show-toplevel)}
W=${W:-/tmp/compose-check}
KEY=sk_test_compose_0123456789
step() { echo; echo "=== $(date -u +%T) $*"; }
export DEBIAN_FRONTEND=noninteractive
step apt
apt-get install -y -qq --no-install-recommends debootstrap docker.io docker-compose >/dev/null || exit 1
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1); MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=$W/rootfs
if [ ! -x "$ROOTFS/usr/bin/python3" ]; then
  step debootstrap
  debootstrap --variant=minbase --include=python3,python3-pip,python-is-python3,ca-certificates bookworm "$ROOTFS" "$MIRROR" > $W/debootstrap.log 2>&1 || { echo debootstrap failed; exit 1; }
  cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$ROOTFS" update-ca-certificates >/dev/null 2>&1
  rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
  cp /etc/apt/sources.list.d/debian.sources "$ROOTFS/etc/apt/sources.list.d/" 2>/dev/null || true
  chroot "$ROOTFS" apt-get clean
fi
step dockerd
SOCK=$W/docker.sock; export DOCKER_HOST=unix://$SOCK
DK=/usr/bin/docker
/usr/sbin/dockerd --data-root $W/docker-root --exec-root $W/docker-exec --pidfile $W/dockerd.pid \
  --host $DOCKER_HOST --storage-driver vfs --iptables=false --ip6tables=false > $W/dockerd.log 2>&1 &
echo $! > $W/dockerd.mypid
for _ in $(seq 1 60); do $DK version >/dev/null 2>&1 && break; sleep 0.5; done
$DK version --format 'dockerd {{.Server.Version}}' || exit 1
step "base images"
$DK image inspect python:3.11-slim >/dev/null 2>&1 || tar -C "$ROOTFS" -c . | $DK import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - python:3.11-slim >/dev/null
mkdir -p $W/pg $W/hap
cat > $W/pg/entrypoint.sh <<'EOS'
#!/bin/sh
# stand-in for the official postgres image's entrypoint: POSTGRES_USER/PASSWORD/DB on first start
set -e
PGDATA=/var/lib/postgresql/data; BIN=/usr/lib/postgresql/15/bin
mkdir -p "$PGDATA" /var/run/postgresql; chown postgres "$PGDATA" /var/run/postgresql; chmod 700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  printf '%s' "$POSTGRES_PASSWORD" > /tmp/pw; chown postgres /tmp/pw
  runuser -u postgres -- $BIN/initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=/tmp/pw --auth-local=trust --auth-host=scram-sha-256 >/dev/null
  rm -f /tmp/pw
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  runuser -u postgres -- $BIN/pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  runuser -u postgres -- psql -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null
  runuser -u postgres -- $BIN/pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec runuser -u postgres -- $BIN/postgres -D "$PGDATA" -c listen_addresses='*' -k /var/run/postgresql
EOS
cat > $W/pg/Dockerfile <<'EOS'
FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null && rm -rf /var/lib/apt/lists/*
COPY entrypoint.sh /entrypoint.sh
RUN chmod +x /entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH
ENTRYPOINT ["/entrypoint.sh"]
EOS
cat > $W/hap/Dockerfile <<'EOS'
FROM python:3.11-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy >/dev/null && rm -rf /var/lib/apt/lists/* && mkdir -p /usr/local/etc/haproxy
CMD ["haproxy", "-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
EOS
$DK image inspect postgres:16 >/dev/null 2>&1 || (cd $W/pg && DOCKER_BUILDKIT=0 $DK build --network host -t postgres:16 . > $W/build-pg.log 2>&1) && echo "built postgres:16 stand-in" || { tail $W/build-pg.log; exit 1; }
$DK image inspect haproxy:2.8 >/dev/null 2>&1 || (cd $W/hap && DOCKER_BUILDKIT=0 $DK build --network host -t haproxy:2.8 . > $W/build-hap.log 2>&1) && echo "built haproxy:2.8 stand-in" || { tail $W/build-hap.log; exit 1; }
step "build totp-service:postgres (compose.yaml's build, the Dockerfile unchanged)"
rm -rf $W/ctx && git clone -q "$REPO" $W/ctx
(cd $W/ctx && DOCKER_BUILDKIT=0 $DK build --network host --build-arg 'EXTRAS=[postgres]' -t totp-service:postgres . > $W/build-totp.log 2>&1) && echo built || { tail -20 $W/build-totp.log; exit 1; }
step "compose up"
export POSTGRES_PASSWORD=pw$(openssl rand -hex 8) TOTP_SERVICE_MASTER_KEY=$(openssl rand -base64 32) SKYVERN_API_KEY=$KEY TOTP_SERVICE_ADMIN_TOKEN=admin-token-0123456789abcdef
cd $W/ctx
export COMPOSE_PROJECT_NAME=pgc
docker-compose --version
DOCKER_BUILDKIT=0 docker-compose up -d --no-build 2>&1 | tail -8
for _ in $(seq 1 90); do curl -fsS -m 2 http://127.0.0.1:8088/readyz >/dev/null 2>&1 && break; sleep 1; done
docker-compose ps
curl -sS -m 3 http://127.0.0.1:8088/readyz; echo
sign() { printf '%s' "$1" | openssl dgst -sha256 -hmac "$KEY" | sed 's/^.* //'; }
pull() { local body="{\"workflow_run_id\":\"$1\"}"; echo "$1 -> $(curl -sS -m 30 -w ' HTTP %{http_code}' -X POST http://127.0.0.1:8088/totp/alice%40example.com \
   -H 'Content-Type: application/json' -H "x-skyvern-signature: $(sign "$body")" --data-binary "$body")"; }
echo JBSWY3DPEHPK3PXP | docker-compose exec -T totp1 totp-service secret add alice@example.com --stdin
step "pulls through the load balancer"
for i in 1 2 3 4; do pull wr_$i; done
docker-compose logs --no-color totp1 totp2 2>&1 | grep -c "POST /totp" | sed 's/^/access lines: /'
step "database stopped"
docker-compose stop db
sleep 3
for i in 5 6; do pull wr_$i; done
curl -sS -m 3 -w ' %{http_code}\n' http://127.0.0.1:8088/readyz
step "database started again"
docker-compose start db
for _ in $(seq 1 60); do curl -fsS -m 2 http://127.0.0.1:8088/readyz >/dev/null 2>&1 && break; sleep 1; done
for i in 7 8; do pull wr_$i; done
docker-compose exec -T totp2 totp-service audit --limit 20
docker-compose ps
[ "${KEEP:-0}" = 1 ] || { docker-compose down -v >/dev/null 2>&1; kill $(cat $W/dockerd.mypid); }
echo DONE
