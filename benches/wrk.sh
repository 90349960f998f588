#!/usr/bin/env bash
# Throughput under wrk of the example services with a cached JWT, against the
# same binary without authentication (`--no-guard`, benchmarking only), for
# details (axum) and reviews (actix-web). Method and results: README.md
# ("Throughput under wrk").
#
# For each service: two instances of the release binary in demo mode on
# loopback (ports chosen by the system), one guarded, one started with
# --no-guard; a token from the guarded one's embedded issuer; every request
# `GET /list` with the same `Authorization: Bearer` header (the unguarded
# instance ignores it), ROUNDS rounds of DURATION seconds. The ratio is the
# sum of the guarded rounds' requests/s over the sum of the unguarded ones';
# the median and range of the rounds' ratios are printed too.
#
# With two or more CPUs and taskset (the default), both servers run on
# SERVER_CPUS and are measured at the same time: one wrk against each on
# WRK_CPUS, started together. The servers split one CPU, so their rates
# stand in the ratio of their costs per request, and a guest that slows down
# or speeds up during a round does so for both. Every round starts a new
# pair of processes (one process's layout in memory can make it a few per
# cent faster or slower than an identical one for its whole life), in
# alternating order, and warms both up for 2 s. Each server's CPU time
# (user and system, from /proc) over the round, divided by its requests, is
# printed too, and what Palisade adds to it, and the mean of the rounds'
# ratios with a 95 % confidence interval: above, below or across 0.97.
#
# TOGETHER=0 measures in turn instead (the method until `a938793`): one
# pair for the run, wrk against each instance alone, the order alternating
# between rounds; a change of the guest's pace between the two halves of a
# round goes straight into its ratio. Pinned, the server CPU per request is
# then the inverse of each mean rate. PIN=0 leaves the servers and wrk
# unpinned, sharing every CPU, and implies TOGETHER=0.
#
# CONTROL=1 starts the "with Palisade" instance with --no-guard as well:
# two identical servers measured at once, whose ratio is the method's own
# error (1.000 within its spread).
#
# FLOOR=1 starts it with --floor instead: no Palisade, only the two edits
# Palisade (like Istio) makes by default to a request it admits, the
# token's header removed and a record of the caller for the handler,
# nothing checked. Its ratio is what the framework charges any guard for
# them, the part of the 0.97 bar no authenticator can win back.
#
#   benches/wrk.sh                         # both services
#   ROUNDS=20 DURATION=10 benches/wrk.sh reviews
#
# Settings (environment): ROUNDS (10), DURATION seconds (5), THREADS (1) and
# CONNECTIONS (16) of each wrk, SERVER_CPUS (0), WRK_CPUS (1), TOGETHER,
# PIN, CONTROL, FLOOR (wrk's own defaults are THREADS=2 CONNECTIONS=10).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

rounds=${ROUNDS:-10}
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

# rps URL [SECONDS]: one wrk run; prints requests/s.
rps() {
  run_wrk "$1" "${2:-$duration}" -t"$threads" -c"$connections"
  awk '/^Requests\/sec:/ {print $2}' <<<"$wrk_out"
}

case $rounds in '' | *[!0-9]* | 0) echo "error: ROUNDS must be a whole number, 1 or more (it is \`$rounds\`)" >&2; exit 2 ;; esac
control=$([ "${CONTROL:-0}" = 0 ] && echo 0 || echo 1)
floor=$([ "${FLOOR:-0}" = 0 ] && echo 0 || echo 1)
# What the first instance runs: Palisade, nothing (CONTROL) or the floor.
case $control$floor in
  00) first=palisade ;;
  10) first=control ;;
  01) first=floor ;;
  *) echo "error: CONTROL=1 and FLOOR=1 are two different runs: set one" >&2; exit 2 ;;
esac
together=${TOGETHER:-$([ ${#launcher[@]} -gt 0 ] && echo 1 || echo 0)}
if [ "$together" != 0 ] && [ ${#launcher[@]} -eq 0 ]; then
  echo "error: measuring both instances at once$([ "$first" = palisade ] || echo " (${first^^}=1 does)") needs the servers pinned to one CPU: taskset, two or more CPUs, PIN not 0" >&2
  exit 1
fi
if [ "$first" != palisade ] && [ "$together" = 0 ]; then
  echo "error: ${first^^}=1 is measured by the method that runs both instances at once: it needs TOGETHER=1 and the servers pinned (taskset, two or more CPUs, PIN not 0)" >&2
  exit 1
fi
case ${SERVER_CPUS:-0} in
  *[!0-9]*) [ "$together" = 0 ] || { echo "error: measuring at once, SERVER_CPUS must name one CPU (the servers split it): \`$SERVER_CPUS\`" >&2; exit 2; } ;;
esac

build_examples

# cpu_ticks PID: the process's user and system CPU time so far, in clock
# ticks: fields 14 and 15 of /proc/PID/stat (utime, stime), which are the
# 12th and 13th once "PID (COMMAND) " is cut off (a command name may hold
# spaces and parentheses; the last ") " ends it).
cpu_ticks() {
  sed -E 's/^.*\) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}

# pair GUARDED-URL OPEN-URL first|second [SECONDS]: one round of both at
# once (TOGETHER=1), the guarded instance's wrk started first or second; sets
# $g and $o (requests/s) and $cg and $co (server CPU per request, µs).
pair() {
  local tg0 to0 tg1 to1 hz
  hz=$(getconf CLK_TCK)
  tg0=$(cpu_ticks "$guarded_pid"); to0=$(cpu_ticks "$open_pid")
  local wg wo
  if [ "$3" = first ]; then
    run_wrk_bg "$1" "$work/g.wrk" "${4:-$duration}" & wg=$!
    run_wrk_bg "$2" "$work/o.wrk" "${4:-$duration}" & wo=$!
  else
    run_wrk_bg "$2" "$work/o.wrk" "${4:-$duration}" & wo=$!
    run_wrk_bg "$1" "$work/g.wrk" "${4:-$duration}" & wg=$!
  fi
  # One run that failed (it said why) stops the script; the other is
  # stopped with it, as it is no server the cleanup knows.
  if ! wait "$wg"; then kill "$wo" 2>/dev/null; exit 1; fi
  if ! wait "$wo"; then exit 1; fi
  tg1=$(cpu_ticks "$guarded_pid"); to1=$(cpu_ticks "$open_pid")
  g=$(awk '/^Requests\/sec:/ {print $2}' "$work/g.wrk")
  o=$(awk '/^Requests\/sec:/ {print $2}' "$work/o.wrk")
  cg=$(awk -v t=$((tg1 - tg0)) -v hz="$hz" '/ requests in / {printf "%.2f", 1e6 * t / hz / $1}' "$work/g.wrk")
  co=$(awk -v t=$((to1 - to0)) -v hz="$hz" '/ requests in / {printf "%.2f", 1e6 * t / hz / $1}' "$work/o.wrk")
}

# run_wrk_bg URL FILE SECONDS: run_wrk, its output into FILE (for a run in
# the background); fails on a run that completed no request.
run_wrk_bg() {
  run_wrk "$1" "$3" -t"$threads" -c"$connections"
  if ! awk '/ requests in / {exit !($1 > 0)}' <<<"$wrk_out"; then
    echo "error: wrk against $1 completed no request:" >&2
    echo "$wrk_out" >&2
    exit 1
  fi
  printf '%s\n' "$wrk_out" >"$2"
}

# verdict BAR: reads one ratio per line (the rounds'); prints their mean
# with a 95 % confidence interval (Student's t, the rounds taken as
# independent) and whether the interval lies above BAR, below it, or
# across it. BAR 1 is the control's: there, across is the expected answer.
verdict() {
  awk -v bar="$1" '
    { x[NR] = $1; sum += $1 }
    END {
      n = NR; mean = sum / n
      if (n < 2) { printf "mean of rounds %.3f (one round: no interval)", mean; exit }
      for (i = 1; i <= n; i++) ss += (x[i] - mean) ^ 2
      # t(0.975, n - 1) for 1 to 30 degrees of freedom; 2.0 beyond.
      split("12.706 4.303 3.182 2.776 2.571 2.447 2.365 2.306 2.262 2.228 2.201 2.179 2.160 2.145 2.131 2.120 2.110 2.101 2.093 2.086 2.080 2.074 2.069 2.064 2.060 2.056 2.052 2.048 2.045 2.042", t, " ")
      half = (n - 1 <= 30 ? t[n - 1] : 2.0) * sqrt(ss / (n - 1) / n)
      lo = mean - half; hi = mean + half
      if (bar == 1) side = lo > 1 || hi < 1 ? "excludes 1: the two instances differ, so the method is off by that much" : "includes 1, as two identical instances should"
      else side = lo >= bar ? "above the bar" : hi < bar ? "below the bar" : "across the bar: inconclusive, run more rounds"
      printf "mean of rounds %.3f, 95 %% interval %.3f to %.3f: %s (%s)", mean, lo, hi, side, bar
    }'
}

# start_pair SERVICE guarded|open: starts the two instances, the one named
# first (the guarded one started with --no-guard under CONTROL=1, with
# --floor under FLOOR=1); sets
# $guarded, $open, their pids and $token, and checks that they differ as
# intended.
start_pair() {
  local svc=$1 guard_args=()
  case $first in control) guard_args=(--no-guard) ;; floor) guard_args=(--floor) ;; esac
  if [ "$2" = guarded ]; then
    start "$svc" "$work/$svc-guarded.out" "${guard_args[@]}"
    guarded=$addr guarded_pid=$pid
    start "$svc" "$work/$svc-open.out" --no-guard
    open=$addr open_pid=$pid
  else
    start "$svc" "$work/$svc-open.out" --no-guard
    open=$addr open_pid=$pid
    start "$svc" "$work/$svc-guarded.out" "${guard_args[@]}"
    guarded=$addr guarded_pid=$pid
  fi
  # Without Palisade (CONTROL=1, FLOOR=1) the first instance still prints
  # the demo issuer's token command; the token only fills wrk's header
  # there (the floor removes it).
  token_url_of "$work/$svc-guarded.out"
  fetch_token
  case $first in
    palisade) check_pair "$svc" "$guarded" "$open" ;;
    floor) check_floor "$svc" "$guarded" "$open" ;;
  esac
}

summary=()
for svc in "${services[@]}"; do
  say "$svc (${framework[$svc]}): $rounds rounds of ${duration} s, the two instances $([ "$together" != 0 ] && echo "at once" || echo "in turn")$(case $first in control) echo ", CONTROL: both without Palisade" ;; floor) echo ", FLOOR: the floor against no guard" ;; esac), wrk -t$threads -c$connections${launcher:+, servers: ${launcher[*]}, wrk: ${wrk_launcher[*]}}"
  if [ "$together" = 0 ]; then
    start_pair "$svc" guarded
    rps "http://$guarded/list" 2 >/dev/null # warm-up
    rps "http://$open/list" 2 >/dev/null
  fi
  sum_g=0 sum_o=0 sum_cg=0 sum_co=0 ratios=()
  if [ "$together" != 0 ]; then
    printf '%-6s %22s %22s %8s %24s\n' round "$([ "$first" = floor ] && echo "the floor" || echo "with Palisade") (req/s)" "without (req/s)" ratio "CPU µs/request with, without"
  else
    printf '%-6s %22s %22s %8s\n' round "with Palisade (req/s)" "without (req/s)" ratio
  fi
  for r in $(seq 1 "$rounds"); do
    if [ "$together" != 0 ]; then
      # A new pair of processes every round, the order of their starts and
      # of their wrk runs alternating: one process's layout in memory can
      # make it a few per cent faster or slower than an identical one for
      # its whole life (CONTROL=1 shows it), so no pair is measured twice.
      order=$([ $((r % 2)) -eq 1 ] && echo first || echo second)
      stop_all
      start_pair "$svc" "$([ "$order" = first ] && echo guarded || echo open)"
      pair "http://$guarded/list" "http://$open/list" "$order" 2 # warm-up
      pair "http://$guarded/list" "http://$open/list" "$order"
      sum_cg=$(awk -v a="$sum_cg" -v b="$cg" 'BEGIN {print a + b}')
      sum_co=$(awk -v a="$sum_co" -v b="$co" 'BEGIN {print a + b}')
    else
      fetch_token
      if [ $((r % 2)) -eq 1 ]; then
        g=$(rps "http://$guarded/list"); o=$(rps "http://$open/list")
      else
        o=$(rps "http://$open/list"); g=$(rps "http://$guarded/list")
      fi
    fi
    sum_g=$(awk -v a="$sum_g" -v b="$g" 'BEGIN {print a + b}')
    sum_o=$(awk -v a="$sum_o" -v b="$o" 'BEGIN {print a + b}')
    ratios+=("$(awk -v a="$g" -v b="$o" 'BEGIN {printf "%.3f", a / b}')")
    if [ "$together" != 0 ]; then
      printf '%-6s %22.0f %22.0f %8s %24s\n' "$r" "$g" "$o" "${ratios[-1]}" "$cg, $co"
    else
      printf '%-6s %22.0f %22.0f %8s\n' "$r" "$g" "$o" "${ratios[-1]}"
    fi
  done
  ratio=$(awk -v a="$sum_g" -v b="$sum_o" 'BEGIN {printf "%.3f", a / b}')
  printf '%-6s %22.0f %22.0f %8s\n' mean "$(awk -v a="$sum_g" -v n="$rounds" 'BEGIN {print a / n}')" \
    "$(awk -v a="$sum_o" -v n="$rounds" 'BEGIN {print a / n}')" "$ratio"
  spread=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{v[NR] = $1} END {printf "median %.3f, rounds %.3f to %.3f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[1], v[NR]}')
  if [ "$first" = control ]; then
    summary+=("$svc (${framework[$svc]}), control: two instances without Palisade, first / second = $ratio (ratio of sums; $spread; 1.000 expected)")
  elif [ "$first" = floor ]; then
    summary+=("$svc (${framework[$svc]}): the floor / no guard = $ratio (ratio of sums; $spread; the part of the 0.97 bar the framework's edits take)")
  else
    summary+=("$svc (${framework[$svc]}): with / without Palisade = $ratio (ratio of sums; $spread; the bar is 0.97)")
  fi
  # In turn, a change of the guest's pace lands on one side of a round:
  # the rounds' errors are then neither independent nor centred, and an
  # interval would claim what the run cannot show.
  if [ "$together" != 0 ]; then
    summary+=("  $(printf '%s\n' "${ratios[@]}" | verdict "$([ "$first" = control ] && echo 1 || echo 0.97)")")
    # Both servers shared one CPU: their CPU per request, read from /proc,
    # is what each request cost, the kernel's share included.
    summary+=("$(awk -v g="$sum_cg" -v o="$sum_co" -v n="$rounds" -v first="$first" \
      'BEGIN {
        a = first == "control" ? "first" : first == "floor" ? "the floor" : "with"
        b = first == "control" ? "second" : "without"
        printf "  server CPU per request (from /proc): %.2f µs %s, %.2f µs %s, %+.2f µs; %s / %s = %.3f", g / n, a, o / n, b, (g - o) / n, b, a, o / g
      }')")
  elif [ ${#launcher[@]} -ne 0 ]; then
    # With the server on one CPU and wrk keeping it busy, a request's cost in
    # server CPU is the inverse of the rate: the difference is what Palisade
    # adds, the kernel's share included. Unpinned, the rate says nothing of it.
    summary+=("  server CPU per request: $(awk -v g="$sum_g" -v o="$sum_o" -v n="$rounds" \
      'BEGIN {printf "%.2f µs with, %.2f µs without, %.2f µs added", 1e6 * n / g, 1e6 * n / o, 1e6 * n / g - 1e6 * n / o}')")
  fi

  stop_all
done

say "summary"
printf '%s\n' "${summary[@]}"
