# Shared by the A/B benchmark scripts (sourced, not run): a local 3-node cluster on ports
# 7601-7603 and the median of a column of numbers.

# Waits until the cluster started as process $1 (`keel cluster --base-port 7601`) answers
# /ready on all three nodes; fails after 60 s or as soon as that process is gone (so that
# another program on these ports is never benchmarked instead).
wait_ready() {
  local cpid=$1
  for _ in $(seq 1 120); do
    kill -0 "$cpid" 2>/dev/null || return 1
    if curl -sf -m 2 http://127.0.0.1:7601/ready >/dev/null && curl -sf -m 2 http://127.0.0.1:7602/ready >/dev/null \
      && curl -sf -m 2 http://127.0.0.1:7603/ready >/dev/null; then return 0; fi
    sleep 0.5
  done
  return 1
}

# Starts a local 3-node cluster with the command in "$@" (a keel binary, possibly behind `env`)
# in a new temporary directory $data, its process in $cpid; fails if it does not become ready.
start_cluster() {
  local port
  data= cpid=
  for port in 7601 7602 7603 7701 7702 7703; do
    # Another program on these ports would answer /ready and be benchmarked instead.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "start_cluster: port $port is in use (a cluster left running?)" >&2
      return 1
    fi
  done
  data=$(mktemp -d)
  "$@" cluster --nodes 3 --data-dir "$data" --base-port 7601 > "$data/cluster.log" 2>&1 &
  cpid=$!
  wait_ready "$cpid"
}

# Stops the cluster of start_cluster and removes its directory.
stop_cluster() {
  if [ -n "${cpid:-}" ]; then kill "$cpid" 2>/dev/null; wait "$cpid" 2>/dev/null; fi
  if [ -n "${data:-}" ]; then rm -rf "$data"; fi
  data= cpid=
}

# Whether every argument is a number (a failed keel-bench run prints no result row).
numbers() {
  local v
  for v in "$@"; do [[ "$v" =~ ^[0-9]+(\.[0-9]+)?$ ]] || return 1; done
}

# The median of the numbers on standard input, one per line ("-" when there are none).
median() {
  sort -n | awk '{v[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print v[(NR+1)/2]; else print (v[NR/2]+v[NR/2+1])/2}'
}

# b / a to three places ("-" when a is not positive).
ratio() {
  awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0) printf "%.3f", b / a; else print "-" }'
}
