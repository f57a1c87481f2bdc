# Helpers shared by the benchmark scripts (sourced, not run).

# wait_line FILE PREFIX: the rest of the first line of FILE starting with PREFIX, waiting
# at most 60 s for it to appear.
wait_line() {
  local v
  for _ in $(seq 600); do
    v=$(sed -n "s/^$2//p" "$1" | head -1); [ -n "$v" ] && { echo "$v"; return; }; sleep 0.1
  done
  echo "no '$2' in $1" >&2; cat "$1" >&2; exit 1
}
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
