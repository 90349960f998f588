# Shell functions shared by benches/wrk.sh and benches/insitu.sh, which run
# the example services `details` (axum) and `reviews` (actix-web) in demo
# mode, guarded and with `--no-guard`; source it after scripts/lib.sh.
# Nothing here runs on its own.

declare -A framework=([details]=axum [reviews]=actix-web)

# services_of NAME...: checks the names (details, reviews; none: both) and sets
# the array $services.
services_of() {
  services=("$@")
  [ ${#services[@]} -gt 0 ] || services=(details reviews)
  local s
  for s in "${services[@]}"; do
    [ -n "${framework[$s]:-}" ] || { echo "error: unknown service \`$s\` (details or reviews)" >&2; exit 2; }
  done
}

# build_examples: the release binaries, into $target_dir/release/examples.
build_examples() {
  ensure_pkg curl curl
  ensure_pkg cc gcc
  ensure_pkg krb5-config libkrb5-dev
  ensure_pkg pkg-config pkg-config
  ensure_libclang
  say "building the examples (release)"
  cargo build --release --locked --all-features --example details --example reviews
  target_dir=$(cargo metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/')
}

# A scratch directory and the servers started, stopped on exit.
work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME LOG [--no-guard]: starts the example (behind the command in the
# array $launcher, if any: taskset, valgrind), waits for `listening on
# ADDR`, sets $addr and $pid.
start() {
  local name=$1 log=$2 i
  shift 2
  "${launcher[@]}" "$target_dir/release/examples/$name" --listen 127.0.0.1:0 "$@" >"$log" 2>"$log.err" &
  pid=$!
  pids+=("$pid")
  for i in $(seq 1 "${START_WAIT:-100}"); do
    addr=$(sed -nE 's/^listening on (.*)$/\1/p' "$log")
    [ -n "$addr" ] && return 0
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: $name did not start; its stderr:" >&2
  cat "$log.err" >&2
  exit 1
}

# stop_all: stops the servers started so far.
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
}

# expect WHAT STATUS CURL-ARGS...: fails unless curl gets STATUS.
expect() {
  local what=$1 want=$2 got
  shift 2
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || { echo "error: $what: expected $want, got $got" >&2; exit 1; }
}

# token_url_of LOG: the demo issuer's token endpoint, from the guarded
# instance's banner, into $token_url.
token_url_of() {
  token_url=$(sed -nE 's/.*client_secret=demo-secret ([^ ]+) .*/\1/p' "$1")
  [ -n "$token_url" ] || { echo "error: the service printed no token command" >&2; exit 1; }
}

# fetch_token: a token from the demo issuer at $token_url, as the example's
# banner does it, into $token. Demo tokens live 5 minutes: a run longer
# than that takes a new one (verified on its first request, cached for the
# others).
fetch_token() {
  token=$(curl -fsS -d grant_type=client_credentials -d client_id=demo -d client_secret=demo-secret "$token_url" |
    sed -E 's/.*"access_token":"([^"]+)".*/\1/')
}

# check_pair SERVICE GUARDED-ADDR OPEN-ADDR: the two instances differ as
# intended before anything is measured.
check_pair() {
  local svc=$1 guarded=$2 open=$3
  expect "$svc guarded, no token" 401 "http://$guarded/list"
  expect "$svc guarded, token" 200 -H "Authorization: Bearer $token" "http://$guarded/list"
  expect "$svc --no-guard, no token" 200 "http://$open/list"
  curl -fsS -H "Authorization: Bearer $token" "http://$guarded/whoami" | grep -q '"authenticated":true' ||
    { echo "error: $svc guarded: /whoami is not authenticated" >&2; exit 1; }
  curl -fsS -H "Authorization: Bearer $token" "http://$open/whoami" | grep -q '"authenticated":false' ||
    { echo "error: $svc --no-guard: /whoami is authenticated" >&2; exit 1; }
}

# check_floor SERVICE FLOOR-ADDR OPEN-ADDR: the floor is in place (its
# instance says so on stderr, from where it puts it in place), and both
# instances answer without a token and tell the handler of no caller (the
# floor's record is its own type, not Palisade's `Identity`).
check_floor() {
  local svc=$1 floor=$2 open=$3 addr
  for addr in "$floor" "$open"; do
    expect "$svc at $addr, no token" 200 "http://$addr/list"
    curl -fsS -H "Authorization: Bearer $token" "http://$addr/whoami" | grep -q '"authenticated":false' ||
      { echo "error: $svc at $addr: /whoami is authenticated" >&2; exit 1; }
  done
  # After requests: the floor is in place before the first is served.
  grep -q -- '--floor: serving' "$work/$svc-guarded.out.err" ||
    { echo "error: $svc --floor: the floor was not put in place" >&2; exit 1; }
}

# run_wrk URL SECONDS WRK-ARGS...: one wrk run with the token; its output in
# $wrk_out; fails on any non-2xx answer.
run_wrk() {
  local url=$1 seconds=$2
  shift 2
  wrk_out=$("${wrk_launcher[@]}" wrk "$@" -d"${seconds}s" -H "Authorization: Bearer $token" "$url")
  if grep -q 'Non-2xx or 3xx responses' <<<"$wrk_out" || ! grep -q '^Requests/sec:' <<<"$wrk_out"; then
    echo "error: wrk against $url:" >&2
    echo "$wrk_out" >&2
    exit 1
  fi
}
