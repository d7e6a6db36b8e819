#!/usr/bin/env bash
# pinned.sh: one full-tiers quotad pinned with Postgres and Redis to CPU 0,
# and one quotabench command on CPU 1, as make bench pins them; for A/B
# runs of one scenario without the whole suite.
#
#   scripts/pinned.sh run -scenario consume-record -d 15s
#   scripts/pinned.sh run -scenario consume-record -mode open -rate 3000 -d 15s
#   scripts/pinned.sh sweep -scenario floor -d 10s
#
# It uses the dev stack (scripts/stack.sh), a database of its own
# (quotad_pinned) and Redis database 2, recreated and seeded with 10,000
# subjects per plan unless FRESH=0. quotad's log goes to
# .data/pinned-quotad.log.
#
# Settings (environment):
#   BIN     the quotad binary, default bin/quotad (build it first)
#   QENV    more quotad settings, e.g. "QUOTAD_FLUSH_INTERVAL=250ms"
#   FRESH   1 (default) recreates and seeds the database; 0 keeps it
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { sed -n '2,18p' "$0"; exit 2; }
scripts/stack.sh install >/dev/null
scripts/stack.sh start >/dev/null
eval "$(scripts/stack.sh env)"
pgport="${QUOTAD_POSTGRES_URL#*127.0.0.1:}"; pgport="${pgport%%/*}"
redisport="${QUOTAD_REDIS_URL#*127.0.0.1:}"; redisport="${redisport%%/*}"
psql=$(ls -d /usr/lib/postgresql/*/bin/psql | tail -1)
db=quotad_pinned
if [[ "${FRESH:-1}" == 1 ]]; then
	"$psql" -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -Xq \
		-c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
	redis-cli -h 127.0.0.1 -p "$redisport" -n 2 flushdb >/dev/null
fi
[[ -x bin/quotabench ]] || go build -o bin/quotabench ./cmd/quotabench

stack_pids() {
	local pm
	pm=$(head -1 .data/postgres/data/postmaster.pid)
	echo "$pm" $(pgrep -P "$pm") $(cat .data/redis/redis.pid)
}
for pid in $(stack_pids); do taskset -a -p -c 0 "$pid" >/dev/null 2>&1 || true; done

# shellcheck disable=SC2086 # QENV is a list of settings
env -u GOMAXPROCS -u GOGC QUOTAD_ADDR=127.0.0.1:19080 QUOTAD_ADMIN_KEY=dev-admin-key QUOTAD_LOG_LEVEL=warn \
	QUOTAD_BENCH_FLOOR=1 QUOTAD_DEV=1 \
	QUOTAD_POSTGRES_URL="postgres://postgres@127.0.0.1:$pgport/$db?sslmode=disable" \
	QUOTAD_REDIS_URL="redis://127.0.0.1:$redisport/2" ${QENV:-} \
	taskset -c 0 "${BIN:-bin/quotad}" serve >.data/pinned-quotad.log 2>&1 &
quotad=$!
cleanup() {
	kill "$quotad" 2>/dev/null || true
	wait "$quotad" 2>/dev/null || true
	for pid in $(stack_pids); do taskset -a -p -c 0-"$(($(nproc) - 1))" "$pid" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT
bin/quotabench wait -url http://127.0.0.1:19080 -timeout 60s
if [[ "${FRESH:-1}" == 1 ]]; then
	bin/quotabench seed -url http://127.0.0.1:19080 -subjects 10000 -q >/dev/null
fi
cmd=$1
shift
taskset -c 1 bin/quotabench "$cmd" -url http://127.0.0.1:19080 "$@"
