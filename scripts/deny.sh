#!/usr/bin/env bash
# Supply-chain checks with cargo-deny against deny.toml: licenses, bans, sources, and the
# RustSec advisories when their database can be fetched.
#
#   scripts/deny.sh
#
# Installs cargo-deny from crates.io when missing. The advisory database is a git repository
# on github.com: where it cannot be fetched (an offline or walled machine) the advisories check
# is reported as not run, on stderr, and the other checks still decide the result.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny: installing cargo-deny (crates.io)" >&2
  cargo install cargo-deny --locked
fi
cargo deny --log-level error check licenses bans sources
echo "deny: licenses, bans, sources ok"
if timeout 120 cargo deny --log-level error fetch db >/dev/null 2>&1; then
  cargo deny --log-level error check advisories
  echo "deny: advisories ok"
else
  echo "deny: advisories NOT checked: the RustSec advisory database could not be fetched" >&2
fi
