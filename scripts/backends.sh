#!/usr/bin/env bash
# Installs (when missing) and starts the backends Herald's tests use, on 127.0.0.1 only,
# idempotently, waiting until each is ready:
#   Kafka protocol : Tansu (crates.io), memory storage      127.0.0.1:${HERALD_KAFKA_PORT:-9092}
#   MongoDB protocol: nx-27017 (PyPI), one file per database 127.0.0.1:${HERALD_MONGO_PORT:-27017}
#   Redis, RabbitMQ : Debian packages (started if not running)
# Usage: scripts/backends.sh up|down|status
set -euo pipefail

CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
DATA="${HERALD_BACKENDS_DIR:-$CACHE/backends}"
KAFKA_PORT="${HERALD_KAFKA_PORT:-9092}"
MONGO_PORT="${HERALD_MONGO_PORT:-27017}"
TANSU="${CARGO_HOME:-$HOME/.cargo}/bin/tansu"
NX_VENV="$CACHE/nx-venv"
mkdir -p "$CACHE" "$DATA"

log() { printf 'backends: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # name seconds command...
  local name=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then log "$name did not become ready in ${secs}s"; return 1; fi
    sleep 0.5
  done
  log "$name ready"
}

install_tansu() {
  if [ -x "$TANSU" ]; then return; fi
  log "installing tansu (about 9 minutes on 2 cores, once; cached in $TANSU)"
  # The default features have no storage engine; dynostore+libsql give memory:// and sqlite://.
  cargo install --locked tansu --features dynostore,libsql >"$CACHE/tansu-install.log" 2>&1 \
    || { tail -20 "$CACHE/tansu-install.log" >&2; return 1; }
}

install_nx() {
  if [ -x "$NX_VENV/bin/nx-27017" ]; then return; fi
  log "installing nx-27017 into $NX_VENV"
  python3 -m venv "$NX_VENV"
  "$NX_VENV/bin/pip" install -q nx-27017
}

kafka_up() {
  install_tansu
  if port_open "$KAFKA_PORT"; then log "kafka-protocol broker already on :$KAFKA_PORT"; return; fi
  mkdir -p "$DATA/tansu"
  # Memory storage: with SQLite, fetches scan to the end of the store and the broker fell
  # behind under the guarantee tests (requests timing out after 10 s, group sessions lost).
  # Its quirk — ListOffsets(latest) answers the first offset of the last batch + 1 — is
  # handled in the tests by sealing each partition with a single-record batch.
  # (With sqlite://, Tansu 0.6 resolves the path against its working directory.)
  (
    cd "$DATA/tansu" || exit 1
    nohup "$TANSU" broker \
      --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
      --storage-engine "${HERALD_TANSU_STORAGE:-memory://tansu/}" \
      >tansu.log 2>&1 </dev/null &
    echo $! >pid
  )
  wait_for tansu 60 port_open "$KAFKA_PORT"
}

mongo_up() {
  install_nx
  if port_open "$MONGO_PORT"; then log "mongodb-protocol server already on :$MONGO_PORT"; return; fi
  mkdir -p "$DATA/nx"
  # --data-dir: one SQLite file per database (a single --db file shares collections).
  nohup "$NX_VENV/bin/nx-27017" --data-dir "$DATA/nx" --host 127.0.0.1 -p "$MONGO_PORT" \
    --pid-file "$DATA/nx/nx-27017.pid" --log-file "$DATA/nx/nx-27017.log" \
    >"$DATA/nx/nx.log" 2>&1 </dev/null &
  echo $! >"$DATA/nx/pid"
  wait_for nx-27017 60 port_open "$MONGO_PORT"
}

redis_up() {
  if redis-cli -h 127.0.0.1 ping >/dev/null 2>&1; then log "redis already running"; else
    command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq redis-server; }
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_for redis 30 redis-cli -h 127.0.0.1 ping
  fi
  # Retry wake-ups use key-expiry events (CONTRACT §5).
  redis-cli -h 127.0.0.1 config set notify-keyspace-events Ex >/dev/null || true
}

apt_install() { # packages...
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

rabbit_up() {
  command -v rabbitmq-server >/dev/null || { log "installing rabbitmq-server"; apt_install rabbitmq-server; }
  if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    rabbitmq-server -detached || true
    wait_for rabbitmq 90 rabbitmq-diagnostics -q ping
  fi
  # An interrupted restart test may have left the application stopped.
  rabbitmq-diagnostics -q check_running >/dev/null 2>&1 || rabbitmqctl start_app >/dev/null
  wait_for rabbitmq-app 60 rabbitmq-diagnostics -q check_running
  rabbitmq-plugins enable rabbitmq_consistent_hash_exchange >/dev/null
}

# Prometheus (server + promtool) for the scrape test; docker-compose 1.29 validates the
# compose file without an engine.
tools_up() {
  local missing=()
  command -v prometheus >/dev/null || missing+=(prometheus)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    apt_install "${missing[@]}"
    # Debian's package may start its own Prometheus on :9090; the tests run their own.
    pkill -x prometheus 2>/dev/null || true
  fi
}

stop_pidfile() {
  local f=$1
  if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null || true; rm -f "$f"; fi
}

case "${1:-up}" in
  up) redis_up; mongo_up; kafka_up; rabbit_up; tools_up ;;
  down) stop_pidfile "$DATA/tansu/pid"; stop_pidfile "$DATA/nx/pid"; log "stopped tansu and nx-27017" ;;
  status)
    port_open "$KAFKA_PORT" && echo "kafka   up :$KAFKA_PORT" || echo "kafka   down"
    port_open "$MONGO_PORT" && echo "mongo   up :$MONGO_PORT" || echo "mongo   down"
    redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && echo "redis   up" || echo "redis   down"
    rabbitmq-diagnostics -q ping >/dev/null 2>&1 && echo "rabbit  up" || echo "rabbit  down" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
