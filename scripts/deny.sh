#!/usr/bin/env bash
# Supply-chain checks with cargo-deny against deny.toml: licenses, bans, sources, and the
# RustSec advisories when their database can be fetched.
#
#   scripts/deny.sh
#   HERALD_ADVISORY_DB=<dir> scripts/deny.sh   # advisories from a local copy of the database
#
# Installs cargo-deny from crates.io when missing. The advisory database is a git repository
# on github.com: where it cannot be fetched (an offline or walled machine) and no local copy is
# named by HERALD_ADVISORY_DB (a checkout of RustSec's advisory-db, or a copy made a git
# repository), the advisories check is reported as not run, on stderr, and the other checks
# still decide the result.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo deny --version >/dev/null 2>&1; then
  echo "deny: installing cargo-deny (crates.io)" >&2
  cargo install cargo-deny --locked
fi
cargo deny --log-level error check licenses bans sources
echo "deny: licenses, bans, sources ok"
if [ -n "${HERALD_ADVISORY_DB:-}" ]; then
  # cargo-deny looks for the database under <db-path>/advisory-db-<hash of its URL>.
  db_root=$(mktemp -d)
  trap 'rm -rf "$db_root"' EXIT
  sed "s|^db-urls = .*|db-path = \"$db_root\"\n&|" deny.toml >"$db_root/deny.toml"
  hashed=$(cargo deny --offline --log-level error --config "$db_root/deny.toml" check advisories 2>&1 \
    | grep -o "$db_root/advisory-db-[0-9a-f]*" | head -1 || true)
  if [ -n "$hashed" ]; then
    cp -r "$HERALD_ADVISORY_DB" "$hashed"
    [ -d "$hashed/.git" ] || (cd "$hashed" && git init -q && git add -A && git -c user.name=deny -c user.email=deny@localhost commit -qm snapshot)
  fi
  cargo deny --offline --log-level error --config "$db_root/deny.toml" check advisories
  echo "deny: advisories ok (the local database $HERALD_ADVISORY_DB)"
elif timeout 120 cargo deny --log-level error fetch db >/dev/null 2>&1; then
  cargo deny --log-level error check advisories
  echo "deny: advisories ok"
else
  echo "deny: advisories NOT checked: the RustSec advisory database could not be fetched" >&2
fi
