#!/usr/bin/env bash
# Dev stack for quotad: a private Postgres and Redis with data under $DATA_DIR.
#
#   scripts/stack.sh install   install redis-server / postgresql-15 / chromium via apt-get if missing
#   scripts/stack.sh start     start both servers (idempotent), wait until they accept connections
#   scripts/stack.sh stop      stop both servers (fine if already stopped)
#   scripts/stack.sh status    show whether each server is up
#   scripts/stack.sh env       print export lines for eval: eval "$(scripts/stack.sh env)"
#
# Settings (environment):
#   DATA_DIR   default: <repo>/.data
#   PGPORT     default: 25432
#   REDISPORT  default: 26379
#
# Both servers listen on 127.0.0.1 only. When run as root, Postgres runs as the
# `postgres` OS user (it refuses to run as root).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DATA_DIR="${DATA_DIR:-$REPO_ROOT/.data}"
PGPORT="${PGPORT:-25432}"
REDISPORT="${REDISPORT:-26379}"
PGDB=quotad

log() { echo "stack: $*" >&2; }
die() {
	log "error: $*"
	exit 1
}

# pg_bindir prints the directory holding initdb/pg_ctl: the one of `initdb` on
# PATH, else the highest /usr/lib/postgresql/*/bin. Prints nothing if none.
pg_bindir() {
	local p
	if p="$(command -v initdb 2>/dev/null)"; then
		p="$(readlink -f "$p")"
		dirname "$p"
		return 0
	fi
	local best="" bestv=-1 d v
	for d in /usr/lib/postgresql/*/bin; do
		[[ -x "$d/initdb" ]] || continue
		v="$(basename "$(dirname "$d")")"
		[[ "$v" =~ ^[0-9]+$ ]] || continue
		if ((v > bestv)); then
			best="$d"
			bestv="$v"
		fi
	done
	[[ -n "$best" ]] && echo "$best"
	return 0
}

as_root() {
	if [[ $EUID -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null 2>&1; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

cmd_install() {
	local pkgs=()
	command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
	if ! command -v initdb >/dev/null 2>&1 && [[ ! -x /usr/lib/postgresql/15/bin/initdb ]]; then
		pkgs+=(postgresql-15)
	fi
	# The console's browser tests drive headless Chromium (chromedp).
	command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
	((${#pkgs[@]} == 0)) && return 0
	log "installing ${pkgs[*]}"
	export DEBIAN_FRONTEND=noninteractive
	if ! as_root apt-get install -y -q "${pkgs[@]}"; then
		log "apt-get install failed; running apt-get update and retrying"
		as_root apt-get update -q
		as_root apt-get install -y -q "${pkgs[@]}"
	fi
}

# ---------------------------------------------------------------- ports

# The default ports lie below Linux's ephemeral range (32768-60999), so no
# client socket takes them. Sockets left in TIME_WAIT on them by an earlier
# run do not matter: Postgres and Redis bind with SO_REUSEADDR. Only another
# listening server is a problem.

# port_states PORT prints the (hex) states of the TCP sockets whose local port
# is PORT, from /proc/net/tcp{,6}: 0A is LISTEN, 06 TIME_WAIT, 01 ESTABLISHED.
port_states() {
	local hex
	hex="$(printf '%04X' "$1")"
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk -v p=":$hex" '$2 ~ (p "$") { print $4 }'
}

# wait_port_free PORT VAR fails if another server listens on PORT.
wait_port_free() {
	local port="$1" var="$2"
	if port_states "$port" | grep -qx 0A; then
		die "port $port is taken by another server; set $var to use another port"
	fi
}

# ---------------------------------------------------------------- postgres

PG_ROOT="$DATA_DIR/postgres" # owned by the postgres user when run as root
PGDATA="$PG_ROOT/data"
PG_SOCK="$PG_ROOT" # unix socket dir
PG_LOG="$PG_ROOT/postgres.log"

# as_pg runs a command as the user that owns the cluster.
as_pg() {
	if [[ $EUID -eq 0 ]]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

pg_ready() {
	"$BIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -d postgres -U postgres >/dev/null 2>&1
}

pg_start() {
	BIN="$(pg_bindir)"
	[[ -n "$BIN" ]] || die "Postgres binaries not found (initdb); run: scripts/stack.sh install"
	if [[ $EUID -eq 0 ]] && ! id -u postgres >/dev/null 2>&1; then
		die "running as root but there is no 'postgres' OS user to run Postgres as"
	fi

	mkdir -p "$PG_ROOT"
	if [[ $EUID -eq 0 ]]; then
		chown postgres: "$PG_ROOT"
		chmod 700 "$PG_ROOT"
		as_pg test -x "$PG_ROOT" ||
			die "user postgres cannot reach $PG_ROOT (a parent directory is not searchable); set DATA_DIR elsewhere"
	fi

	if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
		log "initdb $PGDATA"
		as_pg "$BIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --no-locale --no-instructions >/dev/null
	fi

	if as_pg "$BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
		pg_ready || die "Postgres is running from $PGDATA but does not answer on 127.0.0.1:$PGPORT (started with another PGPORT? run: scripts/stack.sh stop)"
	else
		wait_port_free "$PGPORT" PGPORT
		log "starting Postgres on 127.0.0.1:$PGPORT"
		# -w waits until the server accepts connections.
		if ! as_pg "$BIN/pg_ctl" start -w -t 60 -D "$PGDATA" -l "$PG_LOG" \
			-o "-p $PGPORT -k '$PG_SOCK' -c listen_addresses=127.0.0.1 -c shared_buffers=512MB -c max_wal_size=4GB" >/dev/null; then
			tail -n 30 "$PG_LOG" >&2 || true
			die "Postgres did not start (log: $PG_LOG)"
		fi
	fi
	local i
	for ((i = 0; i < 300; i++)); do
		pg_ready && break
		sleep 0.1
	done
	pg_ready || die "Postgres does not accept connections on 127.0.0.1:$PGPORT (log: $PG_LOG)"

	if [[ "$("$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -XtAc \
		"SELECT 1 FROM pg_database WHERE datname = '$PGDB'")" != 1 ]]; then
		log "creating database $PGDB"
		"$BIN/psql" -h 127.0.0.1 -p "$PGPORT" -U postgres -d postgres -Xq -v ON_ERROR_STOP=1 \
			-c "CREATE DATABASE $PGDB" >/dev/null
	fi
}

pg_stop() {
	BIN="$(pg_bindir)"
	[[ -n "$BIN" && -s "$PGDATA/PG_VERSION" ]] || return 0
	if as_pg "$BIN/pg_ctl" status -D "$PGDATA" >/dev/null 2>&1; then
		log "stopping Postgres"
		as_pg "$BIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 >/dev/null
	fi
}

# ---------------------------------------------------------------- redis

REDIS_DIR="$DATA_DIR/redis"
REDIS_PIDFILE="$REDIS_DIR/redis.pid"
REDIS_LOG="$REDIS_DIR/redis.log"

redis_ready() {
	[[ "$(redis-cli -h 127.0.0.1 -p "$REDISPORT" ping 2>/dev/null)" == PONG ]]
}

# redis_pid prints the pid from the pidfile if that process is a live redis-server.
redis_pid() {
	local pid
	[[ -s "$REDIS_PIDFILE" ]] || return 1
	pid="$(cat "$REDIS_PIDFILE")"
	[[ "$pid" =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	grep -q redis "/proc/$pid/comm" 2>/dev/null || return 1
	echo "$pid"
}

redis_start() {
	command -v redis-server >/dev/null 2>&1 || die "redis-server not found; run: scripts/stack.sh install"
	command -v redis-cli >/dev/null 2>&1 || die "redis-cli not found; run: scripts/stack.sh install"
	mkdir -p "$REDIS_DIR"
	if redis_pid >/dev/null; then
		redis_ready || die "redis-server (pid $(redis_pid)) is running but does not answer on 127.0.0.1:$REDISPORT (started with another REDISPORT? run: scripts/stack.sh stop)"
		return 0
	fi
	wait_port_free "$REDISPORT" REDISPORT
	log "starting Redis on 127.0.0.1:$REDISPORT"
	# AOF on (quotad's durability across Redis restarts relies on it). The
	# pending stream churns (every consume is added, then acked and deleted),
	# so the AOF grows far faster than the data: with Redis's default
	# rewrite trigger (at 100 % growth) it rewrote every few seconds under
	# load, which cost a fifth of consume throughput on one core.
	redis-server --port "$REDISPORT" --bind 127.0.0.1 \
		--daemonize yes --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" \
		--dir "$REDIS_DIR" --save "" \
		--appendonly yes --appendfsync everysec \
		--auto-aof-rewrite-percentage 800 --auto-aof-rewrite-min-size 256mb \
		--maxmemory-policy noeviction
	local i
	for ((i = 0; i < 300; i++)); do
		if ! redis_pid >/dev/null; then
			# Give the daemon a moment to write its pidfile, then treat a
			# missing process as a failed start (e.g. port in use).
			((i < 10)) || break
		elif redis_ready; then
			return 0
		fi
		sleep 0.1
	done
	tail -n 30 "$REDIS_LOG" >&2 || true
	die "Redis did not start on 127.0.0.1:$REDISPORT (log: $REDIS_LOG)"
}

redis_stop() {
	local pid i
	pid="$(redis_pid)" || return 0
	log "stopping Redis"
	# SIGTERM is a graceful SHUTDOWN: the AOF is flushed and fsynced. Using the
	# pid (not redis-cli) also works if REDISPORT changed since start.
	kill -TERM "$pid"
	for ((i = 0; i < 600; i++)); do
		kill -0 "$pid" 2>/dev/null || return 0
		sleep 0.1
	done
	die "redis-server (pid $pid) did not stop within 60s"
}

# ---------------------------------------------------------------- main

case "${1:-}" in
install) cmd_install ;;
start)
	pg_start
	redis_start
	;;
stop)
	redis_stop
	pg_stop
	;;
status)
	BIN="$(pg_bindir)"
	if [[ -n "$BIN" ]] && pg_ready; then echo "postgres: up on 127.0.0.1:$PGPORT"; else echo "postgres: down"; fi
	if redis_ready; then echo "redis: up on 127.0.0.1:$REDISPORT"; else echo "redis: down"; fi
	;;
env)
	echo "export QUOTAD_POSTGRES_URL=postgres://postgres@127.0.0.1:$PGPORT/$PGDB?sslmode=disable"
	echo "export QUOTAD_REDIS_URL=redis://127.0.0.1:$REDISPORT/0"
	;;
*)
	echo "usage: $0 install|start|stop|status|env" >&2
	exit 2
	;;
esac
