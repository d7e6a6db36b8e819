#!/usr/bin/env bash
# bench-cluster.sh (BENCH_REDIS=cluster make bench): consume-record and
# consume-batch on a Redis Cluster of SHARDS masters, with the Redis CPU
# each consume costs.
#
# It starts SHARDS cluster-mode redis-servers (no replicas) in
# .data/cluster-bench, splits the slots evenly, and one full-tiers quotad
# on them and on the dev stack's Postgres (database quotad_cluster,
# recreated and seeded). quotad, Postgres and every shard run on CPU 0,
# quotabench on CPU 1, as make bench pins them; on two cores more shards
# share the same core, so the figures say what a shard costs, not how
# shards scale.
#
# Per scenario it prints quotabench's table and then:
#   consumes   rows the run added to the ledger (warm-up included), once flushed
#   redis_cpu  CPU seconds of all shards over the run and its flush (INFO cpu)
#   per op     redis_cpu / consumes
#
# SHARDS=0 runs the same on one Redis out of cluster mode, for comparison.
#
# Settings (environment): SHARDS (default 3), DURATION (15s), CONNS (64),
# BUCKETS (quotad's QUOTAD_REDIS_BUCKETS; default its own), QENV (more quotad
# settings), BASEPORT (first shard's port, default 27001).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARDS="${SHARDS:-3}"
DURATION="${DURATION:-15s}"
CONNS="${CONNS:-64}"
BASEPORT="${BASEPORT:-27001}"
ADDR=127.0.0.1:19180
KEY=dev-admin-key
DIR=.data/cluster-bench
[[ "$SHARDS" =~ ^[0-9]+$ ]] || { echo "SHARDS must be a number" >&2; exit 2; }
cluster=yes
((SHARDS > 0)) || { SHARDS=1; cluster=no; }
log() { printf 'bench-cluster: %s\n' "$*" >&2; }

scripts/stack.sh install >/dev/null
scripts/stack.sh start >/dev/null
eval "$(scripts/stack.sh env)"
pgport="${QUOTAD_POSTGRES_URL#*127.0.0.1:}"; pgport="${pgport%%/*}"
psql=$(ls -d /usr/lib/postgresql/*/bin/psql | sort -V | tail -1)
db=quotad_cluster
log "building bin/quotad and bin/quotabench"
go build -o bin/quotad ./cmd/quotad
go build -o bin/quotabench ./cmd/quotabench

ports=()
for ((i = 0; i < SHARDS; i++)); do ports+=($((BASEPORT + i))); done
quotad=""
pg_pids() { local pm; pm=$(head -1 .data/postgres/data/postmaster.pid); echo "$pm" $(pgrep -P "$pm"); }
cleanup() {
	[[ -n "$quotad" ]] && { kill "$quotad" 2>/dev/null || true; wait "$quotad" 2>/dev/null || true; }
	for p in "${ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
	for pid in $(pg_pids); do taskset -a -p -c 0-"$(($(nproc) - 1))" "$pid" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

log "starting $SHARDS shards on ports ${ports[*]}"
rm -rf "$DIR"
for p in "${ports[@]}"; do
	mkdir -p "$DIR/$p"
	taskset -c 0 redis-server --port "$p" --bind 127.0.0.1 --dir "$DIR/$p" --cluster-enabled "$cluster" \
		--cluster-config-file nodes.conf --save "" --appendonly no --daemonize yes \
		--pidfile "$PWD/$DIR/$p/redis.pid" --logfile "$PWD/$DIR/$p/redis.log"
done
for p in "${ports[@]}"; do
	until redis-cli -p "$p" ping >/dev/null 2>&1; do sleep 0.05; done
done
for ((i = 0; i < SHARDS; i++)); do
	[[ $cluster == yes ]] || break
	redis-cli -p "${ports[$i]}" cluster addslotsrange $((i * 16384 / SHARDS)) $(((i + 1) * 16384 / SHARDS - 1)) >/dev/null
	((i == 0)) || redis-cli -p "${ports[$i]}" cluster meet 127.0.0.1 "${ports[0]}" >/dev/null
done
for p in "${ports[@]}"; do
	[[ $cluster == yes ]] || break
	for ((t = 0; t < 200; t++)); do
		info=$(redis-cli -p "$p" cluster info)
		[[ "$info" == *cluster_state:ok* && "$info" == *"cluster_known_nodes:$SHARDS"* ]] && break
		sleep 0.1
	done
	[[ "$info" == *cluster_state:ok* ]] || { log "shard $p: cluster not ok"; exit 1; }
done
url="redis://127.0.0.1:${ports[0]}"
for ((i = 1; i < SHARDS; i++)); do url+="$([[ $i == 1 ]] && echo '?' || echo '&')addr=127.0.0.1:${ports[$i]}"; done
((SHARDS > 1)) || url+="?addr=127.0.0.1:${ports[0]}" # one node, named as a cluster
[[ $cluster == yes ]] || url="redis://127.0.0.1:${ports[0]}/0"

"$psql" -h 127.0.0.1 -p "$pgport" -U postgres -d postgres -Xq \
	-c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db" >/dev/null
for pid in $(pg_pids); do taskset -a -p -c 0 "$pid" >/dev/null 2>&1 || true; done
pgurl="postgres://postgres@127.0.0.1:$pgport/$db?sslmode=disable"

# shellcheck disable=SC2086 # QENV is a list of settings
env -u GOMAXPROCS -u GOGC QUOTAD_ADDR="$ADDR" QUOTAD_ADMIN_KEY="$KEY" QUOTAD_LOG_LEVEL=warn QUOTAD_DEV=1 \
	QUOTAD_POSTGRES_URL="$pgurl" QUOTAD_REDIS_URL="$url" ${BUCKETS:+QUOTAD_REDIS_BUCKETS=$BUCKETS} ${QENV:-} \
	taskset -c 0 bin/quotad serve >"$DIR/quotad.log" 2>&1 &
quotad=$!
bin/quotabench wait -url "http://$ADDR" -timeout 60s
bin/quotabench seed -url "http://$ADDR" -key "$KEY" -subjects 10000 -q >/dev/null

redis_cpu() { # CPU seconds of every shard so far
	local p sum=0 v
	for p in "${ports[@]}"; do
		v=$(redis-cli -p "$p" info cpu | awk -F: '/^used_cpu_(user|sys):/ {s += $2} END {printf "%.6f", s}')
		sum=$(awk -v a="$sum" -v b="$v" 'BEGIN {printf "%.6f", a + b}')
	done
	echo "$sum"
}
ledger_rows() { "$psql" "$pgurl" -XtAc "SELECT count(*) FROM usage_ledger"; }
pending() { # entries waiting in every shard's streams
	local p n=0 k
	for p in "${ports[@]}"; do
		for k in $(redis-cli -p "$p" --scan --pattern 'q:*pending'); do
			n=$((n + $(redis-cli -p "$p" xlen "$k")))
		done
	done
	echo "$n"
}

for sc in consume-record consume-batch; do
	rows0=$(ledger_rows)
	cpu0=$(redis_cpu)
	taskset -c 1 bin/quotabench run -url "http://$ADDR" -key "$KEY" -scenario "$sc" -d "$DURATION" -c "$CONNS" -subjects 10000 -q
	for ((t = 0; t < 300; t++)); do [[ $(pending) == 0 ]] && break; sleep 0.1; done
	cpu1=$(redis_cpu)
	rows1=$(ledger_rows)
	awk -v sc="$sc" -v n="$([[ $cluster == yes ]] && echo "$SHARDS shard(s)" || echo "one Redis")" -v r=$((rows1 - rows0)) -v c0="$cpu0" -v c1="$cpu1" 'BEGIN {
		printf "%s on %s: consumes %d, redis_cpu %.2f s, per op %.1f µs\n", sc, n, r, c1 - c0, (r > 0 ? (c1 - c0) / r * 1e6 : 0) }'
done
if grep -q "redis unreachable" "$DIR/quotad.log"; then
	log "quotad switched to Postgres during the run: see $DIR/quotad.log"
fi
