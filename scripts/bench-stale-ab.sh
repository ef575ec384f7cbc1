#!/usr/bin/env bash
# Stale reads and GET /health of two keel binaries, alternating: for each round and binary (the
# order alternating from round to round) a fresh local 3-node cluster, 16 writers for 4 s, then
# 64 clients of stale reads and of /health for 8 s each. Prints one line per run.
# Usage: scripts/bench-stale-ab.sh A_BIN B_BIN [ROUNDS] (after `cargo build --release --workspace`)
set -u
A=${1:?usage: scripts/bench-stale-ab.sh A_BIN B_BIN [ROUNDS]}
B=${2:?usage: scripts/bench-stale-ab.sh A_BIN B_BIN [ROUNDS]}
ROUNDS=${3:-4}
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
eps=127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
  for which in $order; do
    if [ "$which" = A ]; then bin=$A; else bin=$B; fi
    start_cluster "$bin" || { echo "round $round $which: the cluster did not start"; continue; }
    target/release/keel-bench run --endpoints "$eps" --workload write --clients 16 \
      --duration 4s --warmup 1s >/dev/null 2>&1
    for w in "read --stale" "health"; do
      # shellcheck disable=SC2086
      row=$(target/release/keel-bench run --endpoints "$eps" --workload $w --clients 64 \
        --duration 8s --warmup 2s 2>/dev/null | tail -1)
      ops=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$8); print $8}')
      echo "round $round $which ${w// /} ops/s=$ops"
    done
    stop_cluster
  done
done
