#!/usr/bin/env bash
# The fault-injection runner: runs the named scenarios of tests/chaos.rs (all of them by
# default: r1 … r11) one at a time against a release `herald run` on the real servers, checks
# each against the reference model, and writes the table of results into RELIABILITY.md
# (between the chaos markers) from target/chaos/results.jsonl.
#
#   scripts/chaos.sh [SCENARIO...]        e.g. scripts/chaos.sh r1_ r4_
#
# Without arguments every scenario runs and the table is rebuilt; with some, their rows are
# replaced and the others kept.
#
# Loopback only; each scenario's faults and waits are bounded (tests/chaos.rs). Starts the
# backends first. A scenario that loses or doubles anything fails the run (its row is still
# written, marked).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/backends.sh up
out=target/chaos
mkdir -p "$out"
filters=("$@")
if [ ${#filters[@]} -eq 0 ]; then
  filters=(r1_ r2_ r3_ r4_ r5_ r6_ r7_ r8_ r9_ r10_ r11_)
  rm -f "$out/results.jsonl"   # a full run starts a new table; a partial one replaces its rows
fi
status=0
for f in "${filters[@]}"; do
  cargo test --release --test chaos -- --ignored --test-threads=1 --nocapture "$f" \
    >"$out/$f.log" 2>&1 || { status=1; echo "chaos: $f FAILED (log: $out/$f.log)" >&2; }
  grep -o 'chaos: {.*' "$out/$f.log" | tail -1 || true
done
partial=$([ $# -gt 0 ] && echo partial || echo full)
python3 - "$out/results.jsonl" RELIABILITY.md "$partial" <<'PY'
import json, sys, datetime, re
# The latest row of each scenario (a partial rerun replaces its rows), in scenario order.
latest = {}
for l in open(sys.argv[1]):
    if l.strip():
        r = json.loads(l)
        latest[(r["scenario"], r["what"])] = r
rows = sorted(latest.values(), key=lambda r: (int(r["scenario"][1:]), r["what"]))
table = [
    "| scenario | faults | events | lost | doubled | users differing | dead-lettered (expected) | users = replay after the last fault | |",
    "|---|---|---|---|---|---|---|---|---|",
]
rowlines, notes = [], []
for r in rows:
    ok = "pass" if r["passed"] else "**FAIL**"
    rowlines.append(
        f"| {r['scenario']}: {r['what']} | {r['faults']} | {r['events']:,} | {r['lost']} | {r['doubled']} "
        f"| {r['users_differing']} | {r['dead_lettered']:,} ({r['dead_expected']:,}) | {r['recover_s']:.1f} s | {ok} |")
    notes.append(f"- {r['scenario']}: {r['notes']}")
text = open(sys.argv[2]).read()
begin, end = "<!-- chaos:begin -->", "<!-- chaos:end -->"
head = f"One run of `scripts/chaos.sh` on {datetime.date.today()} (this machine: 2 cores, every server on loopback)."
if sys.argv[3] == "partial" and begin in text:
    # A partial run replaces the rows and notes of the scenarios it ran and keeps the others
    # as the table has them (its results file may hold only this run's).
    old = text.split(begin, 1)[1].split(end, 1)[0]
    ran = {r["scenario"] for r in rows}
    sid = lambda line: re.match(r"[|-] (R\d+):", line).group(1)
    kept_rows = [l for l in old.splitlines() if re.match(r"\| R\d+:", l) and sid(l) not in ran]
    kept_notes = [l for l in old.splitlines() if re.match(r"- R\d+:", l) and sid(l) not in ran]
    order = lambda line: int(sid(line)[1:])
    rowlines = sorted(kept_rows + rowlines, key=order)
    notes = sorted(kept_notes + notes, key=order)
    head = (f"Runs of `scripts/chaos.sh` (this machine: 2 cores, every server on loopback), the latest of "
            f"each scenario; {', '.join(sorted(ran, key=lambda x: int(x[1:])))} on {datetime.date.today()}.")
body = "\n".join([head, ""] + table + rowlines + [""] + notes)
if begin in text:
    text = re.sub(re.escape(begin) + ".*?" + re.escape(end), begin + "\n" + body + "\n" + end, text, flags=re.S)
else:
    text += "\n" + begin + "\n" + body + "\n" + end + "\n"
open(sys.argv[2], "w").write(text)
print(body)
PY
exit $status
