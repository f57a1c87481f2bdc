#!/usr/bin/env bash
# Peak memory (VmHWM, peak resident set) of `peer_client get` for a 4 GiB asset, and of
# `peer_server` while 64 clients download from it at once.
#
#   bench/memory.sh                         # 4 GiB get; 64 clients of a 64 MiB asset
#   GET_MIB=1024 CLIENTS=32 bench/memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
GET_MIB=${GET_MIB:-4096}
CLIENTS=${CLIENTS:-64}
SERVE_MIB=${SERVE_MIB:-64}
# BIN=DIR runs binaries built elsewhere (an A/B against an older commit), without building.
[ -n "${BIN:-}" ] || cargo build --release -q
B=${BIN:-$PWD/target/release}
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-memory.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

"$B/tracker" --listen 127.0.0.1:0 --data tracker-data > tracker.log 2>&1 & pids+=($!)
URL=$(wait_line tracker.log "listening on ")

# 1. One get of a large asset: the client's memory must not grow with the asset.
head -c $((GET_MIB << 20)) /dev/urandom > big.bin
"$B/peer_server" --listen 127.0.0.1:0 --store origin --seed big.bin --tracker "$URL" --origin > origin.log 2>&1 & pids+=($!)
wait_line origin.log "listening on " > /dev/null
BIG=$(wait_line origin.log "seeded " | cut -d' ' -f1)
rm -f big.bin
"$B/peer_client" get "$BIG" --tracker "$URL" -o big.out --store client --quiet &
client=$!; pids+=($!)
peak=0
while kill -0 "$client" 2>/dev/null; do
  p=$(peak_kib "$client" 2>/dev/null || echo 0); [ "${p:-0}" -gt "$peak" ] && peak=$p; sleep 0.05
done
wait "$client"
printf 'peer_client get of %d MiB: peak RSS %.1f MiB (target <= 64 MiB)\n' "$GET_MIB" "$(echo "$peak/1024" | bc -l)"
rm -rf big.out client

# 2. One server, many clients at once.
head -c $((SERVE_MIB << 20)) /dev/urandom > small.bin
"$B/peer_server" --listen 127.0.0.1:0 --store seeder --seed small.bin --tracker "$URL" --origin --max-conns 64 --max-conns-per-addr 64 > seeder.log 2>&1 &
seeder=$!; pids+=($!)
wait_line seeder.log "listening on " > /dev/null
SMALL=$(wait_line seeder.log "seeded " | cut -d' ' -f1)
cpids=()
for i in $(seq "$CLIENTS"); do
  "$B/peer_client" get "$SMALL" --tracker "$URL" -o "s-$i.out" --store "s-$i" --quiet --no-serve --workers 1 2> "s-$i.err" &
  cpids+=($!); pids+=($!)
done
peak=0; running=1
while [ "$running" = 1 ]; do
  running=0; for c in "${cpids[@]}"; do kill -0 "$c" 2>/dev/null && { running=1; break; }; done
  p=$(peak_kib "$seeder"); [ "$p" -gt "$peak" ] && peak=$p; sleep 0.05
done
failed=0; for c in "${cpids[@]}"; do wait "$c" || failed=$((failed + 1)); done
printf 'peer_server with %d clients at once (%d MiB each, %d failed): peak RSS %.1f MiB (target <= 64 MiB)\n' "$CLIENTS" "$SERVE_MIB" "$failed" "$(echo "$peak/1024" | bc -l)"
