#!/usr/bin/env bash
# chunkify against `openssl dgst -sha256` on the same file in the page cache, alternated:
# plain chunkify (format 2: chunk hashes only, every core, target >= 1.8x openssl on two
# cores) and chunkify --sha256 (the whole-content hash too: one sequential chain, so about
# one core's speed, ~1x openssl).
#
#   bench/chunkify.sh                 # 1 GiB, 5 runs each
#   SIZE_MIB=256 RUNS=3 bench/chunkify.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-5}
# BIN=DIR runs binaries built elsewhere (an A/B against an older commit), without building.
[ -n "${BIN:-}" ] || cargo build --release -q
B=${BIN:-$PWD/target/release}
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-chunkify.XXXXXX")
trap 'rm -rf "$W"' EXIT
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/file.bin"
BYTES=$(stat -c %s "$W/file.bin")
cat "$W/file.bin" > /dev/null
: > "$W/openssl"; : > "$W/chunkify"; : > "$W/whole"
for i in $(seq "$RUNS"); do
  t0=$(now); openssl dgst -sha256 "$W/file.bin" > /dev/null; t1=$(now)
  "$B/chunkify" "$W/file.bin" > /dev/null; t2=$(now)
  "$B/chunkify" --sha256 "$W/file.bin" > /dev/null; t3=$(now)
  o=$(echo "$t1 - $t0" | bc -l); c=$(echo "$t2 - $t1" | bc -l); w=$(echo "$t3 - $t2" | bc -l)
  echo "$o" >> "$W/openssl"; echo "$c" >> "$W/chunkify"; echo "$w" >> "$W/whole"
  printf 'run %d: openssl %.3f s   chunkify %.3f s   chunkify --sha256 %.3f s\n' "$i" "$o" "$c" "$w"
done
mo=$(median < "$W/openssl"); mc=$(median < "$W/chunkify"); mw=$(median < "$W/whole")
gbps() { echo "$BYTES/$1/1000000000" | bc -l; }
printf 'median of %d, %d MiB: openssl dgst -sha256 %.3f s (%.2f GB/s); chunkify %.3f s (%.2f GB/s, chunk hashes on every core), throughput / openssl = %.2f (target >= 1.8 on 2 cores); chunkify --sha256 %.3f s (%.2f GB/s, + whole-content hash) = %.2f\n' \
  "$RUNS" "$SIZE_MIB" "$mo" "$(gbps "$mo")" "$mc" "$(gbps "$mc")" "$(echo "$mo/$mc" | bc -l)" \
  "$mw" "$(gbps "$mw")" "$(echo "$mo/$mw" | bc -l)"
