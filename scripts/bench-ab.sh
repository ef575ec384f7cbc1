#!/usr/bin/env bash
# Throughput and latency of two keel binaries, side by side on this machine: for each round and
# each binary (the order alternating from round to round), a fresh local 3-node cluster, then
# closed-loop keel-bench runs of the compare workloads (64 clients: semi writes, linearizable
# reads, stale reads, GET /health; 1 client: semi writes), and the medians over the rounds.
# Usage: scripts/bench-ab.sh A_BIN B_BIN [ROUNDS] (after `cargo build --release --workspace`)
# Environment: DURATION (8s), WORKLOADS (names to run, space-separated; default all five).
set -u
A=${1:?usage: scripts/bench-ab.sh A_BIN B_BIN [ROUNDS]}
B=${2:?usage: scripts/bench-ab.sh A_BIN B_BIN [ROUNDS]}
ROUNDS=${3:-3}
DURATION=${DURATION:-8s}
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
out=$(mktemp)
eps=127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603
# name | keel-bench run arguments
workloads=(
  "write64|--workload write --clients 64"
  "write1|--workload write --clients 1"
  "lin64|--workload read --clients 64"
  "stale64|--workload read --stale --clients 64"
  "health64|--workload health --clients 64"
)
if [ -n "${WORKLOADS:-}" ]; then
  chosen=()
  for w in "${workloads[@]}"; do
    for name in $WORKLOADS; do [ "${w%%|*}" = "$name" ] && chosen+=("$w"); done
  done
  if [ "${#chosen[@]}" -eq 0 ]; then
    echo "scripts/bench-ab.sh: WORKLOADS names none of write64 write1 lin64 stale64 health64" >&2
    exit 2
  fi
  workloads=("${chosen[@]}")
fi
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
  for which in $order; do
    if [ "$which" = A ]; then bin=$A; else bin=$B; fi
    if start_cluster "$bin"; then
      for w in "${workloads[@]}"; do
        name=${w%%|*}
        # shellcheck disable=SC2086
        row=$(target/release/keel-bench run --endpoints "$eps" ${w#*|} --duration "$DURATION" \
          --warmup 2s 2>/dev/null | tail -1)
        # | run | system | workload | mode | reads | clients | ops/s | p50 | ...
        ops=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$8); print $8}')
        p50=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$9); print $9}')
        echo "round $round $which $name ops/s=$ops p50_ms=$p50"
        if numbers "$ops" "$p50"; then
          echo "$which $name $ops $p50" >> "$out"
        else
          echo "round $round $which $name: no result, left out"
        fi
      done
    else
      echo "round $round $which: the cluster did not start (see $data/cluster.log)"
    fi
    stop_cluster
  done
done
echo
echo "medians (A: $A, B: $B)"
for w in "${workloads[@]}"; do
  name=${w%%|*}
  a=$(awk -v w="$name" '$1=="A" && $2==w {print $3}' "$out" | median)
  b=$(awk -v w="$name" '$1=="B" && $2==w {print $3}' "$out" | median)
  ap=$(awk -v w="$name" '$1=="A" && $2==w {print $4}' "$out" | median)
  bp=$(awk -v w="$name" '$1=="B" && $2==w {print $4}' "$out" | median)
  echo "$name: ops/s A $a  B $b  B/A $(ratio "$a" "$b")   p50 ms A $ap  B $bp  B/A $(ratio "$ap" "$bp")"
done
rm -f "$out"
