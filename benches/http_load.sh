#!/usr/bin/env bash
# HTTP load benchmark: Switchboard vs the ceiling (a bare axum handler parsing the same JSON),
# measured in the same run with the kit in ../shared/bench. Usage:
#   [STORE=memory|sqlite|postgres] [PROVIDER=mock|twilio] [TARGET=send|inbound|receipts] benches/http_load.sh [RUNS=3] [SECS=10] [CONNS=64]
# STORE=sqlite uses a fresh database file per run (in a temp dir); STORE=postgres a fresh
# database per run on PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# PROVIDER=twilio sends through the `twilio` kind to the kit's mock_provider (base_url) and
# compares with the ceiling in MODE=forward (which POSTs each message to the same mock);
# the default sends through the repo's routes.toml (mock kind) against MODE=accept.
# TARGET=inbound posts inbound SMS webhooks (`/api/webhooks/sms`, each with its own provider
# message id: benches/inbound.lua) and compares stored inbound messages/s with the ceiling in
# MODE=accept fed the same bodies.
# TARGET=receipts (implies PROVIDER=twilio) first sends RECEIPT_MESSAGES (2000) SMS through the
# `twilio` kind, then posts signed Twilio StatusCallback receipts for them
# (`/v1/receipts/twilio/twilio-main`, prepared by benches/receipts_prep.py: sent, delivered, read
# and a late duplicate each) and compares recorded receipts/s with the ceiling (MODE=accept, the
# kit's body: a receipt calls no provider).
# Pins each server to core 0 and wrk (and the mock provider) to core 1; prints one line per
# run and the medians.
# Needs: wrk, curl, taskset, bc, cargo, 2 cores; psql for STORE=postgres; and the bench kit
# (load.sh, post.lua, sms.json, rust/), which is not part of this repository: it is
# ../shared/bench beside the clone, or BENCH_KIT=/path/to/bench. What is missing is listed, with
# how to get it, before anything is built.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
runs=${1:-3}; secs=${2:-10}; conns=${3:-64}
# shellcheck source=benches/support/common.sh
source "$root/benches/support/common.sh"

need_common
case ${STORE:-memory} in
  memory|sqlite) ;;
  postgres) need psql "apt-get install -y postgresql-client   (STORE=postgres creates a database per run on PG_ADMIN_URL)" ;;
  *) missing+=("STORE=${STORE}: use STORE=memory, sqlite or postgres") ;;
esac
case ${TARGET:-send} in
  send|inbound) ;;
  receipts) PROVIDER=twilio; need python3 "apt-get install -y python3   (benches/receipts_prep.py signs the receipts)" ;;
  *) missing+=("TARGET=${TARGET}: use TARGET=send, inbound or receipts") ;;
esac
case ${PROVIDER:-mock} in
  mock|twilio) ;;
  *) missing+=("PROVIDER=${PROVIDER}: use PROVIDER=mock or twilio") ;;
esac
report_missing benches/http_load.sh
build_all
body=$kit/sms.json
ceiling_port=18081; sb_port=18090
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
ceiling_mode=accept; sb_config=$root/routes.toml; sb_env=()
if [[ ${PROVIDER:-mock} == twilio ]]; then
  mock_port=19090; sid=AC0123456789abcdef0123456789abcdef
  PORT=$mock_port taskset -c 1 "$CARGO_TARGET_DIR/release/mock_provider" >/dev/null 2>&1 & pids+=($!)
  ceiling_mode=forward
  export PROVIDER_URL="http://127.0.0.1:$mock_port/2010-04-01/Accounts/$sid/Messages.json"
  cfg_dir=$(mktemp -d); sb_config=$cfg_dir/routes.toml
  cat >"$sb_config" <<TOML
[providers.twilio-main]
kind = "twilio"
account_sid = "$sid"
auth_token = "\${TWILIO_AUTH_TOKEN}"
base_url = "http://127.0.0.1:$mock_port"
public_url = "http://127.0.0.1:$sb_port"

[routes.sms]
providers = ["twilio-main"]
TOML
  sb_env=(TWILIO_AUTH_TOKEN=bench-token)
  # Receipts call no provider: the ceiling only parses (the sends before the measured run do).
  [[ ${TARGET:-send} == receipts ]] && ceiling_mode=accept
fi

sb_path=/api/messages/sms; accepted_metric=switchboard_messages_accepted_total
# One measured wrk run against URL: the kit's load.sh, or for TARGET=inbound the same with
# benches/inbound.lua (unique provider ids per request).
load() {
  if [[ ${TARGET:-send} == receipts && $1 == *"/v1/receipts/"* ]]; then
    local pin=(taskset -c 1)
    [[ ${WARMUP:-2} != 0 ]] && "${pin[@]}" wrk -t1 -c"$2" -d"${WARMUP:-2}s" -s "$receipts_lua" "$1" >/dev/null
    "${pin[@]}" wrk -t1 -c"$2" -d"$3s" --latency -s "$receipts_lua" "$1" | sed -n 's/^RESULT //p'
  elif [[ ${TARGET:-send} == inbound ]]; then
    local pin=(taskset -c 1)
    [[ ${WARMUP:-2} != 0 ]] && "${pin[@]}" wrk -t1 -c"$2" -d"${WARMUP:-2}s" -s "$root/benches/inbound.lua" "$1" >/dev/null
    "${pin[@]}" wrk -t1 -c"$2" -d"$3s" --latency -s "$root/benches/inbound.lua" "$1" | sed -n 's/^RESULT //p'
  else
    WRK_CPUS=1 "$kit/load.sh" "$1" "$body" "$2" "$3"
  fi
}
if [[ ${TARGET:-send} == inbound ]]; then
  sb_path=/api/webhooks/sms; accepted_metric=switchboard_inbound_messages_total
fi
receipts_lua=
if [[ ${TARGET:-send} == receipts ]]; then
  sb_path=/v1/receipts/twilio/twilio-main; accepted_metric=switchboard_receipts_total
  receipts_lua=$(mktemp --suffix=.lua)
fi

declare -a c_rps sb_rps sb_p50 sb_p99 sb_acc sb_del sb_rss c_p50 c_p99
for run in $(seq "$runs"); do
  PORT=$ceiling_port MODE=$ceiling_mode taskset -c 0 "$bin/ceiling" >/dev/null 2>&1 & pids+=($!); cpid=$!
  wait_port $ceiling_port
  line=$(load "http://127.0.0.1:$ceiling_port/api/messages/sms" "$conns" "$secs")
  kill $cpid; wait $cpid 2>/dev/null || true
  c_rps+=("$(field rps "$line")"); c_p50+=("$(field p50_ms "$line")"); c_p99+=("$(field p99_ms "$line")")
  echo "ceiling     run $run: $line"

  store_url=memory://
  if [[ ${STORE:-memory} == sqlite ]]; then db_dir=$(mktemp -d); store_url="sqlite://$db_dir/bench.db"; fi
  if [[ ${STORE:-memory} == postgres ]]; then
    pg_db="sb_bench_$$_$run"
    fresh_pg_db "$pg_db"
  fi
  (cd "$root" && exec env "${sb_env[@]}" taskset -c 0 "$sb_bin" serve --config "$sb_config" --listen "127.0.0.1:$sb_port" --store "$store_url" >/tmp/sb-bench.log 2>&1) & pids+=($!); spid=$!
  wait_port $sb_port
  if [[ ${TARGET:-send} == receipts ]]; then
    taskset -c 1 python3 "$root/benches/receipts_prep.py" "http://127.0.0.1:$sb_port" twilio-main bench-token \
      "${RECEIPT_MESSAGES:-2000}" "$receipts_lua" >&2
  fi
  WARMUP=2 load "http://127.0.0.1:$sb_port$sb_path" "$conns" 1 >/dev/null
  a0=$(counter $accepted_metric); d0=$(counter switchboard_messages_completed_total); t0=$(date +%s.%N)
  line=$(WARMUP=0 load "http://127.0.0.1:$sb_port$sb_path" "$conns" "$secs")
  a1=$(counter $accepted_metric); d1=$(counter switchboard_messages_completed_total); t1=$(date +%s.%N)
  rss=$(awk '/VmHWM/ {print $2}' "/proc/$spid/status")
  kill -TERM $spid; wait $spid 2>/dev/null || true
  [[ -n ${db_dir:-} ]] && rm -rf "$db_dir"
  [[ -n ${pg_db:-} ]] && drop_pg_db "$pg_db"
  elapsed=$(echo "$t1 - $t0" | bc -l)
  acc=$(echo "($a1 - $a0) / $elapsed" | bc -l); del=$(echo "($d1 - $d0) / $elapsed" | bc -l)
  sb_rps+=("$(field rps "$line")"); sb_p50+=("$(field p50_ms "$line")"); sb_p99+=("$(field p99_ms "$line")")
  sb_acc+=("$acc"); sb_del+=("$del"); sb_rss+=("$rss")
  printf 'switchboard run %s: %s accepted/s=%.0f delivered/s=%.0f peak_rss_kb=%s\n' "$run" "$line" "$acc" "$del" "$rss"
done

m() { printf '%s\n' "$@" | median; }
cr=$(m "${c_rps[@]}"); sr=$(m "${sb_rps[@]}"); sa=$(m "${sb_acc[@]}"); sd=$(m "${sb_del[@]}")
# Answers that were not 202 (e.g. queue_full) are not accepted messages: the ratio uses accepted/s.
printf '\nmedians of %s runs, %s connections, %ss each, target %s, store %s, provider %s, ceiling %s\n' "$runs" "$conns" "$secs" "${TARGET:-send}" "${STORE:-memory}" "${PROVIDER:-mock}" "$ceiling_mode"
printf 'ceiling:     %.0f req/s  p50 %s ms  p99 %s ms\n' "$cr" "$(m "${c_p50[@]}")" "$(m "${c_p99[@]}")"
printf 'switchboard: %.0f req/s  p50 %s ms  p99 %s ms  accepted %.0f/s  delivered %.0f/s  peak RSS %.1f MB\n' \
  "$sr" "$(m "${sb_p50[@]}")" "$(m "${sb_p99[@]}")" "$sa" "$sd" "$(echo "$(m "${sb_rss[@]}") / 1024" | bc -l)"
printf 'ratio to ceiling (accepted/s): %.1f %%   delivered/accepted: %.1f %%   delivered/ceiling: %.1f %%\n' "$(echo "100 * $sa / $cr" | bc -l)" "$(echo "100 * $sd / $sa" | bc -l)" "$(echo "100 * $sd / $cr" | bc -l)"
