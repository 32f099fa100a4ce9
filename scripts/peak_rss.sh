#!/usr/bin/env bash
# Peak memory of `herald run` on the real backends (scripts/backends.sh up): publishes EVENTS
# events over USERS users to a fresh topic, runs the release `herald run` on it with
# `aggregator.max_resident = MAX_RESIDENT` until every record is committed, and prints the
# process's peak RSS (VmHWM), the time taken and the resident-user gauge.
#
#   EVENTS=2000000 USERS=1000000 MAX_RESIDENT=100000 scripts/peak_rss.sh
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-2000000}
USERS=${USERS:-1000000}
MAX_RESIDENT=${MAX_RESIDENT:-100000}
PORT=${PORT:-18080}
NAME="rss_$(date +%s)"
BIN=target/release/herald
[ -x "$BIN" ] || cargo build --release --bin herald
export HERALD__KAFKA__TOPIC="$NAME" HERALD__KAFKA__GROUP_ID="$NAME" HERALD__KAFKA__PARTITIONS=8
export HERALD__MONGO__DATABASE="$NAME" HERALD__REDIS__PREFIX="$NAME:"
export HERALD__LOG__FORMAT=json HERALD__HTTP__LISTEN="127.0.0.1:$PORT"
export HERALD__AGGREGATOR__MAX_RESIDENT="$MAX_RESIDENT"
echo "publishing $EVENTS events over $USERS users to $NAME"
"$BIN" produce --events "$EVENTS" --users "$USERS" --seed 7 2>/dev/null
mkdir -p target/bench
LOG="target/bench/$NAME.log"
started=$(date +%s.%N)
"$BIN" run 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
committed() {
  curl -sf "http://127.0.0.1:$PORT/metrics" 2>/dev/null \
    | awk '/^herald_commit_offset\{/ {s += $2} END {printf "%d", s}'
}
while :; do
  sleep 1
  kill -0 $PID 2>/dev/null || { echo "herald exited early; see $LOG"; exit 1; }
  c=$(committed || echo 0)
  [ "${c:-0}" -ge "$EVENTS" ] && break
done
finished=$(date +%s.%N)
resident=$(curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^herald_users_resident / {print $2}')
peak=$(awk '/^VmHWM:/ {print $2}' "/proc/$PID/status")
kill -TERM $PID; wait $PID || true
trap - EXIT
awk -v s="$started" -v f="$finished" -v n="$EVENTS" -v p="$peak" -v r="$resident" 'BEGIN {
  printf "events: %d in %.1f s (%.0f events/s)\n", n, f - s, n / (f - s)
  printf "users resident at the end: %d\n", r
  printf "peak RSS (VmHWM): %.1f MiB\n", p / 1024
}'
