#!/usr/bin/env bash
# Runs Herald's fuzz targets (fuzz/, cargo fuzz with libFuzzer) for a given time each.
#
#   scripts/fuzz.sh [SECONDS_EACH] [TARGET...]     (default: 60 s, every target)
#   scripts/fuzz.sh build                          (only build every target, as a run would)
#
# Installs cargo-fuzz from crates.io when missing. Builds on the stable toolchain with
# AddressSanitizer (RUSTC_BOOTSTRAP=1 lets stable rustc take the sanitizer flag; set
# FUZZ_SANITIZER=none to build without it). New inputs go to fuzz/target/corpus/<target>, the
# committed seeds in fuzz/corpus/<target> are read, never written; a crash is kept in
# fuzz/artifacts/<target> and fails the run. Prints one line per target: executions, seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(event_decode segment_request ingest_body callbacks config_load template_render packed_state)
fi
if ! cargo fuzz --help >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (crates.io)" >&2
  cargo install cargo-fuzz --locked
fi
sanitizer="${FUZZ_SANITIZER:-address}"
export RUSTC_BOOTSTRAP=1
if [ "$secs" = build ]; then
  # The same build options as `cargo fuzz run` below, so the runs find it done.
  cargo fuzz build --sanitizer "$sanitizer"
  exit 0
fi
mkdir -p fuzz/target/logs
for t in "${targets[@]}"; do
  mkdir -p "fuzz/target/corpus/$t"
  log="fuzz/target/logs/$t.log"
  if ! cargo fuzz run --sanitizer "$sanitizer" "$t" "fuzz/target/corpus/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "fuzz: $t FAILED (log: $log, input in fuzz/artifacts/$t)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  echo "fuzz: $t ${runs:-?} executions in ${secs} s, 0 crashes"
done
