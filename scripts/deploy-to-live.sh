#!/usr/bin/env bash
# Measures deploy -> live of a plugin on two workers (docs/BENCHMARKS.md): starts
# `order-pipeline run` (worker a, which serves the AdminService) and `order-pipeline
# worker` (worker b) on Kafka + Redis, deploys the plugin twice (the second time with a
# new config, so the same component), and prints the seconds from the start of each
# `plugin deploy` to its answer and to each worker's "ruleset switched" log line.
#
#   scripts/deploy-to-live.sh BINARY PLUGIN.wasm EXAMPLES_DIR CONFIG_KEY BASE_VALUE shared|separate
#
# KAFKA_BROKERS and REDIS_ADDR name the services (default 127.0.0.1:9092 and :6379).
# `shared`: both workers use one COMPONENT_CACHE_DIR; `separate`: each its own.
set -euo pipefail
BIN="$1" PLUGIN="$2" EXAMPLES="$3" KEY="$4" BASE="$5" CACHES="$6"
WORK="$(mktemp -d -t deploy-to-live.XXXXXX)"
mkdir -p "$WORK/a" "$WORK/b"
TOPIC="deploy-to-live-$$-$RANDOM"
export KAFKA_BROKERS="${KAFKA_BROKERS:-127.0.0.1:9092}" REDIS_ADDR="${REDIS_ADDR:-127.0.0.1:6379}"
export KAFKA_TOPIC="$TOPIC" DLQ_TOPIC="$TOPIC-dlq" WORKER_GROUP="$TOPIC" LOG_FORMAT=json METRICS_ADDR=
if [ "$CACHES" = shared ]; then CACHE_A="$WORK/cache" CACHE_B="$WORK/cache"
else CACHE_A="$WORK/a/cache" CACHE_B="$WORK/b/cache"; fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ADMIN="127.0.0.1:$(port)"
DATA_DIR="$WORK/a" COMPONENT_CACHE_DIR="$CACHE_A" WORKER_INSTANCE_ID=a ADMIN_ADDR="$ADMIN" \
  ORDER_SERVICE_ADDR="127.0.0.1:$(port)" CACHE_SERVICE_ADDR="127.0.0.1:$(port)" \
  "$BIN" run > "$WORK/a.log" 2>&1 &
PIDS=($!)
DATA_DIR="$WORK/b" COMPONENT_CACHE_DIR="$CACHE_B" WORKER_INSTANCE_ID=b ADMIN_ADDR="127.0.0.1:$(port)" \
  "$BIN" worker > "$WORK/b.log" 2>&1 &
PIDS+=($!)
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 8
switched_at() { # log version -> Unix seconds of its "ruleset switched" to version
  grep '"ruleset switched"' "$1" | grep "\"to\":$2[,}]" | head -1 | python3 -c '
import sys, json, datetime
line = sys.stdin.readline()
print(datetime.datetime.fromisoformat(json.loads(line)["timestamp"].replace("Z", "+00:00")).timestamp() if line else "nan")'
}
for round in 1 2; do
  t0="$(date +%s.%N)"
  "$BIN" plugin deploy "$PLUGIN" --examples "$EXAMPLES" --config "$KEY=$((BASE + round))" \
    --admin-addr "http://$ADMIN" > "$WORK/deploy.out"
  t1="$(date +%s.%N)"
  version="$(grep -o 'version [0-9]*' "$WORK/deploy.out" | head -1 | cut -d' ' -f2)"
  for _ in $(seq 1 600); do
    if grep -q "\"to\":$version[,}]" "$WORK/a.log" && grep -q "\"to\":$version[,}]" "$WORK/b.log"; then break; fi
    sleep 0.1
  done
  python3 -c "
t0, t1, a, b = $t0, $t1, $(switched_at "$WORK/a.log" "$version"), $(switched_at "$WORK/b.log" "$version")
print('$CACHES caches, deploy %d (version $version): answered %.2f s, worker a live %.2f s, worker b live %.2f s' % ($round, t1 - t0, a - t0, b - t0))"
done
