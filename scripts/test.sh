#!/usr/bin/env bash
# Runs Herald's whole test suite. Later steps start the real backends here first
# (Kafka-protocol broker, MongoDB-protocol server, Redis, RabbitMQ); the foundation needs none.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test "$@"
