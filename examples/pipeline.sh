#!/usr/bin/env bash
# The swarmcache pipeline as a shell script: tracker, chunkify | publish, an origin
# peer_server, peer_client get, cmp; then streaming into real programs while the asset
# downloads (sha256sum, tar x). Runs in the current directory.
#
#   cargo build --release && examples/pipeline.sh
#
# Settings (environment): TRACKER_LISTEN (default 127.0.0.1:7070), ORIGIN_LISTEN (default
# 127.0.0.1:7001), SIZE_MIB (size of the generated file, default 64). Port 0 picks a free
# port: the script reads the real address from each server's "listening on" line.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
if ! command -v tracker >/dev/null 2>&1; then
  PATH="$here/../target/release:$PATH"
fi
for tool in tracker chunkify peer_server peer_client; do
  command -v "$tool" >/dev/null 2>&1 || { echo "pipeline.sh: $tool not found; run: cargo build --release" >&2; exit 1; }
done

TRACKER_LISTEN=${TRACKER_LISTEN:-127.0.0.1:7070}
ORIGIN_LISTEN=${ORIGIN_LISTEN:-127.0.0.1:7001}
SIZE_MIB=${SIZE_MIB:-64}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

# Waits (at most 30 s) for "listening on ADDR" in a log file and prints ADDR.
listening_addr() {
  for _ in $(seq 300); do
    if addr=$(sed -n 's/^listening on //p' "$1") && [ -n "$addr" ]; then echo "$addr"; return 0; fi
    sleep 0.1
  done
  echo "pipeline.sh: no 'listening on' line in $1:" >&2; cat "$1" "$1.err" >&2; return 1
}

head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom > big.iso

tracker --listen "$TRACKER_LISTEN" --data ./tracker-data > tracker.log 2> tracker.log.err &
pids+=($!)
TRACKER=$(listening_addr tracker.log)
echo "tracker at $TRACKER"

ID=$(chunkify big.iso | peer_client publish --tracker "$TRACKER" -)
echo "published big.iso as $ID"

peer_server --origin --listen "$ORIGIN_LISTEN" --store ./origin --seed big.iso --tracker "$TRACKER" > origin.log 2> origin.log.err &
pids+=($!)
echo "origin at $(listening_addr origin.log)"

peer_client get "$ID" --tracker "$TRACKER" -o copy.iso --store ./client
cmp big.iso copy.iso && echo "copy.iso and big.iso are identical"

# Streaming: bytes reach the pipe in order while the download runs (a fresh store, so they
# come from the swarm). Any reader works: `| mpv -`, `| ffplay -`, `| tar x`.
streamed=$(peer_client get "$ID" --tracker "$TRACKER" --store ./viewer --stream | sha256sum)
[ "$streamed" = "$(sha256sum < big.iso)" ] && echo "the stream of $ID hashes like big.iso"

mkdir -p album && for n in 1 2 3; do head -c $((SIZE_MIB * 1024 * 64)) /dev/urandom > "album/track-$n.bin"; done
tar cf album.tar album
ALBUM=$(chunkify album.tar | peer_client publish --tracker "$TRACKER" -)
peer_server --origin --listen "${ORIGIN_LISTEN%:*}:0" --store ./origin-2 --seed album.tar --tracker "$TRACKER" > origin-2.log 2> origin-2.log.err &
pids+=($!)
listening_addr origin-2.log > /dev/null
mkdir -p unpacked
peer_client get "$ALBUM" --tracker "$TRACKER" --store ./viewer --stream | tar x -C unpacked
diff -r album unpacked/album && echo "album.tar streamed into tar x unpacks identical"
curl -s "$TRACKER/stats" 2>/dev/null || true
