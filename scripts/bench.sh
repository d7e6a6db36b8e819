#!/usr/bin/env bash
# make bench: the benchmark suite on this machine, from nothing.
#
#   1. installs Postgres/Redis if missing and starts the dev stack (scripts/stack.sh)
#   2. builds bin/quotad and bin/quotabench
#   3. starts two quotads on the stack:
#        full tiers      127.0.0.1:18080  QUOTAD_BENCH_FLOOR=1  pprof 127.0.0.1:6060
#        postgres tiers  127.0.0.1:18081  QUOTAD_TIERS=postgres pprof 127.0.0.1:6061
#   4. pins the server side (both quotads, Postgres, Redis) to CPU 0 and
#      quotabench to CPU 1 (taskset; unpinned, and said so, without it)
#   5. seeds the benchmark subjects, runs `quotabench suite`, prints the table
#      and writes bench/results/<date>/ (report.json, report.md, chart.svg)
#   6. stops both quotads and un-pins Postgres and Redis; the stack keeps
#      running like after make run (make stop stops it)
#
# The bench gets its own Postgres database and Redis database on the stack,
# recreated empty each time (BENCH_FRESH=0 keeps them): quotads sharing a
# Redis database share the flusher's consumer group, so a `make run` quotad
# would otherwise flush (and count) the bench's consumes, and the bench would
# fill the dev database with its subjects and ledger.
#
# Settings (environment):
#   DURATION  per scenario, default 15s       CONNS     connections, default 64
#   SUBJECTS  per plan, default 10000         WARMUP    per target, default 3s
#   BENCH_ARGS      more `quotabench suite` flags, e.g. "-mode open -rate 20000"
#   SERVER_GOMAXPROCS  quotad's GOMAXPROCS when pinned; default unset (Go: 1)
#   BENCH_PGDB      default quotad_bench      BENCH_REDIS_DB  default 1
#                   (the postgres-tiers quotad uses BENCH_PGDB_pg: its direct
#                   writes would otherwise mark the full tiers' counters
#                   stale, and the full tiers reload them all)
#   BENCH_FRESH     default 1 (drop and recreate both before the run)
#   SWEEP           default 1: after the suite, the open-loop sweep of
#                   consume-record and consume-record-nokey (quotabench
#                   sweep, SWEEP_DURATION per step, default 10s)
#   FULL_ADDR / PG_ADDR   default 127.0.0.1:18080 / 127.0.0.1:18081
#   BENCH_REDIS     cluster: instead of the suite, consume-record and
#                   consume-batch on a Redis Cluster of SHARDS masters
#                   (scripts/bench-cluster.sh, which has its settings)
set -euo pipefail
START_SECONDS=$SECONDS
if [[ "${BENCH_REDIS:-}" == cluster ]]; then
	exec "$(dirname "${BASH_SOURCE[0]}")/bench-cluster.sh"
fi

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
DATA_DIR="${DATA_DIR:-$REPO_ROOT/.data}"
export DATA_DIR
DURATION="${DURATION:-15s}"
CONNS="${CONNS:-64}"
SUBJECTS="${SUBJECTS:-10000}"
WARMUP="${WARMUP:-3s}"
BENCH_ARGS="${BENCH_ARGS:-}"
SERVER_GOMAXPROCS="${SERVER_GOMAXPROCS:-}"
BENCH_PGDB="${BENCH_PGDB:-quotad_bench}"
BENCH_REDIS_DB="${BENCH_REDIS_DB:-1}"
BENCH_FRESH="${BENCH_FRESH:-1}"
FULL_ADDR="${FULL_ADDR:-127.0.0.1:18080}"
PG_ADDR="${PG_ADDR:-127.0.0.1:18081}"
FULL_DEBUG="${FULL_DEBUG:-127.0.0.1:6060}"
PG_DEBUG="${PG_DEBUG:-127.0.0.1:6061}"
KEY=dev-admin-key
DATE="$(date +%F)"
OUT=bench/results
RAW="$OUT/$DATE/raw"

log() { echo "bench: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

[[ "$BENCH_PGDB" =~ ^[a-z_][a-z0-9_]*$ ]] || die "BENCH_PGDB must be a plain lower-case name"
[[ "$BENCH_REDIS_DB" =~ ^[0-9]+$ ]] || die "BENCH_REDIS_DB must be a number"

# ---------------------------------------------------------------- stack and build

scripts/stack.sh install
log "building bin/quotad and bin/quotabench"
go build -o bin/quotad ./cmd/quotad
go build -o bin/quotabench ./cmd/quotabench
scripts/stack.sh start
eval "$(scripts/stack.sh env)"
PGPORT="${QUOTAD_POSTGRES_URL#*127.0.0.1:}"
PGPORT="${PGPORT%%/*}"
REDISPORT="${QUOTAD_REDIS_URL#*127.0.0.1:}"
REDISPORT="${REDISPORT%%/*}"
BENCH_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/$BENCH_PGDB?sslmode=disable"
BENCH_PG_POSTGRES_URL="postgres://postgres@127.0.0.1:$PGPORT/${BENCH_PGDB}_pg?sslmode=disable"
BENCH_REDIS_URL="redis://127.0.0.1:$REDISPORT/$BENCH_REDIS_DB"

# psql: on PATH, next to initdb, or the highest /usr/lib/postgresql/*/bin.
PSQL="$(command -v psql || true)"
if [[ -z "$PSQL" ]] && command -v initdb >/dev/null; then
	PSQL="$(dirname "$(readlink -f "$(command -v initdb)")")/psql"
fi
if [[ ! -x "$PSQL" ]]; then
	PSQL="$(ls -d /usr/lib/postgresql/*/bin/psql 2>/dev/null | sort -V | tail -n 1 || true)"
fi
[[ -x "$PSQL" ]] || die "psql not found"
psql_admin() { "$PSQL" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Xq -v ON_ERROR_STOP=1 "$@"; }

if [[ "$BENCH_FRESH" == 1 ]]; then
	log "recreating Postgres database $BENCH_PGDB and flushing Redis database $BENCH_REDIS_DB"
	for db in "$BENCH_PGDB" "${BENCH_PGDB}_pg"; do
		psql_admin -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null
	done
	redis-cli -h 127.0.0.1 -p "$REDISPORT" -n "$BENCH_REDIS_DB" flushdb >/dev/null
fi
for db in "$BENCH_PGDB" "${BENCH_PGDB}_pg"; do
	if [[ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" != 1 ]]; then
		psql_admin -c "CREATE DATABASE $db" >/dev/null
	fi
done

# ---------------------------------------------------------------- ports

port_taken() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for addr in "$FULL_ADDR" "$PG_ADDR" "$FULL_DEBUG" "$PG_DEBUG"; do
	port_taken "$addr" && die "$addr is taken (an earlier bench still running?); set FULL_ADDR/PG_ADDR/FULL_DEBUG/PG_DEBUG"
done

# ---------------------------------------------------------------- pinning

SERVER_PIN=() # command prefixes
CLIENT_PIN=()
SERVER_ENV=()
STACK_PIDS=()
ORIG_AFFINITY=""
NCPU="$(nproc)"

# stack_pids prints the pids of the stack's Postgres (postmaster and its
# children) and Redis, from their pid files: only this stack's servers,
# not other Postgres or Redis servers on the machine (e.g. the tests').
stack_pids() {
	local pm rp
	if [[ -s "$DATA_DIR/postgres/data/postmaster.pid" ]]; then
		pm="$(head -n 1 "$DATA_DIR/postgres/data/postmaster.pid")"
		if [[ "$pm" =~ ^[0-9]+$ ]] && kill -0 "$pm" 2>/dev/null; then
			echo "$pm"
			pgrep -P "$pm" || true
		fi
	fi
	if [[ -s "$DATA_DIR/redis/redis.pid" ]]; then
		rp="$(cat "$DATA_DIR/redis/redis.pid")"
		[[ "$rp" =~ ^[0-9]+$ ]] && kill -0 "$rp" 2>/dev/null && echo "$rp"
	fi
	return 0
}

if ! command -v taskset >/dev/null; then
	PINNING="unpinned: taskset (util-linux) not found; server and client share all $NCPU CPUs"
	log "warning: $PINNING"
elif ((NCPU < 2)); then
	PINNING="unpinned: only $NCPU CPU"
	log "warning: $PINNING"
else
	mapfile -t STACK_PIDS < <(stack_pids)
	((${#STACK_PIDS[@]} > 0)) || die "no Postgres/Redis pids found under $DATA_DIR"
	ORIG_AFFINITY="$(taskset -p -c "${STACK_PIDS[0]}" | sed 's/.*: *//')"
	# Postgres and Redis run already: re-pin every thread of every process.
	# Backends the postmaster forks later inherit its affinity.
	for pid in "${STACK_PIDS[@]}"; do
		taskset -a -p -c 0 "$pid" >/dev/null 2>&1 || true
	done
	SERVER_PIN=(taskset -c 0)
	CLIENT_PIN=(taskset -c 1)
	# A Go program pinned to one CPU sizes GOMAXPROCS from its affinity mask,
	# so quotad gets GOMAXPROCS=1, as any quotad pinned to one core would, and
	# as the reference figures of the bench's issue were measured (an echo
	# handler: ~70k req/s, p99 2.3 ms). With one P a goroutine runs until it
	# blocks: the batcher yields before it fills a batch and the flusher every
	# 256 events, or consumes went to Redis five at a time and the flusher held
	# the P for up to 10 ms. SERVER_GOMAXPROCS=2 gives quotad two Ps on its
	# one CPU instead: the kernel then time-slices its threads, which costs
	# the floor and the checks p99 6 ms instead of 2-3 ms (2026-11-27 runs).
	if [[ -n "$SERVER_GOMAXPROCS" ]]; then
		SERVER_ENV=(GOMAXPROCS="$SERVER_GOMAXPROCS")
		PINNING="quotad ×2, Postgres and Redis on CPU 0 (quotad GOMAXPROCS=$SERVER_GOMAXPROCS); quotabench on CPU 1 (GOMAXPROCS from its affinity)"
	else
		PINNING="quotad ×2, Postgres and Redis on CPU 0; quotabench on CPU 1 (both GOMAXPROCS from their affinity: 1)"
	fi
fi

QUOTAD_PIDS=()
cleanup() {
	local pid
	for pid in "${QUOTAD_PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${QUOTAD_PIDS[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [[ -n "$ORIG_AFFINITY" ]]; then
		# Give Postgres and Redis back the CPUs they had.
		for pid in $(stack_pids); do
			taskset -a -p -c "$ORIG_AFFINITY" "$pid" >/dev/null 2>&1 || true
		done
	fi
	log "quotads stopped; the stack keeps running (make stop stops it)"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- quotads

mkdir -p "$RAW"
# An inherited GOMAXPROCS or GOGC would change what is measured without
# the report saying so: quotad runs with its own (GOGC 200, cmd/quotad).
start_quotad() { # name addr debug [VAR=value...]
	local name="$1" addr="$2" debug="$3"
	shift 3
	env -u GOMAXPROCS -u GOGC QUOTAD_ADDR="$addr" QUOTAD_DEBUG_ADDR="$debug" QUOTAD_ADMIN_KEY="$KEY" QUOTAD_DEV=1 QUOTAD_LOG_LEVEL=warn \
		QUOTAD_POSTGRES_URL="$BENCH_POSTGRES_URL" QUOTAD_REDIS_URL="$BENCH_REDIS_URL" \
		"${SERVER_ENV[@]}" "$@" "${SERVER_PIN[@]}" bin/quotad serve >"$RAW/quotad-$name.log" 2>&1 &
	QUOTAD_PIDS+=($!)
	if ! bin/quotabench wait -url "http://$addr" -timeout 60s; then
		tail -n 30 "$RAW/quotad-$name.log" >&2 || true
		die "quotad ($name) did not start (log: $RAW/quotad-$name.log)"
	fi
	log "quotad ($name) on $addr, pid $!, log $RAW/quotad-$name.log"
}
start_quotad full "$FULL_ADDR" "$FULL_DEBUG" QUOTAD_BENCH_FLOOR=1
start_quotad postgres "$PG_ADDR" "$PG_DEBUG" QUOTAD_TIERS=postgres QUOTAD_POSTGRES_URL="$BENCH_PG_POSTGRES_URL"

# ---------------------------------------------------------------- seed and run

"${CLIENT_PIN[@]}" bin/quotabench seed -url "http://$FULL_ADDR" -key "$KEY" -subjects "$SUBJECTS"
"${CLIENT_PIN[@]}" bin/quotabench seed -url "http://$PG_ADDR" -key "$KEY" -subjects "$SUBJECTS"
# shellcheck disable=SC2086 # BENCH_ARGS is a list of flags
env -u GOMAXPROCS "${CLIENT_PIN[@]}" bin/quotabench suite \
	-full-url "http://$FULL_ADDR" -postgres-url "http://$PG_ADDR" \
	-key "$KEY" -d "$DURATION" -c "$CONNS" -subjects "$SUBJECTS" -warmup "$WARMUP" \
	-out "$OUT" -date "$DATE" -pinning "$PINNING" \
	-note "make bench: Postgres databases $BENCH_PGDB (full tiers) and ${BENCH_PGDB}_pg (postgres tiers), Redis database $BENCH_REDIS_DB$([[ "$BENCH_FRESH" == 1 ]] && echo ", all recreated empty before the run")" \
	$BENCH_ARGS

# Open loop: what the consumes sustain when clients do not wait for quotad
# (the closed loop's maximum, then fixed arrival rates at fractions of it),
# with an idempotency key on each consume and without. SWEEP=0 skips it.
if [[ "${SWEEP:-1}" == 1 ]]; then
	for sc in consume-record consume-record-nokey; do
		log "sweep: $sc"
		env -u GOMAXPROCS "${CLIENT_PIN[@]}" bin/quotabench sweep -url "http://$FULL_ADDR" -key "$KEY" \
			-scenario "$sc" -d "${SWEEP_DURATION:-10s}" -c "$CONNS" -subjects "$SUBJECTS" -q \
			-out "$OUT/$DATE/sweep-$sc.json" >"$OUT/$DATE/sweep-$sc.md"
		cat "$OUT/$DATE/sweep-$sc.md"
	done
fi

ELAPSED=$((SECONDS - START_SECONDS))
echo
echo "results: $OUT/$DATE/ (report.md, report.json, chart.svg; quotad logs and percentile files in raw/)"
printf 'make bench took %dm%02ds\n' $((ELAPSED / 60)) $((ELAPSED % 60))
