#!/usr/bin/env bash
# Instructions per request for each scenario of benches/benches/instructions.rs,
# counted by callgrind (steadier than time on a shared machine, though seeded
# hashers move a result by up to a few hundred between runs: run it several
# times and take the median): each
# scenario runs at two counts and the difference is divided, cancelling the
# set-up. Prints the overhead of Palisade over the same app without it.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is missing: apt-get install valgrind" >&2; exit 1; }
cargo bench -p palisade-benches --bench instructions --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*instructions[^"]*\)".*/\1/p' | tail -1 > /tmp/palisade-instructions-bin
bin=$(cat /tmp/palisade-instructions-bin)
[ -x "$bin" ] || { echo "error: could not build the instructions bench" >&2; exit 1; }
lo=${LO:-200}; hi=${HI:-2200}
count() { # count SCENARIO N
  local out; out=$(mktemp)
  valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "$1" "$2" >/dev/null 2>&1
  sed -n 's/^summary: //p' "$out"; rm -f "$out"
}
declare -A per
for s in axum-baseline axum-cached actix-baseline actix-cached; do
  a=$(count "$s" "$lo"); b=$(count "$s" "$hi")
  per[$s]=$(( (b - a) / (hi - lo) ))
  echo "$s: ${per[$s]} instructions per request"
done
for f in axum actix; do
  echo "$f: Palisade adds $(( per[$f-cached] - per[$f-baseline] )) instructions per request (cached token)"
done
