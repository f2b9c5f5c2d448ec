#!/usr/bin/env bash
# The soak (docs/RELIABILITY.md): 100,000 unary orders through the three roles as
# processes on a three-node Apache Kafka cluster and Redis while faults are injected in
# turn (worker kill -9, a worker joining and leaving, the partition leader killed, a
# broker restarted, Redis killed), then through `order-pipeline run` killed with -9.
# Prints every fault's account (accepted, final, lost, changed, UNAVAILABLE answers,
# worst submit-to-decided time) and fails if any accepted order is lost or changed.
#
#   scripts/soak.sh [ORDERS [RATE [STEADY]]]   # defaults: 100000 orders, 300/s, a fault
#                                              # after every 1500 orders of steady running
#
# Needs what scripts/test.sh installs (redis-server, java, mvn); CI runs a short soak
# (12,000 orders) as part of scripts/test.sh. Set FAULTS_KEEP=1 to keep the logs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="${ORDER_PIPELINE_CACHE:-$HOME/.cache/order-pipeline}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
export TEST_KAFKA_SCRIPT="$ROOT/scripts/kafka.sh"
export SOAK_ORDERS="${1:-100000}" SOAK_RATE="${2:-300}" SOAK_STEADY="${3:-1500}"
for tool in redis-server java mvn; do
  command -v "$tool" >/dev/null || { echo "error: $tool is missing; scripts/test.sh installs it" >&2; exit 1; }
done
"$TEST_KAFKA_SCRIPT" libs >/dev/null
echo "soak: $SOAK_ORDERS orders at $SOAK_RATE/s, a fault every $SOAK_STEADY orders"
cargo test -p order-pipeline-cli --test e2e -- --include-ignored --nocapture --exact faults::soak::soak
