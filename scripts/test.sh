#!/usr/bin/env bash
# Runs Herald's whole test suite: starts the real backends first (installing what is missing:
# Apache Kafka from Maven Central, nx-27017 from PyPI, Redis and RabbitMQ from Debian), then every
# unit, actor and integration test.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/backends.sh up
cargo test "$@"
