#!/usr/bin/env bash
# CPU time per delivered message: runs `switchboard serve` pinned to core 0 with the repo's
# routes.toml, drives it with the kit's wrk load (64 connections, 8 s) from core 1, and divides
# the server's CPU time (utime + stime from /proc/PID/stat) by the messages completed meanwhile.
# Steadier than req/s on a noisy machine for A/B comparisons of two builds:
#   SB_BIN=/tmp/old benches/cpu_per_message.sh; SB_BIN=/tmp/new benches/cpu_per_message.sh
# Extra arguments go to `serve` (e.g. --workers 1024); STORE_URL overrides the store
# (default: a fresh SQLite file). TARGET=inbound posts inbound SMS webhooks instead
# (benches/inbound.lua, each with its own provider id) and counts the inbound messages stored.
# TARGET=native sends through the native API (benches/native.lua); TARGET=callbacks does the
# same with a `status_callback` on every message, delivered (signed) to the kit's mock provider
# on core 1, and waits until every callback of the messages counted went out before reading the
# CPU time: the two give the CPU cost of callbacks per delivered message. TARGET=ceiling-accept
# and TARGET=ceiling-forward run the kit's ceiling instead (no Switchboard): their difference is
# the floor, what one outgoing HTTP POST per message costs at the least.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kit=$root/../shared/bench
bin=${SB_BIN:-${CARGO_TARGET_DIR:-/tmp/sb-bench-target}/release/switchboard}
dir=$(mktemp -d); port=18090
extra=(); cb_pid=
if [[ ${TARGET:-send} == callbacks ]]; then
  cb_port=19091
  # The kit's mock provider (built into the bench target dir by benches/http_load.sh or the
  # kit's README), wherever SB_BIN is.
  mock=${MOCK_BIN:-${CARGO_TARGET_DIR:-/tmp/sb-bench-target}/release/mock_provider}
  [[ -x $mock ]] || { echo "no mock provider at $mock: build the kit (see ../shared/bench/README.md) or set MOCK_BIN" >&2; exit 1; }
  PORT=$cb_port taskset -c 1 "$mock" >/dev/null 2>&1 & cb_pid=$!
  export CALLBACK_URL=http://127.0.0.1:$cb_port/callbacks
  export SWITCHBOARD_CALLBACK_SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  extra=(--allow-loopback-callbacks)
fi
if [[ ${TARGET:-send} == ceiling-* ]]; then
  # The floor: the kit's bare axum handler, MODE=accept (parse and answer) or MODE=forward
  # (also POST each message to the mock provider on core 1, keep-alive): the difference is
  # what one outgoing HTTP POST costs at the least.
  kitbin=${CARGO_TARGET_DIR:-/tmp/sb-bench-target}/release
  [[ -x $kitbin/ceiling && -x $kitbin/mock_provider ]] || { echo "build the kit first (../shared/bench/README.md)" >&2; exit 1; }
  PORT=19092 taskset -c 1 "$kitbin/mock_provider" >/dev/null 2>&1 & cb_pid=$!
  PORT=$port MODE=${TARGET#ceiling-} PROVIDER_URL=http://127.0.0.1:19092/send taskset -c 0 "$kitbin/ceiling" >"$dir/log" 2>&1 &
else
  taskset -c 0 "$bin" serve --config "$root/routes.toml" --listen "127.0.0.1:$port" \
    --store "${STORE_URL:-sqlite://$dir/bench.db}" "${extra[@]}" "$@" >"$dir/log" 2>&1 &
fi
pid=$!
trap 'kill $pid $cb_pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
counter() { curl -s "http://127.0.0.1:$port/metrics" | awk -v name="$1" '$1 ~ "^"name"\\{" {s+=$2} END {print s+0}'; }
url=http://127.0.0.1:$port/api/messages/sms; metric=switchboard_messages_completed_total
load() { WARMUP=0 WRK_CPUS=1 "$kit/load.sh" "$url" "$kit/sms.json" 64 "$1"; }
if [[ ${TARGET:-send} == inbound ]]; then
  url=http://127.0.0.1:$port/api/webhooks/sms; metric=switchboard_inbound_messages_total
  load() { taskset -c 1 wrk -t1 -c64 -d"$1s" --latency -s "$root/benches/inbound.lua" "$url" | sed -n 's/^RESULT //p'; }
fi
if [[ ${TARGET:-send} == native || ${TARGET:-send} == callbacks ]]; then
  url=http://127.0.0.1:$port/v1/messages
  load() { taskset -c 1 wrk -t1 -c64 -d"$1s" --latency -s "$root/benches/native.lua" "$url" | sed -n 's/^RESULT //p'; }
fi
if [[ ${TARGET:-send} == ceiling-* ]]; then
  # No metrics: the requests wrk completed are the messages (summed in a file: load runs in
  # a subshell).
  echo 0 >"$dir/seen"
  counter() { cat "$dir/seen"; }
  load() { local out; out=$(WARMUP=0 WRK_CPUS=1 "$kit/load.sh" "$url" "$kit/sms.json" 64 "$1")
    echo $(( $(cat "$dir/seen") + $(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$out") )) >"$dir/seen"; echo "$out"; }
fi
# Every callback of the messages completed so far went out (2 per message: sending, sent).
drain() {
  [[ ${TARGET:-send} == callbacks ]] || return 0
  for _ in $(seq 3000); do
    delivered=$(curl -s "http://127.0.0.1:$port/metrics" | awk '$1 == "switchboard_callbacks_total{result=\"delivered\"}" {print $2+0}')
    (( ${delivered:-0} >= 2 * $(counter $metric) )) && return 0
    sleep 0.1
  done
  echo "callbacks did not drain" >&2; return 1
}
load 1 >/dev/null
drain
ticks0=$(awk '{print $14+$15}' "/proc/$pid/stat"); done0=$(counter $metric)
line=$(load 8)
sleep 0.5
drain
ticks1=$(awk '{print $14+$15}' "/proc/$pid/stat"); done1=$(counter $metric)
hz=$(getconf CLK_TCK)
printf '%s cpu_us_per_message=%.2f delivered=%s\n' "$line" \
  "$(echo "($ticks1 - $ticks0) * 1000000 / $hz / ($done1 - $done0)" | bc -l)" "$((done1 - done0))"
