#!/usr/bin/env bash
# The docker-compose test: build the image (no registry), bring the 3-node cluster up, write and
# read through every published port, disconnect the leader's container from the network and check
# that the others elect a leader and keep taking writes, reconnect it and check it catches up,
# stop and start every container and check the data is still there, then tear down.
# Prints "compose test: SKIPPED" (and exits 0) when no Docker engine is available.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker info >/dev/null 2>&1; then
  echo "compose test: SKIPPED (no Docker engine here)"
  exit 0
fi
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  echo "compose test: SKIPPED (Docker engine but no compose tool)"
  exit 0
fi

project=keelcomposetest
export KEEL_PORT_1="${KEEL_PORT_1:-17001}" KEEL_PORT_2="${KEEL_PORT_2:-17002}" KEEL_PORT_3="${KEEL_PORT_3:-17003}"
ports=("$KEEL_PORT_1" "$KEEL_PORT_2" "$KEEL_PORT_3")
keel=target/release/keel
dc() { "${compose[@]}" -p "$project" "$@"; }
cleanup() { dc down -v --remove-orphans >/dev/null 2>&1 || true; }
fail() { echo "compose test: FAILED: $*" >&2; dc ps >&2 || true; dc logs --tail 40 >&2 || true; exit 1; }

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND until it succeeds, at most SECONDS.
wait_for() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for $what"
    sleep 0.5
  done
}
k() { local port=$1; shift; "$keel" --direct --endpoints "127.0.0.1:$port" "$@"; }
# sed reads the whole status (no `head`): a reader that stops early would make keel's writes fail
# with a broken pipe, and with pipefail that failed this script once (exit 101).
leader_of() { k "$1" status 2>/dev/null | sed -n '1s/.*leader Some(\([0-9]*\)).*/\1/p'; }
has_leader() { [ -n "$(leader_of "$1")" ]; }
container() { docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=keel$1"; }
network() { docker network ls -q --filter "label=com.docker.compose.project=$project" | sed -n 1p; }
get_is() { [ "$(k "$1" get "$2" 2>/dev/null)" = "$3" ]; }

scripts/docker-image.sh keel:local
cleanup
trap cleanup EXIT
dc up -d

# 1. Up, with a leader known everywhere.
for p in "${ports[@]}"; do wait_for "node on port $p to have a leader" 90 has_leader "$p"; done
echo "cluster up; node $(leader_of "${ports[0]}") leads"

# 2. A write through every published port is readable through every port.
for p in "${ports[@]}"; do wait_for "a write through port $p" 30 k "$p" put "from-$p" "value-$p"; done
for p in "${ports[@]}"; do for q in "${ports[@]}"; do
  wait_for "from-$q on port $p" 30 get_is "$p" "from-$q" "value-$q"
done; done
echo "writes through every port readable through every port"

# 3. Disconnect the leader's container from the network.
old=$(leader_of "${ports[0]}")
[ -n "$old" ] || fail "no leader"
net=$(network)
docker network disconnect "$net" "$(container "$old")"
others=()
for i in 1 2 3; do [ "$i" != "$old" ] && others+=("${ports[$((i - 1))]}"); done
new_leader() { local l; l=$(leader_of "$1"); [ -n "$l" ] && [ "$l" != "$old" ]; }
for p in "${others[@]}"; do wait_for "a new leader seen on port $p" 60 new_leader "$p"; done
for p in "${others[@]}"; do wait_for "a write through port $p without node $old" 30 k "$p" put "during-$p" "partitioned"; done
echo "node $old disconnected; node $(leader_of "${others[0]}") leads and takes writes"

# 4. Reconnect it: it catches up.
docker network connect --alias "keel$old" "$net" "$(container "$old")"
oldport=${ports[$((old - 1))]}
for p in "${others[@]}"; do wait_for "node $old to catch up with during-$p" 60 get_is "$oldport" "during-$p" "partitioned"; done
echo "node $old reconnected and caught up"

# 5. Stop and start every container: the data is still there.
dc stop
dc start
for p in "${ports[@]}"; do wait_for "node on port $p to have a leader after restart" 90 has_leader "$p"; done
for p in "${ports[@]}"; do
  for q in "${ports[@]}"; do wait_for "from-$q after restart on port $p" 30 get_is "$p" "from-$q" "value-$q"; done
done
echo "stopped and started: data intact"

# 6. The secure variant (docker-compose.secure.yml): TLS on both ports and tokens, on fresh
# volumes. Certificates from `keel certs` for the containers' names and the host's address.
dc down -v --remove-orphans >/dev/null 2>&1
secure_dir=$(mktemp -d)
trap 'cleanup; rm -rf "$secure_dir"' EXIT
"$keel" certs --dir "$secure_dir" --nodes 3 --host keel1 --host keel2 --host keel3 \
  --host 127.0.0.1 --host localhost >/dev/null
token=compose-test-token-$RANDOM$RANDOM$RANDOM
(umask 077; echo '{"tokens":[{"name":"admin","token":"'"$token"'","role":"admin"}]}' >"$secure_dir/auth.json")
export KEEL_SECURE_DIR="$secure_dir"
dcs() { dc -f docker-compose.yml -f docker-compose.secure.yml "$@"; }
dcs up -d
ks() { local port=$1; shift; KEEL_TOKEN="$token" "$keel" --ca "$secure_dir/ca.pem" --direct --endpoints "127.0.0.1:$port" "$@"; }
secure_leader() { ks "$1" status 2>/dev/null | sed -n 1p | grep -q 'leader Some('; }
secure_get_is() { [ "$(ks "$1" get "$2" 2>/dev/null)" = "$3" ]; }
for p in "${ports[@]}"; do wait_for "secure node on port $p to have a leader" 90 secure_leader "$p"; done
for p in "${ports[@]}"; do wait_for "a secure write through port $p" 30 ks "$p" put "tls-$p" "v-$p"; done
for p in "${ports[@]}"; do for q in "${ports[@]}"; do
  wait_for "tls-$q on port $p" 30 secure_get_is "$p" "tls-$q" "v-$q"
done; done
plain=$("$keel" --direct --endpoints "127.0.0.1:${ports[0]}" get "tls-${ports[0]}" 2>&1 || true)
case "$plain" in *tls_required*) ;; *) fail "plain HTTP on the TLS port: $plain" ;; esac
notoken=$("$keel" --ca "$secure_dir/ca.pem" --direct --endpoints "127.0.0.1:${ports[0]}" get "tls-${ports[0]}" 2>&1 || true)
case "$notoken" in *unauthorized*) ;; *) fail "no token on the secure cluster: $notoken" ;; esac
echo "secure variant: TLS and tokens on, writes readable through every port, plain HTTP and no token refused"

echo "compose test: PASSED"
