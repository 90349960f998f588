#!/usr/bin/env bash
# Instructions per request for each scenario of benches/benches/instructions.rs,
# counted by callgrind (steadier than time on a shared machine): only the
# request loop is counted (`--toggle-collect`; the set-up's entropy
# gathering varies by a million instructions from run to run), each
# scenario runs at two counts and the difference is divided, cancelling
# what the first request does once. Prints the overhead of Palisade over the
# same app without it, and over the floor: the same app with only the edits
# Palisade makes by default to a request it admits (the token's header
# dropped, a record of the caller inserted), nothing checked.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "error: valgrind is missing: apt-get install valgrind" >&2; exit 1; }
cargo bench -p palisade-benches --bench instructions --no-run --message-format=json 2>/dev/null \
  | sed -n 's/.*"executable":"\([^"]*instructions[^"]*\)".*/\1/p' | tail -1 > /tmp/palisade-instructions-bin
bin=$(cat /tmp/palisade-instructions-bin)
[ -x "$bin" ] || { echo "error: could not build the instructions bench" >&2; exit 1; }
lo=${LO:-200}; hi=${HI:-1200}
count() { # count SCENARIO N
  local out; out=$(mktemp)
  valgrind --tool=callgrind --toggle-collect='instructions::requests*' --callgrind-out-file="$out" "$bin" "$1" "$2" >/dev/null 2>&1
  sed -n 's/^summary: //p' "$out"; rm -f "$out"
}
declare -A per
for s in axum-baseline axum-cached axum-service-cached axum-wrap-cached axum-floor axum-service-refused actix-baseline actix-cached actix-floor actix-refused; do
  a=$(count "$s" "$lo"); b=$(count "$s" "$hi")
  per[$s]=$(( (b - a) / (hi - lo) ))
  echo "$s: ${per[$s]} instructions per request"
done
echo "axum, Router::layer: Palisade adds $(( per[axum-cached] - per[axum-baseline] )) instructions per request (cached token)"
echo "axum, the layer around the router: Palisade adds $(( per[axum-service-cached] - per[axum-baseline] )); the floor adds $(( per[axum-floor] - per[axum-baseline] )), Palisade $(( per[axum-service-cached] - per[axum-floor] )) more"
echo "axum, PalisadeLayer::wrap: Palisade adds $(( per[axum-wrap-cached] - per[axum-baseline] ))"
echo "actix-web: Palisade adds $(( per[actix-cached] - per[actix-baseline] )); the floor adds $(( per[actix-floor] - per[actix-baseline] )), Palisade $(( per[actix-cached] - per[actix-floor] )) more"
echo "refused (a bearer that is no JWT, answered 401 with its challenge and problem document): axum, around the router, $(( per[axum-service-refused] - per[axum-baseline] )) over the baseline; actix-web $(( per[actix-refused] - per[actix-baseline] ))"
