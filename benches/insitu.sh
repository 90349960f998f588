#!/usr/bin/env bash
# Instructions per request in the running example services, with a cached
# JWT, against the same binary without authentication (`--no-guard`): the
# companion of wrk.sh that a shared machine's noise does not move. Method
# and results: README.md ("Instructions per request in the running
# services").
#
# For each service (details: axum, reviews: actix-web): the release binary
# in demo mode on loopback under `valgrind --tool=callgrind`, guarded, then
# with --no-guard; one token from the guarded instance's embedded issuer;
# a warm-up of WARMUP seconds of `wrk -t1 -c1`; then callgrind's counters
# zeroed (callgrind_control -z), SECONDS_RUN seconds of `wrk -t1 -c1`, the
# counters dumped. Instructions per request: the server's user-space
# instructions over those seconds (every thread, its idle loop included;
# the kernel's work is not counted) over the requests wrk completed. Every
# request is `GET /list` with the same `Authorization: Bearer` header.
#
#   benches/insitu.sh              # both services
#   SECONDS_RUN=20 benches/insitu.sh reviews
#   CACHE=1 benches/insitu.sh      # also simulated L1 misses per request
#
# Settings (environment): SECONDS_RUN (10), WARMUP (3); CACHE=1 adds
# callgrind's cache simulation (`--cache-sim=yes` with the sizes set, not
# the host's: 32 KiB, 8-way L1 instruction and data caches with 64-byte
# lines; user space only, no kernel evicting them between requests) and prints the instruction- and data-cache read misses per
# request: how many 64-byte lines of code and data a request brings back.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

seconds=${SECONDS_RUN:-10}
warmup=${WARMUP:-3}
. benches/examples.sh
services_of "$@"
ensure_pkg wrk wrk
ensure_pkg valgrind valgrind
build_examples

# Under valgrind a service takes seconds to start: wait up to a minute.
START_WAIT=600
wrk_launcher=()

# count SERVICE MODE [ARGS]: one instance under callgrind; prints its
# instructions per request and sets $per.
count() {
  local svc=$1 mode=$2 out requests dump total
  shift 2
  out="$work/$svc-$mode"
  launcher=(valgrind --tool=callgrind --callgrind-out-file="$out.cg")
  # The simulated caches are set, not taken from the host, so that counts
  # compare across machines: 32 KiB, 8-way, 64-byte lines for L1.
  [ "${CACHE:-0}" = 0 ] ||
    launcher+=(--cache-sim=yes --I1=32768,8,64 --D1=32768,8,64 --LL=8388608,16,64)
  start "$svc" "$out.out" "$@"
  # Each instance has its own demo issuer; the one without Palisade gets
  # its own issuer's token too, so both requests are the same bytes long.
  token_url_of "$out.out"
  fetch_token
  expect "$svc $mode under callgrind" 200 -H "Authorization: Bearer $token" "http://$addr/list"
  run_wrk "http://$addr/list" "$warmup" -t1 -c1
  callgrind_control -z "$pid" >/dev/null ||
    { echo "error: $svc $mode: callgrind_control could not zero the counters of process $pid" >&2; exit 1; }
  run_wrk "http://$addr/list" "$seconds" -t1 -c1
  callgrind_control -d "$pid" >/dev/null ||
    { echo "error: $svc $mode: callgrind_control could not dump the counters of process $pid" >&2; exit 1; }
  requests=$(sed -nE 's/^ *([0-9]+) requests in .*/\1/p' <<<"$wrk_out")
  # The first dump asked for is part 1; its `summary:` line gives the
  # counts since zeroing, in the order of its `events:` line (counts of 0
  # at the end are left out).
  dump="$out.cg.1"
  total='' i1=0 d1=0
  if [ -f "$dump" ]; then
    read -r total i1 d1 < <(awk '
      /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i - 1 }
      function count(name) { return (name in col) ? v[col[name] + 1] + 0 : 0 }
      /^summary:/ && !done { split($0, v, " "); done = 1
        if ("Ir" in col) printf "%s %d %d\n", v[col["Ir"] + 1], count("I1mr"), count("D1mr") }' "$dump") || true
  fi
  stop_all
  [ -n "$requests" ] && [ "$requests" -gt 0 ] && [ -n "$total" ] ||
    { echo "error: $svc $mode: no count (requests: ${requests:-none}, dump: $dump)" >&2; exit 1; }
  per=$((total / requests))
  printf '%-10s %-9s %9d requests %14d instructions %8d per request' "$svc" "$mode" "$requests" "$total" "$per"
  if [ "${CACHE:-0}" != 0 ]; then
    i1_per=$((i1 / requests)) d1_per=$((d1 / requests))
    printf ', L1 read misses per request: %d code, %d data' "$i1_per" "$d1_per"
  fi
  printf '\n'
}

summary=()
for svc in "${services[@]}"; do
  say "$svc (${framework[$svc]}): ${seconds} s of wrk -t1 -c1 under callgrind, after ${warmup} s of warm-up"
  # Both instances once, plainly, to check they differ as intended; then
  # each alone under callgrind.
  launcher=()
  start "$svc" "$work/$svc-guarded.out"
  guarded=$addr
  start "$svc" "$work/$svc-open.out" --no-guard
  token_url_of "$work/$svc-guarded.out"
  fetch_token
  check_pair "$svc" "$guarded" "$addr"
  stop_all
  count "$svc" guarded
  g=$per gi=${i1_per:-} gd=${d1_per:-}
  count "$svc" open --no-guard
  o=$per
  summary+=("$svc (${framework[$svc]}): $g instructions per request with Palisade, $o without: $((g - o)) added ($(awk -v a="$g" -v b="$o" 'BEGIN {printf "%.1f", 100 * (a - b) / b}') %)")
  [ "${CACHE:-0}" = 0 ] ||
    summary+=("  L1 read misses per request: $((gi - i1_per)) more lines of code ($gi against $i1_per), $((gd - d1_per)) more of data ($gd against $d1_per)")
done

say "summary"
printf '%s\n' "${summary[@]}"
