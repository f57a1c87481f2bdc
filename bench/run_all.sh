#!/usr/bin/env bash
# Every benchmark, one after the other, with the figures BENCHMARKS.md records.
# Needs nginx (Debian: nginx-light), curl, aria2, openssl, python3, bc and taskset (util-linux). Takes about 25 minutes.
set -euo pipefail
cd "$(dirname "$0")"
echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem/ {print $2}') GiB"
echo "== single source: 1 GiB, peer_server -> peer_client get, against nginx -> curl"
./single_source.sh | tail -2
echo "== chunkify: 1 GiB, against openssl dgst -sha256"
./chunkify.sh | tail -1
echo "== flash crowd: 256 MiB, origin capped at 50 MiB/s, clients at 25 MiB/s"
./flash_crowd.sh
echo "== tracker: a fleet of 1 000 downloaders of 65 536 chunks beside 1 000 swarms of 100 000 peers; throughput on 1 and 2 cores; a get beside 32 held connections"
./tracker.sh | sed -n '/^| figure/,$p'
echo "== memory"
./memory.sh
echo "== time to first byte of --stream: default chunk size, warm swarm and origin only"
./ttfb.sh | tail -3
echo "== gateway: TTFB of a Range read at a random offset of 1 GiB, warm swarm of 3"
./gateway.sh | tail -3
echo "== /watch in headless Chromium: page load to playing, seeking to seeked (skipped without chromium)"
if command -v chromium > /dev/null && command -v chromedriver > /dev/null && command -v ffmpeg > /dev/null; then
  ./watch.sh | tail -3
else
  echo "skipped: needs ffmpeg, chromium and chromedriver"
fi
