#!/usr/bin/env bash
# Tracker announce throughput and latency: a release tracker, 100 000 registered peers in
# 1 000 swarms, heartbeat announces from THREADS keep-alive connections for DURATION seconds.
# The load generator runs on the same two cores as the tracker.
#
#   bench/tracker.sh                  # SWARMS=1000 PEERS=100000 THREADS=4 DURATION=5
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q --bin tracker --example tracker_load
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-tracker.XXXXXX")
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$W"; }
trap cleanup EXIT
# Every announce comes from 127.0.0.1: the per-address rate limits (50 announces and 5
# publishes a second by default) would measure the limiter, so they are off here.
target/release/tracker --listen 127.0.0.1:0 --data "$W/data" --announce-rate 0 --publish-rate 0 \
  > "$W/tracker.log" 2>&1 & pid=$!
for _ in $(seq 100); do grep -q "listening on" "$W/tracker.log" && break; sleep 0.1; done
URL=$(sed -n 's/^listening on //p' "$W/tracker.log")
target/release/examples/tracker_load "$URL" "${SWARMS:-1000}" "${PEERS:-100000}" "${THREADS:-4}" "${DURATION:-5}"
