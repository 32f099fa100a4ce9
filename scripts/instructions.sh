#!/usr/bin/env bash
# Counts the instructions the embedded pipeline's steps execute, under callgrind: repeatable
# for the same binary (within a fraction of a percent per step), where timing runs of
# `cargo bench --bench pipeline` vary by ±15 % on a shared machine.
#
#   scripts/instructions.sh [BENCH_BINARY...]
#
# Without arguments it builds the pipeline bench and counts it; with binaries (copies of
# earlier builds' `target/release/deps/pipeline-*`), each is counted in turn, so two builds
# compare step by step. The workload is smaller than the bench's default (callgrind runs ~50×
# slower): HERALD_BENCH_EVENTS (default here 100,000) and HERALD_BENCH_USERS (10,000).
# Needs valgrind (callgrind_annotate comes with it).
set -euo pipefail
cd "$(dirname "$0")/.."
export HERALD_BENCH_EVENTS="${HERALD_BENCH_EVENTS:-100000}"
export HERALD_BENCH_USERS="${HERALD_BENCH_USERS:-10000}"
binaries=("$@")
if [ ${#binaries[@]} -eq 0 ]; then
  built=$(cargo bench --bench pipeline --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "pipeline" and m.get("executable"):
        print(m["executable"])')
  binaries=("$built")
fi
out=target/instructions
mkdir -p "$out"
# Inclusive counts of these steps. callgrind_annotate lists a function once per source file
# its inlined code came from ("file:function"), each a part of the whole: a step's count is
# its function's largest line. Alternatives separated by "||": the first one found counts (a
# function renamed).
steps=(
  'decoding (decode-only pass, pipeline, verification)|herald::domain::event::decode_within||herald::domain::event::decode'
  'a partition: decoding and routing its fetches|herald::actors::partition::PartitionActor::process'
  'a shard: applying a batch|<herald::actors::user_shard::UserShard as actix::handler::Handler<herald::actors::messages::ApplyBatch>>::handle'
  'a shard: users loaded, their waiting records applied|herald::actors::user_shard::UserShard::install'
  'a shard: building a flush|herald::actors::user_shard::UserShard::flush'
  'a shard: settling a flush|herald::actors::user_shard::UserShard::after_flush'
  'the batcher: writing a flush|herald::actors::batcher::write::{{closure}}'
  'a dispatcher: starting a send|herald::actors::dispatcher::Dispatcher::start_send'
  'a dispatcher: an outcome|herald::actors::dispatcher::Dispatcher::on_outcome'
  'callbacks|herald::actors::callback_handler::CallbackHandler::handle::{{closure}}'
)
for bin in "${binaries[@]}"; do
  name=$(basename "$bin")
  file="$out/$name.callgrind"
  valgrind --tool=callgrind --callgrind-out-file="$file" "$bin" --bench >"$out/$name.log" 2>&1
  callgrind_annotate --inclusive=yes --threshold=100 "$file" >"$file.txt" 2>/dev/null
  echo "== $bin ($HERALD_BENCH_EVENTS events, $HERALD_BENCH_USERS users)"
  python3 - "$file.txt" "${steps[@]}" <<'PY'
import re, sys
totals = {}
line_re = re.compile(r"^\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[[^\]]*\])?$")
for line in open(sys.argv[1]):
    m = line_re.match(line)
    if not m:
        continue
    # "file:function": the file ends at the first single colon.
    named = re.split(r"(?<!:):(?!:)", m.group(2), maxsplit=1)
    if len(named) == 2:
        totals[named[1]] = max(totals.get(named[1], 0), int(m.group(1).replace(",", "")))
for step in sys.argv[2:]:
    label, names = step.split("|", 1)
    count = next((totals[n] for n in names.split("||") if n in totals), None)
    print(f"{count:>16,}  {label}" if count is not None else f"{'-':>16}  {label}")
PY
done
