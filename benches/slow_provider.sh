#!/usr/bin/env bash
# Slow-provider benchmark (issue 19): a provider limited far below its traffic must not hold
# dispatch capacity. Provider `slow` (route `sms`, mock kind) is limited to RATE messages a
# second (10); BACKLOG (5000) messages are queued for it; then messages for `fast` (route
# `email`, mock kind, no limit) are sent at B_RATE a second (200) for B_SECS seconds (10), from
# SETTLE seconds (1) after the backlog was accepted (time for the dispatcher to take each of them
# in once and set it waiting for its token; SETTLE=0 measures that churn too). The
# figure: the p99 queue-to-attempt time of `fast`'s messages (first attempt's start − created_at,
# as the service recorded them; target < 50 ms), with p50, max, and how many of `slow`'s were
# sent meanwhile. Usage:
#   [STORE=sqlite|memory|postgres] [RATE=10] [BACKLOG=5000] [B_RATE=200] [B_SECS=10] [SETTLE=1] benches/slow_provider.sh [RUNS=3]
# STORE=sqlite (the default store) uses a fresh database file per run; STORE=postgres a fresh
# database per run on PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# SB_BIN: another switchboard binary to measure (an A/B with an older build). Pins the server to
# core 0 and the driver (benches/slow_provider.py) to core 1; one line per run, then the medians.
# Needs: python3, curl, taskset, cargo, 2 cores; psql for STORE=postgres. Not the bench kit.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}
rate=${RATE:-10}; backlog=${BACKLOG:-5000}; b_rate=${B_RATE:-200}; b_secs=${B_SECS:-10}; settle=${SETTLE:-1}

missing=()
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (not on PATH): $2"); }
need python3 "apt-get install -y python3   (the driver, benches/slow_provider.py)"
need curl "apt-get install -y curl"
need taskset "apt-get install -y util-linux   (pins the server and the driver to cores)"
need cargo "install Rust with rustup   (builds switchboard)"
case ${STORE:-sqlite} in
  memory|sqlite) ;;
  postgres) need psql "apt-get install -y postgresql-client   (STORE=postgres creates a database per run on PG_ADMIN_URL)" ;;
  *) missing+=("STORE=${STORE}: use STORE=memory, sqlite or postgres") ;;
esac
if command -v nproc >/dev/null 2>&1 && (( $(nproc) < 2 )); then
  missing+=("a second CPU core: the server is pinned to core 0, the driver to core 1")
fi
if (( ${#missing[@]} )); then
  echo "benches/slow_provider.sh cannot run; missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  exit 2
fi
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/sb-bench-target}
[[ -n ${SB_BIN:-} ]] || cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchboard
sb_bin=${SB_BIN:-$CARGO_TARGET_DIR/release/switchboard}
port=18095
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
cfg_dir=$(mktemp -d)
cat >"$cfg_dir/routes.toml" <<TOML
[providers.slow]
kind = "mock"
rate_limit.per_second = $rate
rate_limit.burst = 1

[providers.fast]
kind = "mock"

[routes.sms]
providers = ["slow"]

[routes.email]
providers = ["fast"]
TOML

wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; return 1; }
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

declare -a p50s p99s maxes
for run in $(seq "$runs"); do
  store_url=memory://; db_dir=; pg_db=
  if [[ ${STORE:-sqlite} == sqlite ]]; then db_dir=$(mktemp -d); store_url="sqlite://$db_dir/bench.db"; fi
  if [[ ${STORE:-sqlite} == postgres ]]; then
    admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
    pg_db="sb_slow_$$_$run"
    psql -q "$admin" -c "DROP DATABASE IF EXISTS $pg_db" -c "CREATE DATABASE $pg_db"
    store_url="${admin%/*}/$pg_db"
  fi
  taskset -c 0 "$sb_bin" serve --config "$cfg_dir/routes.toml" --listen "127.0.0.1:$port" --store "$store_url" \
    >/tmp/sb-slow-provider.log 2>&1 & pids+=($!); spid=$!
  wait_port $port
  line=$(taskset -c 1 python3 "$root/benches/slow_provider.py" "http://127.0.0.1:$port" "$backlog" "$b_rate" "$b_secs" "$settle" | sed -n 's/^RESULT //p')
  kill -TERM $spid; wait $spid 2>/dev/null || true
  [[ -n $db_dir ]] && rm -rf "$db_dir"
  [[ -n $pg_db ]] && psql -q "$admin" -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)"
  p50s+=("$(field p50_ms "$line")"); p99s+=("$(field p99_ms "$line")"); maxes+=("$(field max_ms "$line")")
  echo "run $run: $line"
done
rm -rf "$cfg_dir"
m() { printf '%s\n' "$@" | median; }
printf '\nmedians of %s runs, store %s: `slow` limited to %s/s with %s queued; `fast` at %s/s for %ss from %ss after\n' \
  "$runs" "${STORE:-sqlite}" "$rate" "$backlog" "$b_rate" "$b_secs" "$settle"
printf 'fast queue-to-attempt: p50 %s ms  p99 %s ms  max %s ms   (target: p99 < 50 ms)\n' \
  "$(m "${p50s[@]}")" "$(m "${p99s[@]}")" "$(m "${maxes[@]}")"
