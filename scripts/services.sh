#!/usr/bin/env bash
# Shared by scripts/test and scripts/bench: brings up Postgres, Redis, a Redis Cluster and an
# s3s-fs S3 server, idempotently. Source it; it defines functions and sets nothing running by
# itself.

# SLUICE_TEST_DB names another database, for a work tree whose migrations differ from those of
# other work trees testing on the same machine.
PG_HOST=127.0.0.1 PG_PORT=5432 PG_USER=postgres PG_DB=${SLUICE_TEST_DB:-test}
REDIS_PORT=6379
# A Cluster of three masters (no replicas); each also uses its port + 10000 for the cluster bus.
REDIS_CLUSTER_PORTS=(7101 7102 7103)
REDIS_CLUSTER_DIR=/var/lib/sluice-redis-cluster
S3S_VERSION=0.14.1

log() { printf '==> %s\n' "$*" >&2; }

# Cleanups run at exit, last registered first (each service start registers its own).
CLEANUPS=()
on_exit() { CLEANUPS=("$1" "${CLEANUPS[@]}"); trap 'for c in "${CLEANUPS[@]}"; do eval "$c"; done' EXIT; }

apt_install() {
  log "installing $* from Debian packages"
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq >&2; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

ensure_postgres() {
  if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; then return; fi
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  log "starting PostgreSQL"
  local version; version=$(ls /etc/postgresql | sort -V | tail -n 1)
  # Trust local TCP connections, as the tests connect without a password.
  local hba="/etc/postgresql/$version/main/pg_hba.conf"
  grep -q '^host all all 127.0.0.1/32 trust' "$hba" || sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 1 50); do pg_isready -q -h "$PG_HOST" -p "$PG_PORT" && break; sleep 0.2; done
  pg_isready -h "$PG_HOST" -p "$PG_PORT" >/dev/null || { log "PostgreSQL did not start"; exit 1; }
}

ensure_database() {
  local exists
  exists=$(psql -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -Atc "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")
  [ "$exists" = 1 ] || createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
}

# A database of this run's own, dropped at exit: migrations applied by another checkout (another
# branch, an older run) can never meet this one's.
fresh_database() {
  PG_DB="sluice_test_$(date +%s)_$$"
  createdb -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$PG_DB"
  on_exit "dropdb -h $PG_HOST -p $PG_PORT -U $PG_USER --if-exists --force $PG_DB 2>/dev/null || true"
}

ensure_redis() {
  if redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG; then return; fi
  command -v redis-server >/dev/null || apt_install redis-server
  log "starting Redis"
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  for _ in $(seq 1 50); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  redis-cli -p "$REDIS_PORT" ping | grep -q PONG || { log "Redis did not start"; exit 1; }
}

# True when every node of the test Cluster answers, knows all the others and serves every slot.
redis_cluster_ok() {
  local port info
  for port in "${REDIS_CLUSTER_PORTS[@]}"; do
    info=$(redis-cli -h 127.0.0.1 -p "$port" cluster info 2>/dev/null | tr -d '\r') || return 1
    grep -qx 'cluster_state:ok' <<<"$info" || return 1
    grep -qx "cluster_known_nodes:${#REDIS_CLUSTER_PORTS[@]}" <<<"$info" || return 1
  done
}

# Starts the test Cluster on REDIS_CLUSTER_PORTS, or reuses it when it is up and healthy. Its nodes
# keep nothing on disk but their cluster configuration; a Cluster found broken is made again from
# scratch. A lock keeps two test runs from building it at once.
ensure_redis_cluster() {
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p "$REDIS_CLUSTER_DIR"
  (
    flock 9
    redis_cluster_ok && exit 0
    log "starting a Redis Cluster of ${#REDIS_CLUSTER_PORTS[@]} masters on ports ${REDIS_CLUSTER_PORTS[*]}"
    local port nodes=()
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
        redis-cli -h 127.0.0.1 -p "$port" info cluster | grep -q '^cluster_enabled:1' ||
          { log "port $port is taken by a Redis that is not a cluster node"; exit 1; }
        redis-cli -h 127.0.0.1 -p "$port" shutdown nosave >/dev/null 2>&1 || true
        for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1 || break; sleep 0.1; done
      fi
      rm -rf "${REDIS_CLUSTER_DIR:?}/$port"
      mkdir -p "$REDIS_CLUSTER_DIR/$port"
      redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "nodes-$port.conf" --save "" --appendonly no --daemonize yes \
        --dir "$REDIS_CLUSTER_DIR/$port" --logfile "$REDIS_CLUSTER_DIR/$port/redis.log" \
        9>&-  # the daemon must not hold the lock
      nodes+=("127.0.0.1:$port")
    done
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do
      for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes \
      >"$REDIS_CLUSTER_DIR/create.log" 2>&1 ||
      { log "redis-cli --cluster create failed"; cat "$REDIS_CLUSTER_DIR/create.log" >&2; exit 1; }
    for _ in $(seq 1 100); do redis_cluster_ok && exit 0; sleep 0.2; done
    log "the Redis Cluster did not reach cluster_state:ok"
    for port in "${REDIS_CLUSTER_PORTS[@]}"; do tail -n 20 "$REDIS_CLUSTER_DIR/$port/redis.log" >&2; done
    exit 1
  ) 9>"$REDIS_CLUSTER_DIR/lock"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_s3() {
  if ! command -v s3s-fs >/dev/null || ! s3s-fs --version 2>/dev/null | grep -q "$S3S_VERSION"; then
    log "installing s3s-fs $S3S_VERSION (a few minutes, once)"
    cargo install --locked "s3s-fs@$S3S_VERSION" --features binary >&2
  fi
  S3_ROOT=$(mktemp -d)
  S3_PORT=$(free_port)
  mkdir -p "$S3_ROOT/sluice-test"  # s3s-fs serves each directory of its root as a bucket
  s3s-fs --host 127.0.0.1 --port "$S3_PORT" --access-key sluice-test --secret-key sluice-test-secret \
    "$S3_ROOT" >"$S3_ROOT.log" 2>&1 &
  S3_PID=$!
  on_exit 'kill $S3_PID 2>/dev/null || true; rm -rf "$S3_ROOT" "$S3_ROOT.log"'
  for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" && break
    sleep 0.1
  done
  curl -s -o /dev/null "http://127.0.0.1:$S3_PORT/" || { log "s3s-fs did not start"; cat "$S3_ROOT.log" >&2; exit 1; }
}


# The fault tests (tests/it/outage.rs, tests/it/cluster.rs) start, stop and restart their own
# Redis, Redis Cluster, Postgres and s3s-fs on other ports, never the shared ones above. This
# exports where those programs are.
export_private_service_programs() {
  command -v redis-server >/dev/null || apt_install redis-server
  local pg_bin; pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  [ -n "$pg_bin" ] || { apt_install postgresql; pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1); }
  export SLUICE_TEST_REDIS_SERVER; SLUICE_TEST_REDIS_SERVER=$(command -v redis-server)
  export SLUICE_TEST_POSTGRES_BIN="$pg_bin"
  export SLUICE_TEST_S3S_FS; SLUICE_TEST_S3S_FS=$(command -v s3s-fs)
  # Postgres refuses to run as root: as root, the tests run it as the `postgres` account.
  export SLUICE_TEST_POSTGRES_RUN_AS=
  if [ "$(id -u)" = 0 ]; then SLUICE_TEST_POSTGRES_RUN_AS="$(id -u postgres):$(id -g postgres)"; fi
}
