#!/usr/bin/env bash
# CPU per operation of two keel binaries at a fixed offered load (steadier than throughput at
# saturation on a shared 2-core machine): for each round and each binary (the order alternating
# from round to round), a fresh local 3-node cluster, then keel-bench runs of linearizable reads
# and of semi writes at fixed rates, reporting the three nodes' CPU ms per 1,000 operations
# (user + system, from /proc) and the medians.
# Usage: scripts/bench-cpu-ab.sh A_BIN B_BIN [ROUNDS] (after `cargo build --release --workspace`)
# Environment: READ_RATE (8000, linearizable and stale reads), WRITE_RATE (3000), DURATION (10s),
# WORKLOADS ("read write"; "stale" adds stale reads).
set -u
A=${1:?usage: scripts/bench-cpu-ab.sh A_BIN B_BIN [ROUNDS]}
B=${2:?usage: scripts/bench-cpu-ab.sh A_BIN B_BIN [ROUNDS]}
ROUNDS=${3:-4}
READ_RATE=${READ_RATE:-8000}
WRITE_RATE=${WRITE_RATE:-3000}
DURATION=${DURATION:-10s}
WORKLOADS=${WORKLOADS:-read write}
cd "$(dirname "$0")/.."
. scripts/bench-common.sh
out=$(mktemp)
for round in $(seq 1 "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
  for which in $order; do
    if [ "$which" = A ]; then bin=$A; else bin=$B; fi
    ready=no
    start_cluster "$bin" && ready=yes
    pids=$(pgrep -P "$cpid" | paste -sd, -)
    if [ "$ready" = yes ] && [ -n "$pids" ]; then
      for wl in $WORKLOADS; do
        if [ "$wl" = write ]; then rate=$WRITE_RATE; else rate=$READ_RATE; fi
        args=(--workload "$wl")
        if [ "$wl" = stale ]; then args=(--workload read --stale); fi
        row=$(target/release/keel-bench run --endpoints 127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603 \
          "${args[@]}" --clients 32 --rate "$rate" --duration "$DURATION" --warmup 3s --pids "$pids" 2>/dev/null | tail -1)
        # | run | system | workload | mode | reads | clients | ops/s | p50 | p90 | p99 | max | errors | cpu |
        ops=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$8); print $8}')
        p50=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$9); print $9}')
        cpu=$(echo "$row" | awk -F'|' '{gsub(/ /,"",$14); print $14}')
        echo "round $round $which $wl ops/s=$ops p50_ms=$p50 cpu_ms_per_1k=$cpu"
        echo "$which $wl $cpu" >> "$out"
      done
    else
      echo "round $round $which: the cluster did not start (see $data/cluster.log)"
    fi
    stop_cluster
  done
done
echo
echo "medians of CPU ms per 1,000 operations (A: $A, B: $B)"
for wl in $WORKLOADS; do
  a=$(awk -v w="$wl" '$1=="A" && $2==w {print $3}' "$out" | median)
  b=$(awk -v w="$wl" '$1=="B" && $2==w {print $3}' "$out" | median)
  echo "$wl: A $a  B $b  B/A $(ratio "$a" "$b")"
done
rm -f "$out"
