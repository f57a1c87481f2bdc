#!/usr/bin/env bash
# Time to first byte of `peer_client get --stream` (default chunk size, fresh store each run) in a
# warm swarm (an origin and PEERS peer_servers holding the asset) and with the origin only,
# alternated, RUNS runs each. Two figures per run: from spawning the process to the first
# byte read from its stdout (what a player sees), and the client's own first_byte_secs.
#
#   bench/ttfb.sh                 # 30 runs, 3 peers, 64 MiB asset
#   RUNS=50 PEERS=5 bench/ttfb.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
RUNS=${RUNS:-30}
PEERS=${PEERS:-3}
SIZE_MIB=${SIZE_MIB:-64}
# BIN=DIR runs binaries built elsewhere (an A/B against an older commit), without building.
[ -n "${BIN:-}" ] || cargo build --release -q
B=${BIN:-$PWD/target/release}
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-ttfb.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"
head -c $((SIZE_MIB << 20)) /dev/urandom > file.bin

# swarm NAME PEERS: a tracker and an origin (and PEERS seeding peers) for file.bin; sets
# URL_<NAME> and ID.
swarm() {
  "$B/tracker" --listen 127.0.0.1:0 --data "$1-tracker" > "$1-tracker.log" 2>&1 & pids+=($!)
  local url; url=$(wait_line "$1-tracker.log" "listening on ")
  "$B/peer_server" --listen 127.0.0.1:0 --store "$1-origin" --seed file.bin --tracker "$url" \
    --origin > "$1-origin.log" 2>&1 & pids+=($!)
  wait_line "$1-origin.log" "listening on " > /dev/null
  ID=$(wait_line "$1-origin.log" "seeded " | cut -d' ' -f1)
  for p in $(seq "$2"); do
    "$B/peer_server" --listen 127.0.0.1:0 --store "$1-peer-$p" --seed file.bin --tracker "$url" \
      > "$1-peer-$p.log" 2>&1 & pids+=($!)
    wait_line "$1-peer-$p.log" "listening on " > /dev/null
  done
  eval "URL_$1=$url"
}
swarm warm "$PEERS"
swarm origin 0

# One streamed get: prints "spawn-to-first-byte-ms client-first-byte-ms p2p-ratio".
measure() {
  rm -rf store
  python3 - "$B/peer_client" "$ID" "$1" <<'PY'
import json, subprocess, sys, time
client, asset, url = sys.argv[1:4]
start = time.perf_counter()
p = subprocess.Popen([client, "get", asset, "--tracker", url, "--store", "store", "--stream",
                      "--json", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
p.stdout.read(1)
first = time.perf_counter() - start
while p.stdout.read(1 << 20):
    pass
err = p.stderr.read().decode()
if p.wait() != 0:
    sys.exit("peer_client failed: " + err)
summary = json.loads([l for l in err.splitlines() if l.startswith("{")][-1])
print(f"{first * 1000:.2f} {summary['first_byte_secs'] * 1000:.2f} {summary['p2p_ratio']:.2f}")
PY
}
: > warm.txt; : > origin.txt
for _ in $(seq "$RUNS"); do
  measure "$URL_warm" >> warm.txt
  measure "$URL_origin" >> origin.txt
done
pct() { sort -g | awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p+0.5)+1; print a[i]}'; }
for case in warm origin; do
  f=$case.txt
  printf '%-6s swarm (%s runs): spawn-to-first-byte p50 %s ms p90 %s ms; client-reported p50 %s ms p90 %s ms; p2p share p50 %s\n' \
    "$case" "$RUNS" "$(cut -d' ' -f1 $f | pct 0.5)" "$(cut -d' ' -f1 $f | pct 0.9)" \
    "$(cut -d' ' -f2 $f | pct 0.5)" "$(cut -d' ' -f2 $f | pct 0.9)" "$(cut -d' ' -f3 $f | pct 0.5)"
done
echo "target: p50 <= 15 ms in the warm swarm"
