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
. benches/examples.sh
services_of "$@"
ensure_pkg wrk wrk

launcher=() wrk_launcher=()
if [ "${PIN:-1}" != 0 ] && command -v taskset >/dev/null 2>&1 && [ "$(nproc)" -ge 2 ]; then
  launcher=(taskset -c "${SERVER_CPUS:-0}")
  wrk_launcher=(taskset -c "${WRK_CPUS:-1}")
fi

build_examples

# rps URL [SECONDS]: one wrk run; prints requests/s.
rps() {
  run_wrk "$1" "${2:-$duration}" -t"$threads" -c"$connections"
  awk '/^Requests\/sec:/ {print $2}' <<<"$wrk_out"
}

summary=()
for svc in "${services[@]}"; do
  say "$svc (${framework[$svc]}): $rounds rounds of ${duration} s, wrk -t$threads -c$connections${launcher:+, servers: ${launcher[*]}, wrk: ${wrk_launcher[*]}}"
  start "$svc" "$work/$svc-guarded.out"
  guarded=$addr
  start "$svc" "$work/$svc-open.out" --no-guard
  open=$addr
  token_url_of "$work/$svc-guarded.out"
  fetch_token
  check_pair "$svc" "$guarded" "$open"

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
  [ ${#launcher[@]} -eq 0 ] ||
    summary+=("  server CPU per request: $(awk -v g="$sum_g" -v o="$sum_o" -v n="$rounds" \
      'BEGIN {printf "%.2f µs with, %.2f µs without, %.2f µs added", 1e6 * n / g, 1e6 * n / o, 1e6 * n / g - 1e6 * n / o}')")

  stop_all
done

say "summary"
printf '%s\n' "${summary[@]}"
