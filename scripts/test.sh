#!/usr/bin/env bash
# Runs Herald's whole test suite: starts the real backends first (installing what is missing:
# Apache Kafka from Maven Central, nx-27017 from PyPI, Redis and RabbitMQ from Debian), then every
# unit, actor and integration test, then the suites that use the shared Redis again on the
# Redis Cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/backends.sh up
cargo test "$@"
# The suites that use the shared Redis once more, on the 3-primary Redis Cluster (G11).
if [ $# -eq 0 ]; then
  HERALD_TEST_REDIS=cluster cargo test --test guarantees_it --test messaging_it
fi
