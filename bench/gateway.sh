#!/usr/bin/env bash
# Gateway benchmark: time to first byte of a Range read at a random offset of an asset in a
# warm swarm (an origin and two peers holding it, the gateway's store empty), p50/p90.
#
#   bench/gateway.sh                    # 1 GiB, 30 reads of 64 KiB
#   SIZE_MIB=256 READS=10 bench/gateway.sh
#
# Needs curl. Everything listens on 127.0.0.1. Each read is a fresh offset, so the gateway
# fetches its chunk (from a peer first) before the first byte goes out. Target: p50 <= 20 ms.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
SIZE_MIB=${SIZE_MIB:-1024}
READS=${READS:-30}
[ -n "${BIN:-}" ] || cargo build --release -q
B=${BIN:-$PWD/target/release}
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"

head -c $((SIZE_MIB << 20)) /dev/urandom > file.bin
BYTES=$(stat -c %s file.bin)
"$B/tracker" --listen 127.0.0.1:0 --data tracker-data > tracker.log 2>&1 & pids+=($!)
URL=$(wait_line tracker.log "listening on ")
"$B/peer_server" --listen 127.0.0.1:0 --store origin --seed file.bin --tracker "$URL" --origin > origin.log 2>&1 & pids+=($!)
ID=$(wait_line origin.log "seeded " | cut -d' ' -f1)
for p in 1 2; do
  # A peer's store holds the asset (a hard link: no copy on disk) and seeds it.
  "$B/peer_server" --listen 127.0.0.1:0 --store "peer$p" --seed file.bin --tracker "$URL" > "peer$p.log" 2>&1 & pids+=($!)
  wait_line "peer$p.log" "seeded " > /dev/null
done
"$B/peer_client" gateway --listen 127.0.0.1:0 --tracker "$URL" --store gw > gateway.out 2> gateway.log & pids+=($!)
GW=$(wait_line gateway.out "listening on " | sed 's/^listening on //')
# The first request opens the asset (manifest, key, first announce): not timed.
curl -sf -o /dev/null -r 0-0 "$GW/$ID"
for _ in $(seq "$READS"); do
  off=$(( (RANDOM * 32768 + RANDOM) % (BYTES - 65536) ))
  curl -sf -o /dev/null -w '%{time_starttransfer}\n' -r "$off-$((off + 65535))" "$GW/$ID"
done > ttfb.txt
p50=$(median < ttfb.txt)
p90=$(sort -g ttfb.txt | awk '{a[NR]=$1} END {i=int(NR*0.9); if (i<1) i=1; print a[i]}')
stats=$(curl -sf "$GW/stats/$ID")
printf 'gateway range TTFB (%d MiB, %d reads of 64 KiB at random offsets, warm swarm of 3):\n' "$SIZE_MIB" "$READS"
printf '  p50 %.1f ms  p90 %.1f ms  (target p50 <= 20 ms)\n' "$(echo "$p50*1000" | bc -l)" "$(echo "$p90*1000" | bc -l)"
echo "  stats: $stats"
