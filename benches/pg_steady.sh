#!/usr/bin/env bash
# PostgreSQL under sustained load: does the accept rate hold as the tables grow? Usage:
#   benches/pg_steady.sh [WINDOWS=10] [SECS=60] [CONNS=64]
# Measures the kit's ceiling (MODE=accept, CEILING_SECS=10 s) first, then starts Switchboard
# (`STORE=postgres` of benches/http_load.sh: a fresh database on PG_ADMIN_URL, the repo's
# routes.toml with its mock providers) and drives it with the kit's wrk load for WINDOWS × SECS
# seconds without a pause, reading `switchboard_messages_accepted_total` at each window's
# boundary. Prints accepted/s per window, the last window's as a share of the first's, the
# mean's as a share of the ceiling, and at the end the live and dead rows and the HOT share of
# updates of the busiest tables (pg_stat_user_tables). No warm-up: the database starts empty.
# Pins Switchboard to core 0 and wrk to core 1 (PostgreSQL runs where the OS puts it).
# PG_PRIVATE=1 runs a throwaway cluster with PostgreSQL's stock settings instead of using
# PG_ADMIN_URL (see benches/support/common.sh): the shared server's may differ from what a user
# gets (autovacuum off, say; the script says so).
# KEEP_DB=1 leaves the database for a look afterwards (it is named in the output). PG_SQL=FILE
# runs FILE on the database once Switchboard has migrated it, before the load (to try table
# settings without a rebuild).
# Needs what benches/http_load.sh needs with STORE=postgres (it says what is missing).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
windows=${1:-10}; secs=${2:-60}; conns=${3:-64}
# shellcheck source=benches/support/common.sh
source "$root/benches/support/common.sh"
need_common
need psql "apt-get install -y postgresql-client   (a database per run on PG_ADMIN_URL)"
report_missing benches/pg_steady.sh
build_all
body=$kit/sms.json
ceiling_port=18081; sb_port=18090
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; private_pg_stop; }
trap cleanup EXIT
[[ -n ${PG_PRIVATE:-} ]] && private_pg_start

PORT=$ceiling_port MODE=accept taskset -c 0 "$bin/ceiling" >/dev/null 2>&1 & pids+=($!); cpid=$!
wait_port $ceiling_port
line=$(WRK_CPUS=1 "$kit/load.sh" "http://127.0.0.1:$ceiling_port/api/messages/sms" "$body" "$conns" "${CEILING_SECS:-10}")
kill $cpid; wait $cpid 2>/dev/null || true
ceiling=$(field rps "$line")
echo "ceiling (accept): $line"

pg_db="sb_steady_$$"
fresh_pg_db "$pg_db"
autovacuum=$(psql -Atq "$store_url" -c "SHOW autovacuum")
[[ $autovacuum == on ]] || echo "note: autovacuum is $autovacuum on this server (PG_PRIVATE=1 measures a stock one)" >&2
log=$(mktemp)
(cd "$root" && exec taskset -c 0 "$sb_bin" serve --config "$root/routes.toml" --listen "127.0.0.1:$sb_port" \
  --store "$store_url" >"$log" 2>&1) & pids+=($!); spid=$!
wait_port $sb_port
[[ -n ${PG_SQL:-} ]] && psql -q "$store_url" -f "$PG_SQL"

url=http://127.0.0.1:$sb_port/api/messages/sms
total=$((windows * secs))
# One wrk run for all the windows (a few seconds more, so it is still running at the last
# boundary); its summary goes to a file.
wrk_out=$(mktemp)
(BODY_FILE=$body taskset -c 1 wrk -t1 -c"$conns" -d"$((total + 5))s" --latency -s "$kit/post.lua" "$url" >"$wrk_out" 2>&1) &
wpid=$!; pids+=($wpid)
metric=switchboard_messages_accepted_total
a_prev=$(counter $metric); t_prev=$(date +%s.%N); start=$t_prev
declare -a rates
printf '%-8s %12s %14s\n' window "accepted/s" "accepted total"
for w in $(seq "$windows"); do
  # Sleeps until the window's boundary, measured from the start (no drift).
  sleep "$(echo "$start + $w * $secs - $(date +%s.%N)" | bc -l | awk '{print ($1 > 0 ? $1 : 0)}')"
  a=$(counter $metric); t=$(date +%s.%N)
  rate=$(echo "($a - $a_prev) / ($t - $t_prev)" | bc -l)
  rates+=("$rate")
  printf '%-8s %12.0f %14.0f\n' "$w" "$rate" "$a"
  a_prev=$a; t_prev=$t
done
kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true
non2xx=$(grep -o 'Non-2xx or 3xx responses: [0-9]*' "$wrk_out" | grep -o '[0-9]*$' || echo 0)

first=${rates[0]}; last=${rates[$((windows - 1))]}
mean=$(printf '%s\n' "${rates[@]}" | awk '{s+=$1} END {print s/NR}')
printf '\n%s windows of %s s, %s connections, store postgres (fresh database, autovacuum %s%s), ceiling %.0f req/s\n' \
  "$windows" "$secs" "$conns" "$autovacuum" "${PG_PRIVATE:+, private stock cluster}" "$ceiling"
printf 'last/first: %.1f %%   mean accepted/s: %.0f = %.1f %% of the ceiling   last window: %.1f %% of the ceiling   non-2xx: %s\n' \
  "$(echo "100 * $last / $first" | bc -l)" "$mean" "$(echo "100 * $mean / $ceiling" | bc -l)" \
  "$(echo "100 * $last / $ceiling" | bc -l)" "${non2xx:-0}"
echo
psql -q "$store_url" -P pager=off -c "SELECT relname AS table, n_live_tup AS live, n_dead_tup AS dead,
    round(100.0 * n_dead_tup / GREATEST(n_live_tup, 1), 1) AS \"dead/live %\", n_tup_upd AS updates,
    round(100.0 * n_tup_hot_upd / GREATEST(n_tup_upd, 1), 1) AS \"HOT %\", autovacuum_count AS autovacuums,
    pg_size_pretty(pg_total_relation_size(relid)) AS size
  FROM pg_stat_user_tables WHERE relname IN ('messages', 'queue', 'attempts', 'callbacks', 'conversations')
  ORDER BY relname"
kill -TERM $spid; wait $spid 2>/dev/null || true
rm -f "$wrk_out" "$log"
if [[ -n ${KEEP_DB:-} ]]; then echo "kept database $pg_db ($store_url)"; else drop_pg_db "$pg_db"; fi
