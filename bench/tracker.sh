#!/usr/bin/env bash
# The tracker under a fleet (issue 12): examples/tracker_load against a release tracker in
# three modes, then one table of the figures beside their targets.
#  1. fleet: D downloaders and S seeders of one asset of C chunks, announcing as real
#     clients do, plus B background swarms of P peers heartbeating, for DURATION seconds:
#     announces answered and not, 503s, latency, answer bytes, tracker and generator CPU,
#     tracker RSS.
#  2. throughput: closed loop over P registered peers, the tracker pinned (taskset) to one
#     core and to two in alternated runs (RUNS each, RUN_SECS long; the generator pinned
#     to the second core): medians and their ratio.
#  3. idle: a real `peer_client get` of an IDLE_MIB asset from a real origin, timed alone
#     and while 32 kept-alive idle or trickling connections from 127.0.0.1 and 127.0.0.2
#     are held (GETS times each, alternated): medians and their ratio.
# The generator runs on the same cores as the tracker; it reports its own CPU.
#
#   bench/tracker.sh                          # D=1000 S=10 C=65536 B=1000 P=100000 DURATION=30
#   DURATION=20 RUNS=2 RUN_SECS=5 GETS=2 bench/tracker.sh
#   MODES="fleet idle" D=200 bench/tracker.sh
#   BIN=/old/target/release bench/tracker.sh  # another tracker; the generator is built here
#   REDIS=1 MODES=throughput bench/tracker.sh # then again with --redis, same run (issue 17)
# REDIS=1: the throughput mode runs a second time against a tracker keeping its swarms in a
# redis-server started here (REDIS_PORT, default 6399; no persistence; not pinned, so it
# takes the generator's core too), and the rows say "redis:"; targets: p99 ≤ 10 ms and at
# least half the in-memory throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
D=${D:-1000}; S=${S:-10}; C=${C:-65536}; B=${B:-1000}; P=${P:-100000}
DURATION=${DURATION:-30}; RUNS=${RUNS:-3}; RUN_SECS=${RUN_SECS:-5}
GETS=${GETS:-3}; IDLE_MIB=${IDLE_MIB:-64}
MODES=${MODES:-"fleet throughput idle"}
# BIN=DIR runs binaries built elsewhere (an A/B against an older commit), without building
# them; the generator is this tree's, built here.
[ -n "${BIN:-}" ] || cargo build --release -q --bins
cargo build --release -q --example tracker_load
B_DIR=${BIN:-$PWD/target/release}
GEN=$PWD/target/release/examples/tracker_load
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-tracker.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
cd "$W"

# start_tracker FLAGS...: a fresh tracker; sets tracker_pid and URL.
start_tracker() {
  rm -rf tracker-data
  "$B_DIR/tracker" --listen 127.0.0.1:0 --data tracker-data "$@" > tracker.log 2>&1 & tracker_pid=$!; pids+=($!)
  URL=$(wait_line tracker.log "listening on ")
}
stop_tracker() { kill "$tracker_pid" 2>/dev/null || true; wait "$tracker_pid" 2>/dev/null || true; }
: > rows
# The generator announces from a few loopback addresses, each standing for many hosts: the
# per-address rate limits would measure the limiter, so they are off in modes 1 and 2.
NO_LIMITS=(--announce-rate 0 --publish-rate 0)

for mode in $MODES; do case $mode in
fleet)
  echo "== fleet: $D downloaders and $S seeders of $C chunks, $B swarms of $P peers, ${DURATION} s"
  start_tracker "${NO_LIMITS[@]}"
  "$GEN" fleet --tracker "$URL" --tracker-pid "$tracker_pid" --downloaders "$D" --seeders "$S" \
    --chunks "$C" --swarms "$B" --peers "$P" --seconds "$DURATION" | tee fleet.out | grep -v '^| '
  grep '^| ' fleet.out >> rows
  stop_tracker ;;
throughput)
  echo "== throughput: $B swarms of $P peers, closed loop, tracker on 1 core then 2, $RUNS runs of ${RUN_SECS} s each"
  start_tracker "${NO_LIMITS[@]}"
  taskset -c 1 "$GEN" throughput --tracker "$URL" --tracker-pid "$tracker_pid" --swarms "$B" --peers "$P" \
    --runs "$RUNS" --run-secs "$RUN_SECS" | tee throughput.out | grep -v '^| '
  grep '^| ' throughput.out >> rows
  stop_tracker
  if [ "${REDIS:-0}" = 1 ]; then
    echo "== throughput with --redis (redis-server on port ${REDIS_PORT:=6399})"
    mkdir -p redis
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$W/redis" > redis.log 2>&1 & pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
    start_tracker "${NO_LIMITS[@]}" --redis "redis://127.0.0.1:$REDIS_PORT/0"
    taskset -c 1 "$GEN" throughput --tracker "$URL" --tracker-pid "$tracker_pid" --swarms "$B" --peers "$P" \
      --runs "$RUNS" --run-secs "$RUN_SECS" | tee throughput-redis.out | grep -v '^| '
    grep '^| ' throughput-redis.out | sed 's/^| /| redis: /' >> rows
    # Redis's own cost per announce script, registration included (each a join there).
    redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' | awk -F'[=,]' \
      '/^cmdstat_evalsha/ {printf "| redis: EVALSHA us/call (INFO commandstats, %d calls) | %.1f | |\n", $2, $6}' >> rows
    stop_tracker
    redis-cli -p "$REDIS_PORT" shutdown nosave > /dev/null 2>&1 || true
  fi ;;
idle)
  echo "== idle: peer_client get of $IDLE_MIB MiB alone and beside 32 held connections, $GETS each"
  start_tracker
  head -c $((IDLE_MIB << 20)) /dev/urandom > file.bin
  "$B_DIR/peer_server" --listen 127.0.0.1:0 --store origin --seed file.bin --tracker "$URL" --origin > origin.log 2>&1 & pids+=($!)
  wait_line origin.log "listening on " > /dev/null
  ID=$(wait_line origin.log "seeded " | cut -d' ' -f1)
  # timed_get NAME: one get into a fresh store; prints its seconds and "ok" or "failed".
  timed_get() {
    rm -rf out store; sync
    local t0 t1 ok=ok
    t0=$(now)
    timeout 120 "$B_DIR/peer_client" get "$ID" --tracker "$URL" -o out --store store --quiet 2> "get-$1.err" || ok=failed
    t1=$(now)
    [ "$ok" = ok ] && ! cmp -s file.bin out && ok=failed
    echo "$(echo "$t1 - $t0" | bc -l) $ok"
  }
  : > alone; : > beside; held=""
  for i in $(seq "$GETS"); do
    read -r ta oka < <(timed_get "alone-$i"); echo "$ta" >> alone
    "$GEN" idle --tracker "$URL" > idle.out 2>&1 & gen=$!; pids+=($!)
    held=$(wait_line idle.out "holding ")
    read -r tb okb < <(timed_get "beside-$i"); echo "$tb" >> beside
    kill "$gen" 2>/dev/null || true; wait "$gen" 2>/dev/null || true
    printf 'get %d: alone %.3f s (%s), beside held connections %.3f s (%s)\n' "$i" "$ta" "$oka" "$tb" "$okb"
    [ "$okb" = ok ] || tail -1 "get-beside-$i.err"
  done
  echo "held: $held"
  ma=$(median < alone); mb=$(median < beside)
  printf '| idle: get of %d MiB alone / beside 32 held connections (median of %d) | %.3f s / %.3f s | |\n' "$IDLE_MIB" "$GETS" "$ma" "$mb" >> rows
  printf '| idle: get beside held connections / alone | %.2f× | normal time (≈ 1×) |\n' "$(echo "$mb / $ma" | bc -l)" >> rows
  stop_tracker ;;
*) echo "unknown mode $mode (fleet, throughput, idle)" >&2; exit 2 ;;
esac; done

echo "== tracker: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); tracker from $B_DIR"
echo "| figure | measured | target |"
echo "|---|---|---|"
cat rows
