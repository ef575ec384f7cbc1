#!/usr/bin/env bash
# The most any Raft log engine could give keel's writes here: the same closed-loop write runs
# against keel as built (A) and against the planted build with `skip-fsync` (B: the log and
# hard state written without any fsync, a log whose persistence costs nothing). Each round and
# each build (order alternating) gets a fresh local 3-node cluster; 64 clients, then 1 client,
# semi writes of 100 bytes over all nodes; medians of ops/s and p50 over the rounds.
# B is NOT durable: it is a bound, never a configuration.
# Usage: scripts/bench-log-bound.sh [ROUNDS] (after scripts/test.sh's builds, which leave
# target/release/keel and target/release/keel-planted)
# Environment: DURATION (10s).
set -u
ROUNDS=${1:-3}
DURATION=${DURATION:-10s}
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
out=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
  for which in $order; do
    if [ "$which" = A ]; then bin=(target/release/keel); else
      bin=(env KEEL_PLANTED_BUG=skip-fsync target/release/keel-planted); fi
    ready=no
    start_cluster "${bin[@]}" && ready=yes
    if [ "$ready" = yes ]; then
      for clients in 64 1; do
        row=$(target/release/keel-bench run --endpoints 127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603 \
          --workload write --clients "$clients" --duration "$DURATION" --warmup 2s 2>/dev/null | tail -1)
        # | run | system | workload | mode | reads | clients | ops/s | p50 | p90 | p99 | max | errors | cpu |
        ops=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$8); print $8}')
        p50=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$9); print $9}')
        echo "round $round $which clients=$clients ops/s=$ops p50_ms=$p50"
        # A failed run prints no result row: kept out of the medians.
        if numbers "$ops" "$p50"; then
          echo "$which $clients $ops $p50" >> "$out"
        else
          echo "round $round $which clients=$clients: no result, left out"
        fi
      done
    else
      echo "round $round $which: the cluster did not start (see $data/cluster.log)"
    fi
    stop_cluster
  done
done
echo
echo "medians over $ROUNDS rounds (A: keel; B: the log without fsync)"
for clients in 64 1; do
  for col in 3 4; do
    a=$(awk -v c="$clients" -v k="$col" '$1=="A" && $2==c {print $k}' "$out" | median)
    b=$(awk -v c="$clients" -v k="$col" '$1=="B" && $2==c {print $k}' "$out" | median)
    name=$([ "$col" = 3 ] && echo "ops/s" || echo "p50 ms")
    echo "$clients clients, $name: A $a  B $b  B/A $(ratio "$a" "$b")"
  done
done
rm -f "$out"
