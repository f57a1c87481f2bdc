#!/usr/bin/env bash
# Multi-host benchmark (issue 14): a tracker host, an origin host and N client hosts, each a
# network namespace on one bridge, each host's upload capped by the kernel (tc tbf on its
# egress, no project rate flags), and with RTT_MS a delay relay (examples/delay_relay.rs) in
# front of every listener. Per run: wall time from starting the N clients to the last exit
# (discovery included), the Kumar-Ross bound max(F/u_s, N*F/(u_s + N*u_c)), wall/bound, the
# origin host's egress counter / F, failed and stuck clients; then medians.
# The work is done by examples/netns_crowd.rs, which builds its hosts with tests/netns.rs.
# Needs root, iproute2 (ip, tc) and, for the single-source mode, curl and nginx (else
# python3 -m http.server). Removes every namespace, bridge and process it made.
#
#   sudo bench/netns_crowd.sh                       # N = 8 16 32 64, caps from issue 14, 3 runs
#   NS="32" RUNS=10 sudo -E bench/netns_crowd.sh    # 10 runs of N = 32
#   NS=16 RTT_MS=40 bench/netns_crowd.sh            # 40 ms round trip on every path
#   ORIGIN_MBIT=400 CLIENT_MBIT=100 NS=8 bench/netns_crowd.sh   # other caps
#   MODE=single bench/netns_crowd.sh                # one client: get vs curl at RTT 0/10/50/100 ms
#   MODE=single SINGLE_MBIT=1000 RTTS=0,50 bench/netns_crowd.sh
#   SHOW_CLIENTS=1 NS=8 RUNS=1 bench/netns_crowd.sh # each client's JSON summary
#   CLIENT_ARGS="--max-upload-rate 22MB" NS=8 bench/netns_crowd.sh   # more flags for every get
# Each crowd run also prints the clients' origin bytes by reason and their duplicates (the
# summaries' origin_reasons and duplicates, in F), each uplink's use (tx bytes over cap x
# wall: clients' min and median, the origin's), the box's CPU busy share (/proc/stat), the
# time to the last summary (done_s: every output in place; a get serves on after it while
# peers fetch from it, --linger) and the clients' idle uplink split into start-up / middle /
# lingering / tail of exited hosts (shares of N x wall; veth counters sampled every 100 ms).
# NETNS_PROGRESS=1 has every client write --progress json lines to its .err file (kept
# when the driver runs with --work DIR).
#   MODE=viewer bench/netns_crowd.sh                # a --stream viewer whose uplink 8 pullers fill
#   MODE=viewer PULLERS=8 BITRATE_MBIT=8 PULL_DELAY_MS=1000 VIEWER_MBIT=50 bench/netns_crowd.sh
# The viewer mode plays the stream at BITRATE_MBIT, so a run lasts F / bitrate (64 MiB at
# 8 Mbit/s: 67 s): its SIZE_MIB defaults to 64. Caps there: ORIGIN_MBIT (200), VIEWER_MBIT
# and PULLER_MBIT (50).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-crowd}
NS=${NS:-"8 16 32 64"}
RUNS=${RUNS:-3}
if [ "$MODE" = viewer ]; then SIZE_MIB=${SIZE_MIB:-64}; else SIZE_MIB=${SIZE_MIB:-256}; fi
RTT_MS=${RTT_MS:-0}
TIMEOUT_S=${TIMEOUT_S:-300}
[ "$(id -u)" = 0 ] || { echo "netns_crowd.sh: needs root (network namespaces, tc)" >&2; exit 2; }
# BIN=DIR runs binaries built elsewhere (an A/B against an older commit), without building;
# DIR/examples/delay_relay and DIR/examples/netns_crowd must be there too.
[ -n "${BIN:-}" ] || cargo build --release -q --bins --example delay_relay --example netns_crowd
B=${BIN:-$PWD/target/release}

# Issue 14's caps (origin / client, Mbit/s) by N; ORIGIN_MBIT / CLIENT_MBIT override them.
caps() {
  case "$1" in
    8) echo "400 200" ;; 16) echo "200 100" ;; *) echo "200 50" ;;
  esac
}

driver=""
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-netns.XXXXXX")
cleanup() {
  # The driver removes its hosts when it ends; killed (Ctrl-C, SIGKILL), it cannot: then
  # stop what runs in its namespaces and delete them and its links, all named after its pid.
  if [ -n "$driver" ]; then
    kill "$driver" 2>/dev/null || true
    wait "$driver" 2>/dev/null || true
    tag=$(printf 'sc%xn' "$driver")
    for ns in $(ip netns list | awk '{print $1}' | grep "^$tag" || true); do
      for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
      ip netns del "$ns" 2>/dev/null || true
    done
    for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep "^$tag" || true); do
      ip link del "$l" 2>/dev/null || true
    done
  fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

common=(--bin "$B" --work "$W" --size-mib "$SIZE_MIB" --runs "$RUNS" ${CHUNK:+--chunk-size "$CHUNK"})
if [ "$MODE" = single ]; then
  "$B/examples/netns_crowd" "${common[@]}" single --mbit "${SINGLE_MBIT:-1000}" --rtts "${RTTS:-0,10,50,100}" &
  driver=$!; wait "$driver"; driver=""
  exit 0
fi
if [ "$MODE" = viewer ]; then
  "$B/examples/netns_crowd" "${common[@]}" viewer --pullers "${PULLERS:-8}" \
    --origin-mbit "${ORIGIN_MBIT:-200}" --viewer-mbit "${VIEWER_MBIT:-50}" \
    --puller-mbit "${PULLER_MBIT:-50}" --bitrate-mbit "${BITRATE_MBIT:-8}" \
    --pull-delay-ms "${PULL_DELAY_MS:-1000}" --rtt-ms "$RTT_MS" --timeout-s "$TIMEOUT_S" &
  driver=$!; wait "$driver"; driver=""
  exit 0
fi
for N in $NS; do
  read -r o c <<< "$(caps "$N")"
  "$B/examples/netns_crowd" "${common[@]}" crowd --clients "$N" \
    --origin-mbit "${ORIGIN_MBIT:-$o}" --client-mbit "${CLIENT_MBIT:-$c}" --rtt-ms "$RTT_MS" \
    --timeout-s "$TIMEOUT_S" ${SHOW_CLIENTS:+--show-clients} &
  driver=$!; wait "$driver"; driver=""
  echo
done
