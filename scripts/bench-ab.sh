#!/usr/bin/env bash
# A/B of two keel binaries on this machine: for each, a fresh local 3-node cluster, then
# keel-bench's write and read runs (64 clients, 8 s); two rounds, alternating.
# Usage: scripts/bench-ab.sh BEFORE_BIN AFTER_BIN   (after `cargo build --release --workspace`)
set -u
BEFORE=${1:?usage: scripts/bench-ab.sh BEFORE_BIN AFTER_BIN}
AFTER=${2:?usage: scripts/bench-ab.sh BEFORE_BIN AFTER_BIN}
cd "$(dirname "$0")/.."
for round in 1 2; do
  for bin in "$BEFORE" "$AFTER"; do
    data=$(mktemp -d)
    $bin cluster --nodes 3 --data-dir "$data" --base-port 7601 > "$data/cluster.log" 2>&1 &
    cpid=$!
    for i in $(seq 1 60); do curl -sf http://127.0.0.1:7601/ready >/dev/null && curl -sf http://127.0.0.1:7602/ready >/dev/null && curl -sf http://127.0.0.1:7603/ready >/dev/null && break; sleep 0.5; done
    for wl in write read; do
      out=$(target/release/keel-bench run --endpoints 127.0.0.1:7601,127.0.0.1:7602,127.0.0.1:7603 --workload $wl --clients 64 --duration 8s --warmup 2s 2>/dev/null | tail -1)
      echo "round $round $bin $wl: $out"
    done
    kill $cpid; wait $cpid 2>/dev/null
    rm -rf "$data"
    sleep 1
  done
done
