#!/usr/bin/env bash
# Flash-crowd benchmark: N clients start together on one asset; the origin's upload is
# capped at ORIGIN_MIB MiB/s and each client's at CLIENT_MIB MiB/s (kernel-free token
# buckets in our processes). Prints, per N: wall time until every client has the file,
# the Kumar-Ross lower bound max(F/u_s, N*F/(u_s + N*u_c)) for those caps, the time an
# origin-only distribution would need (N*F/u_s), and the bytes the origin sent / F.
#
#   bench/flash_crowd.sh                 # N = 2 4 8 16, 256 MiB, 3 runs each
#   NS="8" RUNS=5 SIZE_MIB=256 bench/flash_crowd.sh
#   CHUNK=256KiB NS=8 bench/flash_crowd.sh   # another chunk size than chunkify's default
#   SHOW_CLIENTS=1 NS=8 bench/flash_crowd.sh # each client's summary, and why peers dropped
#   ENCRYPT=1 NS=8 bench/flash_crowd.sh      # each N plain, then encrypted (--seed --encrypt)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
SIZE_MIB=${SIZE_MIB:-256}
NS=${NS:-"2 4 8 16"}
RUNS=${RUNS:-3}
ORIGIN_MIB=${ORIGIN_MIB:-50}
CLIENT_MIB=${CLIENT_MIB:-25}
# BIN=DIR runs binaries built elsewhere (an A/B against an older commit), without building.
[ -n "${BIN:-}" ] || cargo build --release -q
B=${BIN:-$PWD/target/release}
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-crowd.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"


head -c $((SIZE_MIB << 20)) /dev/urandom > file.bin
F=$(stat -c %s file.bin)
# Each run gets a fresh tracker and origin (started outside the timed region), so that
# peers of an earlier run are never in the swarm.
# With ENCRYPT=1 each N runs plain, then with the origin seeding the file --encrypt.
MODES=plain; [ -z "${ENCRYPT:-}" ] || MODES="plain encrypted"
start_swarm() {
  rm -rf tracker-data origin c-*; sync
  local enc=""; [ "$1" = encrypted ] && enc=--encrypt
  "$B/tracker" --listen 127.0.0.1:0 --data tracker-data > tracker.log 2>&1 & tracker_pid=$!; pids+=($!)
  URL=$(wait_line tracker.log "listening on ")
  "$B/peer_server" --listen 127.0.0.1:0 --store origin --seed file.bin --tracker "$URL" --origin ${CHUNK:+--chunk-size $CHUNK} $enc \
    --max-upload-rate "${ORIGIN_MIB}MiB" > origin.log 2>&1 & origin_pid=$!; pids+=($!)
  wait_line origin.log "listening on " > /dev/null
  ID=$(wait_line origin.log "seeded " | cut -d' ' -f1)
}
stop_swarm() { kill "$tracker_pid" "$origin_pid" 2>/dev/null || true; wait "$tracker_pid" "$origin_pid" 2>/dev/null || true; }

printf '%-4s %-9s %10s %10s %12s %10s %14s\n' N mode wall_s bound_s origin_only_s wall/bound origin_sent/F
for N in $NS; do
for mode in $MODES; do
  bound=$(echo "b1 = $F / ($ORIGIN_MIB * 1048576); b2 = $N * $F / (($ORIGIN_MIB + $N * $CLIENT_MIB) * 1048576); if (b1 > b2) b1 else b2" | bc -l)
  only=$(echo "$N * $F / ($ORIGIN_MIB * 1048576)" | bc -l)
  : > walls; : > ratios
  for run in $(seq "$RUNS"); do
    start_swarm "$mode"
    cpids=()
    t0=$(now)
    for i in $(seq "$N"); do
      "$B/peer_client" get "$ID" --tracker "$URL" -o "c-$i.out" --store "c-$i" --quiet --json \
        --listen 127.0.0.1:0 --max-upload-rate "${CLIENT_MIB}MiB" --seed-for 600s > "c-$i.json" 2> "c-$i.err" &
      cpids+=($!); pids+=($!)
    done
    # Done when every client has printed its summary (it prints before seeding on).
    limit=$(echo "$only * 3 + 60" | bc -l | cut -d. -f1)
    end=""
    for _ in $(seq $((limit * 20))); do
      done_count=$(cat c-*.json | grep -c '^{' || true)
      if [ "$done_count" -ge "$N" ]; then end=$(now); break; fi
      sleep 0.05
    done
    [ -n "$end" ] || { echo "N=$N: not every client finished within ${limit}s" >&2; tail -3 c-*.err >&2; exit 1; }
    for p in "${cpids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ -n "${SHOW_CLIENTS:-}" ]; then cat c-*.json | python3 -c 'import sys, json
for l in sys.stdin:
    s = json.loads(l); print("  client: %.2f s, first byte %.3f s, origin %d MiB, peers %d MiB, uploaded %d MiB, hedged %d, dropped %s" % (s["seconds"], s["first_byte_secs"] or 0, s["from_origin"] >> 20, s["from_peers"] >> 20, s["uploaded"] >> 20, s["hedged"], [x["addr"] for x in s["sources"] if x.get("dropped")]))'; grep -h "dropping\|retrying" c-*.err | sed 's/^/    /' | sort | uniq -c | sort -rn | head -8 || true; fi
    for i in $(seq "$N"); do cmp -s file.bin "c-$i.out" || { echo "client $i output differs" >&2; exit 1; }; done
    origin=$(cat c-*.json | python3 -c 'import sys, json; print(sum(json.loads(l)["from_origin"] for l in sys.stdin if l.startswith("{")))')
    stop_swarm
    wall=$(echo "$end - $t0" | bc -l)
    echo "$wall" >> walls; echo "$origin / $F" | bc -l >> ratios
  done
  w=$(median < walls); r=$(median < ratios)
  printf '%-4s %-9s %10.2f %10.2f %12.2f %10.2f %14.2f\n' "$N" "$mode" "$w" "$bound" "$only" "$(echo "$w / $bound" | bc -l)" "$r"
done
done
echo "(medians of $RUNS runs; F = $SIZE_MIB MiB, origin capped at $ORIGIN_MIB MiB/s, clients at $CLIENT_MIB MiB/s upload, ${CHUNK:-default} chunks)"
