#!/usr/bin/env bash
# Single-source benchmark: one peer_server -> one `peer_client get` to a file, against curl
# and aria2c -x4 fetching the same file from nginx (sendfile on), alternated in one run.
#
#   bench/single_source.sh            # 1 GiB, 5 runs each
#   SIZE_MIB=256 RUNS=3 bench/single_source.sh
#   CHUNK=256KiB bench/single_source.sh   # another chunk size than chunkify's default
#   ENCRYPT=1 bench/single_source.sh      # also an encrypted copy (--seed --encrypt), plain vs
#                                         # encrypted in the same run
#
# Needs nginx (Debian: nginx-light), curl and aria2c (Debian: aria2). Everything listens on 127.0.0.1. Outputs are
# deleted and synced outside the timed region. Prints each run, then medians and the ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-5}
# BIN=DIR runs binaries built elsewhere (an A/B against an older commit), without building.
[ -n "${BIN:-}" ] || cargo build --release -q
B=${BIN:-$PWD/target/release}
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-bench.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT
chmod 755 "$W"   # nginx workers run as an unprivileged user
cd "$W"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

head -c $((SIZE_MIB << 20)) /dev/urandom > file.bin
BYTES=$(stat -c %s file.bin)

mkdir -p www nginx/logs && ln file.bin www/file.bin
PORT=$(free_port)
cat > nginx/nginx.conf <<CONF
worker_processes 1;
daemon off;
error_log $W/nginx/logs/error.log;
pid $W/nginx/nginx.pid;
events { worker_connections 64; }
http {
  access_log off;
  sendfile on;
  server { listen 127.0.0.1:$PORT; root $W/www; }
}
CONF
nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" & pids+=($!)

"$B/tracker" --listen 127.0.0.1:0 --data tracker-data > tracker.log 2>&1 & pids+=($!)
URL=$(wait_line tracker.log "listening on ")
"$B/peer_server" --listen 127.0.0.1:0 --store origin --seed file.bin --tracker "$URL" --origin ${CHUNK:+--chunk-size $CHUNK} > server.log 2>&1 & pids+=($!)
wait_line server.log "listening on " > /dev/null
ID=$(wait_line server.log "seeded " | cut -d' ' -f1)
if [ -n "${ENCRYPT:-}" ]; then
  # The same file encrypted on its way into a store of its own (a new key: another asset).
  "$B/peer_server" --listen 127.0.0.1:0 --store origin-enc --seed file.bin --encrypt --tracker "$URL" --origin ${CHUNK:+--chunk-size $CHUNK} > server-enc.log 2>&1 & pids+=($!)
  wait_line server-enc.log "listening on " > /dev/null
  ID_ENC=$(wait_line server-enc.log "seeded " | cut -d' ' -f1)
fi
ok=0; for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PORT/file.bin" && { ok=1; break; }; sleep 0.1; done
[ "$ok" = 1 ] || { echo "nginx does not serve the file:" >&2; cat nginx/logs/error.log >&2; exit 1; }
cat file.bin > /dev/null   # both sources read from the page cache

: > curl.times; : > swarm.times; : > aria.times; : > enc.times
# The encrypted copy, timed like the plain get.
enc_get() {
  local t6 t7 e
  t6=$(now); "$B/peer_client" get "$ID_ENC" --tracker "$URL" -o out.enc --store "store-enc-$1" --quiet; t7=$(now)
  cmp -s file.bin out.enc || { echo "swarmcache encrypted output differs" >&2; exit 1; }
  rm -rf out.enc "store-enc-$1"; sync
  e=$(echo "$t7 - $t6" | bc -l); echo "$e" >> enc.times
  printf 'run %d: swarmcache encrypted %.3f s\n' "$1" "$e"
}
for i in $(seq "$RUNS"); do
  [ -z "${ENCRYPT:-}" ] || [ $((i % 2)) = 1 ] || enc_get "$i"
  t0=$(now); curl -s -o out.curl "http://127.0.0.1:$PORT/file.bin"; t1=$(now)
  cmp -s file.bin out.curl || { echo "curl output differs" >&2; exit 1; }
  rm -f out.curl; sync
  t2=$(now); "$B/peer_client" get "$ID" --tracker "$URL" -o out.swarm --store "store-$i" --quiet; t3=$(now)
  cmp -s file.bin out.swarm || { echo "swarmcache output differs" >&2; exit 1; }
  rm -rf out.swarm "store-$i"; sync
  t4=$(now); aria2c -q -x4 -s4 --file-allocation=falloc --enable-dht=false --allow-overwrite=true -d . -o out.aria "http://127.0.0.1:$PORT/file.bin"; t5=$(now)
  cmp -s file.bin out.aria || { echo "aria2c output differs" >&2; exit 1; }
  rm -f out.aria; sync
  c=$(echo "$t1 - $t0" | bc -l); s=$(echo "$t3 - $t2" | bc -l); a=$(echo "$t5 - $t4" | bc -l)
  echo "$c" >> curl.times; echo "$s" >> swarm.times; echo "$a" >> aria.times
  printf 'run %d: curl %.3f s   swarmcache %.3f s   aria2c -x4 %.3f s\n' "$i" "$c" "$s" "$a"
  # Odd runs get the encrypted copy last, even runs first: no order favours either.
  [ -z "${ENCRYPT:-}" ] || [ $((i % 2)) = 0 ] || enc_get "$i"
done
mc=$(median < curl.times); ms=$(median < swarm.times); ma=$(median < aria.times)
printf 'median of %d, %d MiB: aria2c -x4 %.3f s (%.2f GB/s); swarmcache throughput / aria2c = %.2f\n' \
  "$RUNS" "$SIZE_MIB" "$ma" "$(echo "$BYTES/$ma/1000000000" | bc -l)" "$(echo "$ma/$ms" | bc -l)"
printf 'median of %d, %d MiB: curl %.3f s (%.2f GB/s), swarmcache get %.3f s (%.2f GB/s, every chunk verified); swarmcache throughput / curl = %.2f\n' \
  "$RUNS" "$SIZE_MIB" "$mc" "$(echo "$BYTES/$mc/1000000000" | bc -l)" "$ms" "$(echo "$BYTES/$ms/1000000000" | bc -l)" "$(echo "$mc/$ms" | bc -l)"
if [ -n "${ENCRYPT:-}" ]; then
  me=$(median < enc.times)
  printf 'median of %d, %d MiB: swarmcache plain %.3f s (%.2f GB/s), encrypted %.3f s (%.2f GB/s); encrypted throughput / plain = %.2f\n' \
    "$RUNS" "$SIZE_MIB" "$ms" "$(echo "$BYTES/$ms/1000000000" | bc -l)" "$me" "$(echo "$BYTES/$me/1000000000" | bc -l)" "$(echo "$ms/$me" | bc -l)"
fi
