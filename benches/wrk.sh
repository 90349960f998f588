#!/usr/bin/env bash
# Throughput under wrk of the example services with a cached JWT, against the
# same binary without authentication (`--no-guard`, benchmarking only), for
# details (axum) and reviews (actix-web). Method and results: README.md
# ("Throughput under wrk").
#
# For each service: two instances of the release binary in demo mode on
# loopback (ports chosen by the system), one guarded, one started with
# --no-guard; one token from the guarded one's embedded issuer; then wrk
# against each in turn, ROUNDS rounds of DURATION seconds, the order of the
# two alternating between rounds, every request `GET /list` with the same
# `Authorization: Bearer` header (the unguarded instance ignores it). The
# ratio is the sum of the guarded rounds' requests/s over the sum of the
# unguarded ones'. With two or more CPUs and taskset, the servers run on
# SERVER_CPUS and wrk on WRK_CPUS; the summary then also gives each
# instance's server CPU per request (the inverse of its mean rate, as wrk
# keeps the one server CPU busy) and what Palisade adds to it.
#
#   benches/wrk.sh                         # both services
#   ROUNDS=10 DURATION=10 benches/wrk.sh reviews
#
# Settings (environment): ROUNDS (5), DURATION seconds (5), THREADS (1) and
# CONNECTIONS (16) of wrk, SERVER_CPUS (0), WRK_CPUS (1); PIN=0 leaves the
# servers and wrk unpinned, sharing every CPU (wrk's own defaults are
# THREADS=2 CONNECTIONS=10).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

rounds=${ROUNDS:-5}
duration=${DURATION:-5}
threads=${THREADS:-1}
connections=${CONNECTIONS:-16}
services=("$@")
[ ${#services[@]} -gt 0 ] || services=(details reviews)
for s in "${services[@]}"; do
  case "$s" in details | reviews) ;; *) echo "error: unknown service \`$s\` (details or reviews)" >&2; exit 2 ;; esac
done

ensure_pkg wrk wrk
ensure_pkg curl curl
ensure_pkg cc gcc
ensure_pkg krb5-config libkrb5-dev
ensure_pkg pkg-config pkg-config
ensure_libclang

server_pin=() wrk_pin=()
if [ "${PIN:-1}" != 0 ] && command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  server_pin=(taskset -c "${SERVER_CPUS:-0}")
  wrk_pin=(taskset -c "${WRK_CPUS:-1}")
fi

say "building the examples (release)"
cargo build --release --locked --all-features --example details --example reviews
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -E 's/.*"target_directory":"([^"]*)".*/\1/')

work=$(mktemp -d)
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# start NAME LOG ARGS...: starts the example, waits for `listening on ADDR`,
# sets $addr.
start() {
  local name=$1 log=$2 i
  shift 2
  "${server_pin[@]}" "$target_dir/release/examples/$name" --listen 127.0.0.1:0 "$@" >"$log" 2>"$log.err" &
  pids+=($!)
  for i in $(seq 1 100); do
    addr=$(sed -nE 's/^listening on (.*)$/\1/p' "$log")
    [ -n "$addr" ] && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "error: $name did not start; its stderr:" >&2
  cat "$log.err" >&2
  exit 1
}

# expect WHAT STATUS CURL-ARGS...: fails unless curl gets STATUS.
expect() {
  local what=$1 want=$2 got
  shift 2
  got=$(curl -s -o /dev/null -w '%{http_code}' "$@")
  [ "$got" = "$want" ] || { echo "error: $what: expected $want, got $got" >&2; exit 1; }
}

# fetch_token: a token from the demo issuer at $token_url, as the example's
# banner does it, into $token. Demo tokens live 5 minutes, so each round
# takes a new one (verified on its first request, cached for the others).
fetch_token() {
  token=$(curl -fsS -d grant_type=client_credentials -d client_id=demo -d client_secret=demo-secret "$token_url" |
    sed -E 's/.*"access_token":"([^"]+)".*/\1/')
}

# rps URL [SECONDS]: one wrk run; prints requests/s; fails on any non-2xx answer.
rps() {
  local out
  out=$("${wrk_pin[@]}" wrk -t"$threads" -c"$connections" -d"${2:-$duration}s" \
    -H "Authorization: Bearer $token" "$1")
  if grep -q 'Non-2xx or 3xx responses' <<<"$out" || ! grep -q '^Requests/sec:' <<<"$out"; then
    echo "error: wrk against $1:" >&2
    echo "$out" >&2
    exit 1
  fi
  awk '/^Requests\/sec:/ {print $2}' <<<"$out"
}

declare -A framework=([details]=axum [reviews]=actix-web)
summary=()
for svc in "${services[@]}"; do
  say "$svc (${framework[$svc]}): $rounds rounds of ${duration} s, wrk -t$threads -c$connections${server_pin:+, servers: ${server_pin[*]}, wrk: ${wrk_pin[*]}}"
  start "$svc" "$work/$svc-guarded.out"
  guarded=$addr
  start "$svc" "$work/$svc-open.out" --no-guard
  open=$addr
  token_url=$(sed -nE 's/.*client_secret=demo-secret ([^ ]+) .*/\1/p' "$work/$svc-guarded.out")
  [ -n "$token_url" ] || { echo "error: $svc printed no token command" >&2; exit 1; }
  fetch_token
  # The two instances differ as intended before anything is measured.
  expect "$svc guarded, no token" 401 "http://$guarded/list"
  expect "$svc guarded, token" 200 -H "Authorization: Bearer $token" "http://$guarded/list"
  expect "$svc --no-guard, no token" 200 "http://$open/list"
  curl -fsS -H "Authorization: Bearer $token" "http://$guarded/whoami" | grep -q '"authenticated":true' ||
    { echo "error: $svc guarded: /whoami is not authenticated" >&2; exit 1; }
  curl -fsS -H "Authorization: Bearer $token" "http://$open/whoami" | grep -q '"authenticated":false' ||
    { echo "error: $svc --no-guard: /whoami is authenticated" >&2; exit 1; }

  rps "http://$guarded/list" 2 >/dev/null # warm-up
  rps "http://$open/list" 2 >/dev/null
  sum_g=0 sum_o=0
  printf '%-6s %22s %22s %8s\n' round "with Palisade (req/s)" "without (req/s)" ratio
  for r in $(seq 1 "$rounds"); do
    fetch_token
    if [ $((r % 2)) -eq 1 ]; then
      g=$(rps "http://$guarded/list"); o=$(rps "http://$open/list")
    else
      o=$(rps "http://$open/list"); g=$(rps "http://$guarded/list")
    fi
    sum_g=$(awk -v a="$sum_g" -v b="$g" 'BEGIN {print a + b}')
    sum_o=$(awk -v a="$sum_o" -v b="$o" 'BEGIN {print a + b}')
    printf '%-6s %22.0f %22.0f %8.3f\n' "$r" "$g" "$o" "$(awk -v a="$g" -v b="$o" 'BEGIN {print a / b}')"
  done
  ratio=$(awk -v a="$sum_g" -v b="$sum_o" 'BEGIN {printf "%.3f", a / b}')
  printf '%-6s %22.0f %22.0f %8s\n' mean "$(awk -v a="$sum_g" -v n="$rounds" 'BEGIN {print a / n}')" \
    "$(awk -v a="$sum_o" -v n="$rounds" 'BEGIN {print a / n}')" "$ratio"
  summary+=("$svc (${framework[$svc]}): with / without Palisade = $ratio (ratio of sums; the bar is 0.97)")
  # With the server on one CPU and wrk keeping it busy, a request's cost in
  # server CPU is the inverse of the rate: the difference is what Palisade
  # adds, the kernel's share included. Unpinned, the rate says nothing of it.
  [ ${#server_pin[@]} -eq 0 ] ||
    summary+=("  server CPU per request: $(awk -v g="$sum_g" -v o="$sum_o" -v n="$rounds" \
      'BEGIN {printf "%.2f µs with, %.2f µs without, %.2f µs added", 1e6 * n / g, 1e6 * n / o, 1e6 * n / g - 1e6 * n / o}')")

  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
done

say "summary"
printf '%s\n' "${summary[@]}"
