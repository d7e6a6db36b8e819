#!/usr/bin/env bash
# Throughput of POST /v1/check and /v1/consume with the full tiers and with
# QUOTAD_TIERS=postgres, same wrk settings, one after the other. Uses the
# make run stack (scripts/stack.sh); prints wrk's summary for each run.
set -euo pipefail
cd "$(dirname "$0")/../.."
DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
scripts/stack.sh install
scripts/stack.sh start >/dev/null
eval "$(scripts/stack.sh env)"
go build -o bin/quotad ./cmd/quotad
for tiers in full postgres; do
  QUOTAD_TIERS=$tiers QUOTAD_ADDR=127.0.0.1:18181 QUOTAD_ADMIN_KEY=dev-admin-key QUOTAD_LOG_LEVEL=error bin/quotad serve &
  pid=$!
  for _ in $(seq 100); do curl -sf 127.0.0.1:18181/healthz >/dev/null && break; sleep 0.1; done
  # warm: provision the 10,000 subjects and load their counters
  wrk -t2 -c"$CONNS" -d3s -s bench/wrk/consume.lua http://127.0.0.1:18181 >/dev/null
  for op in check consume; do
    echo "== tiers=$tiers op=$op connections=$CONNS duration=$DURATION"
    wrk -t2 -c"$CONNS" -d"$DURATION" --latency -s bench/wrk/$op.lua http://127.0.0.1:18181 | grep -E "Requests/sec|Latency|50%|90%|99%|Non-2xx|requests in"
  done
  kill -TERM $pid; wait $pid || true
done
