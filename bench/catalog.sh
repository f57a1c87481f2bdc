#!/usr/bin/env bash
# The catalog at scale (issue 12): a release tracker starting on a catalog of COUNT assets
# of 2^20 chunks each (32 MiB of binary manifest each: 32 GiB for 1 000, so mind the disk;
# everything is deleted at the end), then PUBLISHES maximum-size publishes (72 MiB of TOML
# each) sent at once by `peer_client publish`, then a restart. The page cache is whatever
# writing 32 GiB left: the first start reads most headers from the disk. Prints the time from spawn
# to "listening on", the resident memory after the start, after the publishes (and the
# peak), and what the publishes answered.
#
#   bench/catalog.sh                  # COUNT=1000 PUBLISHES=10
#
# Measured once (2 shared cores, loaded; catalog written in 309 s): cold start with 1 000
# assets listened after 0.158 s, RSS 4 MiB; 10 publishes at once done in 10.6 s, none
# failed, RSS 38 MiB after (the 64 MiB cache), peak 232 MiB; restart with 1 010: 0.052 s.
# Before (issue 12): 3.1 GiB peak, 1.15 GiB left, 17 s to start.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
COUNT=${COUNT:-1000}
PUBLISHES=${PUBLISHES:-10}
cargo build --release -q --bin tracker --bin peer_client --example catalog_fill
W=$(mktemp -d "${WORKDIR:-/tmp}/swarmcache-catalog.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
mib() { echo "$(( $1 / 1024 )) MiB"; }

t0=$(now)
target/release/examples/catalog_fill fill "$W/data" "$COUNT"
echo "catalog of $COUNT assets written in $(echo "$(now) - $t0" | bc) s: $(du -sh "$W/data" | cut -f1)"
for i in $(seq "$PUBLISHES"); do
  target/release/examples/catalog_fill toml $((1000000 + i)) > "$W/huge-$i.toml"
done

start() {
  t0=$(now)
  target/release/tracker --listen 127.0.0.1:0 --data "$W/data" --publish-rate 0 \
    > "$W/tracker.log" 2>&1 & pid=$!
  # Polled every 10 ms (common.sh's wait_line polls every 100 ms).
  for _ in $(seq 3000); do grep -q "^listening on " "$W/tracker.log" && break; sleep 0.01; done
  URL=$(wait_line "$W/tracker.log" "listening on ")
  echo "$1: listening after $(echo "$(now) - $t0" | bc | xargs printf '%.3f') s; RSS $(mib "$(kib $pid VmRSS)")"
}
start "start with $COUNT assets"

t0=$(now)
for i in $(seq "$PUBLISHES"); do
  target/release/peer_client publish --tracker "$URL" "$W/huge-$i.toml" \
    > "$W/publish-$i.out" 2> "$W/publish-$i.err" &
done
failed=0
for job in $(jobs -p | grep -v "^$pid\$"); do wait "$job" || failed=$((failed + 1)); done
echo "$PUBLISHES max-size publishes at once: done in $(echo "$(now) - $t0" | bc | xargs printf '%.1f') s, $failed failed$( [ "$failed" -gt 0 ] && echo ": $(cat "$W"/publish-*.err | sort | uniq -c | head -3)")"
echo "after the publishes: RSS $(mib "$(kib $pid VmRSS)"), peak $(mib "$(kib $pid VmHWM)")"
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
start "restart with $((COUNT + PUBLISHES - failed)) assets"
echo "assets listed: $(curl -s "$URL/assets" | grep -o '"id"' | wc -l)"
