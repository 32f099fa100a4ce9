#!/usr/bin/env bash
# Installs (when missing) and starts the backends Herald's tests use, on 127.0.0.1 only,
# idempotently, waiting until each is ready:
#   Kafka           : Apache Kafka 4.x from Maven Central, KRaft   127.0.0.1:${HERALD_KAFKA_PORT:-9092}
#                     (one broker+controller node; controller on 127.0.0.1:${HERALD_KAFKA_CONTROLLER_PORT:-9093};
#                     TLS on 127.0.0.1:${HERALD_KAFKA_SSL_PORT:-9094}, its CA in <backends dir>/kafka/tls/ca.crt)
#   MongoDB protocol: nx-27017 (PyPI), one file per database      127.0.0.1:${HERALD_MONGO_PORT:-27017}
#   Redis, RabbitMQ : Debian packages, installed with apt when missing, started if not running
#   Redis Cluster   : three more redis-servers in cluster mode, 127.0.0.1:7101-7103, joined
#   Prometheus, docker-compose: Debian packages (tests of the ops files)
#   Provider stand-ins: Prism 5 (npm) serving the providers' own OpenAPI documents, and the
#                     providers' official Python libraries (twilio, sendgrid, google-auth)
#                     and aiosmtpd in a venv (tests/provider_libs.py, tests/provider_standins.py),
#                     Segment's and RudderStack's client libraries (tests/ingest_clients.*)
# Needs: Java 17+ and Maven (Kafka), the openssl command (Kafka's test certificate), Python 3
# with venv (nx-27017), apt (the rest).
# Usage: scripts/backends.sh up|down|status|restart-kafka
set -euo pipefail

CACHE="${HERALD_CACHE:-$HOME/.cache/herald}"
DATA="${HERALD_BACKENDS_DIR:-$CACHE/backends}"
KAFKA_PORT="${HERALD_KAFKA_PORT:-9092}"
MONGO_PORT="${HERALD_MONGO_PORT:-27017}"
KAFKA_SSL_PORT="${HERALD_KAFKA_SSL_PORT:-9094}"
KAFKA_CONTROLLER_PORT="${HERALD_KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_HOME="$CACHE/kafka-4.4.0"       # the broker's jars (fetched once by Maven)
KAFKA_HEAP="${HERALD_KAFKA_HEAP:-1g}" # the tests share 24 GiB and 2 cores with it
HERE="$(cd "$(dirname "$0")" && pwd)"
NX_VENV="$CACHE/nx-venv"
TOOLS="$CACHE/provider-tools"          # prism (npm) and a venv with the providers' libraries
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

install_nx() {
  if [ -x "$NX_VENV/bin/nx-27017" ]; then return; fi
  log "installing nx-27017 into $NX_VENV"
  python3 -m venv "$NX_VENV"
  "$NX_VENV/bin/pip" install -q nx-27017
}

# Apache Kafka's broker, controller, storage and admin tools with their dependencies, copied
# from Maven Central by scripts/kafka/pom.xml; nothing is downloaded from anywhere else.
install_kafka() {
  if [ -f "$KAFKA_HOME/.complete" ]; then return; fi
  command -v java >/dev/null || { log "Java 17+ is needed for the Kafka broker"; return 1; }
  command -v mvn >/dev/null || { log "Maven is needed to fetch the Kafka broker"; return 1; }
  log "fetching Apache Kafka 4.4.0 from Maven Central into $KAFKA_HOME (once, about a minute)"
  rm -rf "$KAFKA_HOME"; mkdir -p "$KAFKA_HOME/libs"
  mvn -q -B -f "$HERE/kafka/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_HOME/libs" >"$CACHE/kafka-fetch.log" 2>&1 \
    || { tail -20 "$CACHE/kafka-fetch.log" >&2; return 1; }
  touch "$KAFKA_HOME/.complete"
}

kafka_java() { # main-class args...
  java -Xms256m -Xmx256m -cp "$KAFKA_HOME/libs/*" -Dlog4j2.configurationFile="$HERE/kafka/log4j2.yaml" \
    -Dkafka.logs.dir="$DATA/kafka" "$@"
}

# Readiness: the broker answers a metadata request (the admin client's describeCluster).
kafka_ready() {
  port_open "$KAFKA_PORT" && kafka_java org.apache.kafka.tools.ClusterTool cluster-id \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" 2>/dev/null | grep -q "Cluster ID"
}

# A test CA and the broker's certificate it signed (for the SSL listener), made once with the
# openssl command line.
kafka_tls() {
  local tls=$1
  [ -f "$tls/broker.pem" ] && return 0
  mkdir -p "$tls"
  (
    cd "$tls"
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj /CN=herald-test-ca \
      -keyout ca.key -out ca.crt
    openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout broker.key -out broker.csr
    openssl x509 -req -in broker.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile san.ext -out broker.crt
    cat broker.key broker.crt >broker.pem
  ) >"$tls/make.log" 2>&1 || { cat "$tls/make.log" >&2; return 1; }
}

kafka_up() {
  install_kafka
  if port_open "$KAFKA_PORT"; then log "kafka already on :$KAFKA_PORT"; return; fi
  local dir="$DATA/kafka"
  mkdir -p "$dir/log"
  kafka_tls "$dir/tls"
  cat >"$dir/server.properties" <<PROPS
# Written by scripts/backends.sh: a one-node KRaft cluster for tests, on loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SSL://127.0.0.1:$KAFKA_SSL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SSL:SSL
# The SSL listener (Herald's TLS test): a PEM key and certificate signed by tls/ca.crt.
ssl.keystore.type=PEM
ssl.keystore.location=$dir/tls/broker.pem
log.dirs=$dir/log
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests start and stop consumers all the time: no initial rebalance delay, and short
# session timeouts allowed (a dead static member must lose its partitions within a test).
group.initial.rebalance.delay.ms=0
group.min.session.timeout.ms=1000
auto.create.topics.enable=false
PROPS
  if [ ! -f "$dir/log/meta.properties" ]; then
    local id; id=$(kafka_java kafka.tools.StorageTool random-uuid)
    kafka_java kafka.tools.StorageTool format --standalone -t "$id" -c "$dir/server.properties" \
      >"$dir/format.log" 2>&1 || { cat "$dir/format.log" >&2; return 1; }
  fi
  nohup java -Xms"$KAFKA_HEAP" -Xmx"$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -Djava.awt.headless=true -cp "$KAFKA_HOME/libs/*" \
    -Dlog4j2.configurationFile="$HERE/kafka/log4j2.yaml" -Dkafka.logs.dir="$dir" \
    kafka.Kafka "$dir/server.properties" >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  wait_for kafka 120 kafka_ready
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
    command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    wait_for redis 30 redis-cli -h 127.0.0.1 ping
  fi
  # Retry wake-ups use key-expiry events (docs/REFERENCE.md §5).
  redis-cli -h 127.0.0.1 config set notify-keyspace-events Ex >/dev/null || true
}

# A 3-primary Redis Cluster (Debian's redis-server in cluster mode, no replicas) on
# 127.0.0.1:${HERALD_REDIS_CLUSTER_PORTS} (default 7101-7103), for the tests that run Herald on
# a cluster (redis.cluster_nodes). Nothing is kept on disk but the nodes' cluster files.
cluster_ports() { echo "${HERALD_REDIS_CLUSTER_PORTS:-7101 7102 7103}"; }
redis_cluster_ready() {
  local first; first=$(cluster_ports | awk '{print $1}')
  redis-cli -h 127.0.0.1 -p "$first" cluster info 2>/dev/null | grep -q 'cluster_state:ok'
}
redis_cluster_up() {
  if redis_cluster_ready; then log "redis cluster already running"; return; fi
  local dir="$DATA/redis-cluster" nodes=() p
  mkdir -p "$dir"
  for p in $(cluster_ports); do
    if ! redis-cli -h 127.0.0.1 -p "$p" ping >/dev/null 2>&1; then
      rm -f "$dir/nodes-$p.conf"
      redis-server --port "$p" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file "$dir/nodes-$p.conf" --dir "$dir" --save "" --appendonly no \
        --daemonize yes --logfile "$dir/redis-$p.log"
    fi
    wait_for "redis cluster node $p" 30 redis-cli -h 127.0.0.1 -p "$p" ping
    nodes+=("127.0.0.1:$p")
  done
  # Nodes from an earlier run may know an old cluster: start them empty.
  for p in $(cluster_ports); do
    redis-cli -h 127.0.0.1 -p "$p" flushall >/dev/null 2>&1 || true
    redis-cli -h 127.0.0.1 -p "$p" cluster reset hard >/dev/null 2>&1 || true
  done
  redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$dir/create.log" 2>&1 \
    || { tail -5 "$dir/create.log" >&2; return 1; }
  wait_for "redis cluster" 30 redis_cluster_ready
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

# Prism validates Herald's provider requests against Twilio's and SendGrid's published API
# documents (tests/provider-specs); the providers' official Python libraries sign callbacks
# the providers' way, so Herald's verification is checked against theirs, not against itself.
provider_tools_up() {
  if [ ! -x "$TOOLS/node_modules/.bin/prism" ]; then
    command -v npm >/dev/null || { log "npm is needed for Prism"; return 1; }
    log "installing @stoplight/prism-cli 5 into $TOOLS (npm)"
    mkdir -p "$TOOLS"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS" @stoplight/prism-cli@5 >"$CACHE/prism-install.log" 2>&1 \
      || { tail -20 "$CACHE/prism-install.log" >&2; return 1; }
  fi
  if [ ! -f "$TOOLS/venv/.complete-4" ]; then
    log "installing the twilio, sendgrid, Segment and RudderStack Python libraries, confluent-kafka and schemathesis into $TOOLS/venv (PyPI)"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q twilio sendgrid cryptography aiosmtpd google-auth \
      segment-analytics-python rudder-sdk-python confluent-kafka schemathesis
    touch "$TOOLS/venv/.complete" "$TOOLS/venv/.complete-2" "$TOOLS/venv/.complete-3" "$TOOLS/venv/.complete-4"
  fi
  # Segment's Node.js library, for the HTTP ingest tests (tests/ingest_clients.js).
  if [ ! -d "$TOOLS/node_modules/@segment/analytics-node" ]; then
    log "installing @segment/analytics-node into $TOOLS (npm)"
    npm install --silent --no-audit --no-fund --prefix "$TOOLS" @segment/analytics-node@3 >"$CACHE/segment-install.log" 2>&1 \
      || { tail -20 "$CACHE/segment-install.log" >&2; return 1; }
  fi
}

stop_pidfile() { # pid file: SIGTERM, then wait (up to 30 s) until the process is gone
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$f"
}

case "${1:-up}" in
  up) redis_up; redis_cluster_up; mongo_up; kafka_up; rabbit_up; tools_up; provider_tools_up ;;
  restart-kafka) stop_pidfile "$DATA/kafka/pid"; kafka_up ;;   # the fault-injection runner's broker restart
  down) stop_pidfile "$DATA/kafka/pid"; stop_pidfile "$DATA/nx/pid"; log "stopped kafka and nx-27017" ;;
  status)
    port_open "$KAFKA_PORT" && echo "kafka   up :$KAFKA_PORT" || echo "kafka   down"
    port_open "$MONGO_PORT" && echo "mongo   up :$MONGO_PORT" || echo "mongo   down"
    redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && echo "redis   up" || echo "redis   down"
    redis_cluster_ready && echo "redis cluster up :$(cluster_ports)" || echo "redis cluster down"
    rabbitmq-diagnostics -q ping >/dev/null 2>&1 && echo "rabbit  up" || echo "rabbit  down" ;;
  *) echo "usage: $0 up|down|status|restart-kafka" >&2; exit 2 ;;
esac
