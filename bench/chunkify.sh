#!/usr/bin/env bash
# chunkify against `openssl dgst -sha256` on the same file in the page cache, alternated.
#
#   bench/chunkify.sh                 # 1 GiB, 5 runs each
#   SIZE_MIB=256 RUNS=3 bench/chunkify.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/common.sh
SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-5}
cargo build --release -q
B=$PWD/target/release
W=$(mktemp -d "${TMPDIR:-/tmp}/swarmcache-chunkify.XXXXXX")
trap 'rm -rf "$W"' EXIT
head -c $((SIZE_MIB << 20)) /dev/urandom > "$W/file.bin"
BYTES=$(stat -c %s "$W/file.bin")
cat "$W/file.bin" > /dev/null
: > "$W/openssl"; : > "$W/chunkify"
for i in $(seq "$RUNS"); do
  t0=$(now); openssl dgst -sha256 "$W/file.bin" > /dev/null; t1=$(now)
  "$B/chunkify" "$W/file.bin" > /dev/null; t2=$(now)
  o=$(echo "$t1 - $t0" | bc -l); c=$(echo "$t2 - $t1" | bc -l)
  echo "$o" >> "$W/openssl"; echo "$c" >> "$W/chunkify"
  printf 'run %d: openssl %.3f s   chunkify %.3f s\n' "$i" "$o" "$c"
done
mo=$(median < "$W/openssl"); mc=$(median < "$W/chunkify")
printf 'median of %d, %d MiB: openssl dgst -sha256 %.3f s (%.2f GB/s), chunkify %.3f s (%.2f GB/s, chunk hashes + whole-content hash); chunkify throughput / openssl = %.2f\n' \
  "$RUNS" "$SIZE_MIB" "$mo" "$(echo "$BYTES/$mo/1000000000" | bc -l)" "$mc" "$(echo "$BYTES/$mc/1000000000" | bc -l)" "$(echo "$mo/$mc" | bc -l)"
