# Helpers shared by benches/http_load.sh and benches/pg_steady.sh (sourced, not run).
# Expects `root` (the repository) to be set; sets `kit` (the bench kit: ../shared/bench beside
# the clone, or BENCH_KIT) and the list `missing`.
kit=${BENCH_KIT:-$root/../shared/bench}
missing=()
# need COMMAND HOW: records COMMAND as missing (with how to get it) unless it is on PATH.
need() { command -v "$1" >/dev/null 2>&1 || missing+=("$1 (not on PATH): $2"); }
# The tools and the kit every load benchmark needs (more may be added with `need` before
# `report_missing`).
need_common() {
  need wrk "apt-get install -y wrk   (the load driver the kit's load.sh runs)"
  need curl "apt-get install -y curl"
  need taskset "apt-get install -y util-linux   (pins the servers and wrk to cores)"
  need bc "apt-get install -y bc"
  need cargo "install Rust with rustup   (builds switchboard and the kit's ceiling and mock provider)"
  if [[ ! -d $kit ]]; then
    missing+=("the bench kit at $kit: it is not in this repository; put the team's shared/ directory beside the clone (shared/bench), or set BENCH_KIT=/path/to/bench")
  else
    for file in load.sh post.lua sms.json rust/Cargo.toml; do
      [[ -e $kit/$file ]] || missing+=("$kit/$file: the bench kit is incomplete (it needs load.sh, post.lua, sms.json, rust/)")
    done
  fi
  if command -v nproc >/dev/null 2>&1 && (( $(nproc) < 2 )); then
    missing+=("a second CPU core: the servers are pinned to core 0, wrk and the mock provider to core 1")
  fi
}
# Lists what is missing (as $1 cannot run) and exits 2, or does nothing.
report_missing() {
  if (( ${#missing[@]} )); then
    echo "$1 cannot run; missing:" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 2
  fi
}
# Builds the kit and switchboard (release) into CARGO_TARGET_DIR; sets `bin` (their directory)
# and `sb_bin`. SB_BIN: another switchboard binary to measure (e.g. an older build, for an
# A/B comparison); this checkout's is then not built.
build_all() {
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/sb-bench-target}
  cargo build --release -q --manifest-path "$kit/rust/Cargo.toml"
  [[ -n ${SB_BIN:-} ]] || cargo build --release -q --manifest-path "$root/Cargo.toml" --bin switchboard
  bin=$CARGO_TARGET_DIR/release
  sb_bin=${SB_BIN:-$bin/switchboard}
}
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.05; done; return 1; }
# field NAME LINE: the number after NAME= in the kit's result line.
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
# counter NAME: the sum of metric NAME over its labels on the server at port $sb_port.
counter() { curl -s "http://127.0.0.1:$sb_port/metrics" | awk -v name="$1" '$1 ~ "^"name"\\{" {s+=$2} END {print s+0}'; }
# fresh_pg_db NAME: drops and creates database NAME on PG_ADMIN_URL; sets `admin` and
# `store_url` (the new database's URL).
fresh_pg_db() {
  admin=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
  psql -q "$admin" -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1"
  store_url="${admin%/*}/$1"
}
drop_pg_db() { psql -q "$admin" -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)"; }
# PG_PRIVATE=1: a throwaway PostgreSQL cluster with the stock settings (initdb's: autovacuum
# on, 128 MB shared buffers), in a temp directory on port PG_PRIVATE_PORT (55432), as the
# `postgres` user when run as root; sets PG_ADMIN_URL to it. A shared server's settings (a CI
# configuration may turn autovacuum off) are then not what is measured. Stopped by
# `private_pg_stop`.
private_pg_start() {
  local pgbin port=${PG_PRIVATE_PORT:-55432}
  pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -x $pgbin/initdb ]] || { echo "PG_PRIVATE=1 needs initdb and pg_ctl (apt-get install -y postgresql)" >&2; exit 2; }
  pg_private_dir=$(mktemp -d)
  as_pg=(); [[ $(id -u) == 0 ]] && { chown postgres "$pg_private_dir"; as_pg=(runuser -u postgres --); }
  pg_ctl_cmd=("${as_pg[@]}" "$pgbin/pg_ctl" -D "$pg_private_dir/data")
  "${as_pg[@]}" "$pgbin/initdb" -A trust -U postgres -D "$pg_private_dir/data" >/dev/null
  "${pg_ctl_cmd[@]}" -w -l "$pg_private_dir/log" \
    -o "-p $port -k $pg_private_dir -c listen_addresses=127.0.0.1" start >/dev/null
  PG_ADMIN_URL=postgres://postgres@127.0.0.1:$port/postgres
}
private_pg_stop() {
  [[ -n ${pg_private_dir:-} ]] || return 0
  "${pg_ctl_cmd[@]}" -w -m fast stop >/dev/null || true
  rm -rf "$pg_private_dir"
}
