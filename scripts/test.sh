#!/usr/bin/env bash
# Sets up what is missing and runs every check and test: formatting, clippy, unit tests,
# doc tests, and the multi-process cluster tests in tests/ (real keel processes, real RocksDB,
# real HTTP). One build profile (release) serves the tests, the cluster and the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step says how long the one before took (CI must stay well under 30 minutes).
started=$SECONDS
last=$SECONDS
step() {
  echo "== ($((SECONDS - last)) s) $1"
  last=$SECONDS
}
step "setup"
scripts/setup.sh

if cargo fmt --version >/dev/null 2>&1; then
  step "cargo fmt --check"
  cargo fmt --all -- --check
else
  echo "== SKIPPED cargo fmt: rustfmt is not installed" >&2
fi
if cargo clippy --version >/dev/null 2>&1; then
  step "cargo clippy"
  cargo clippy --release --workspace --all-targets -- -D warnings
else
  echo "== SKIPPED cargo clippy: clippy is not installed" >&2
fi
step "crate roles"
# The server never depends on the client, nor the client on the server (tests/tests/layout.rs
# checks the manifests; this is the same with cargo's own resolution).
if cargo tree -p keel-client | grep -q keel-server || cargo tree -p keel-server | grep -q keel-client; then
  echo "keel-client and keel-server depend on each other" >&2
  exit 1
fi
step "build"
cargo build --release --workspace --all-targets
# The fault suite's planted-bug build, never the default one: the same binary with the
# planted-bugs feature, kept as keel-planted (cargo recompiles keel-server and keel for it, about
# a minute and a half on two cores). The workspace's default keel is put back by copying it: a
# `cargo build -p keel` would compile them a third time (its dependencies' features differ from
# the workspace's).
cp target/release/keel target/release/keel-default
cargo build --release -p keel --features planted-bugs
cp target/release/keel target/release/keel-planted
# Unlinked first: target/release/keel is a hard link to cargo's own copy of the planted build,
# which a copy over it would overwrite.
rm -f target/release/keel
cp target/release/keel-default target/release/keel
step "tests"
# The cluster tests and the client's doc examples start real `keel server` processes.
export KEEL_BIN="$PWD/target/release/keel"
# The fault suite's seed: fixed in CI, so that a run is the schedule the planted bugs were seen
# caught on (set KEEL_FAULT_SEED to try another; scripts/faults.sh draws a fresh one).
export KEEL_FAULT_SEED="${KEEL_FAULT_SEED:-8987458752572237270}"
others=()
for f in tests/tests/*.rs; do
  name=$(basename "$f" .rs)
  [ "$name" = faults ] || others+=(--test "$name")
done
# Everything built first, with the exact package sets of the runs below (features resolve per
# set), so that they never compile at once.
cargo test --release --workspace --exclude keel-tests --no-run
cargo test --release -p keel-tests --lib "${others[@]}" --no-run
cargo test --release -p keel-tests --test faults --no-run
# The fault suite (tests/tests/faults.rs: about nine minutes, one fault run at a time) runs beside
# every other test, which then take one thread: at most two clusters share the two cores at any
# time, as with two test threads, and the suite's time no longer adds to theirs.
faults_out=$(mktemp)
# In a session of its own (setsid), so that the trap below stops all of it if this script ends
# first (interrupted, or failed): cargo, the test binary and the nodes it started. The session's
# id is $faults_pid only because this script runs without job control (no `set -m`: setsid then
# runs in the background child itself instead of forking again). A SIGKILL of this script (a
# CI timeout) runs no trap and does not reach the session either: a watchdog inside it sees
# this script gone (or a zombie) within two seconds and stops the session's whole process
# group, the nodes included (they inherit it).
setsid -w bash -c 'rc=0
  (exec >/dev/null 2>&1
   while state=$(cut -d" " -f3 "/proc/$2/stat") && [ "$state" != Z ]; do sleep 2; done
   kill -- -$$) &
  watchdog=$!
  RUST_TEST_THREADS=2 cargo test --release -p keel-tests --test faults >"$1" 2>&1 || rc=$?
  echo "$rc" >"$1.rc"
  kill "$watchdog" 2>/dev/null || true' _ "$faults_out" "$$" &
faults_pid=$!
trap 'kill -- -"$faults_pid" 2>/dev/null || true; rm -f "$faults_out" "$faults_out.rc"' EXIT
rest=0
RUST_TEST_THREADS="${RUST_TEST_THREADS:-1}" cargo test --release --workspace --exclude keel-tests || rest=$?
if [ "$rest" -eq 0 ]; then
  RUST_TEST_THREADS="${RUST_TEST_THREADS:-1}" cargo test --release -p keel-tests --lib "${others[@]}" || rest=$?
fi
wait "$faults_pid" || true
trap - EXIT
echo "== the fault suite (ran beside the tests above):"
cat "$faults_out"
faults_rc=$(cat "$faults_out.rc" 2>/dev/null || true)
rm -f "$faults_out" "$faults_out.rc"
# Anything but a recorded 0 (no file, an empty one) is a failure.
if [ "$rest" != 0 ] || [ "${faults_rc:-missing}" != 0 ]; then
  echo "tests failed (others: exit $rest, fault suite: exit $faults_rc)" >&2
  exit 1
fi
step "the cluster tests again, with TLS on both ports and tokens"
# The same tests on secure clusters (tests/src/secure.rs): certificates from `keel certs`,
# every request over https with a client certificate and the admin token.
KEEL_TEST_SECURE=1 RUST_TEST_THREADS="${RUST_TEST_THREADS:-2}" cargo test --release -p keel-tests \
  --test cluster_basic --test modes --test atomic --test client
step "fuzz: the peer frame decoder and the Raft message guard (AFL++, briefly)"
scripts/fuzz.sh "${KEEL_FUZZ_SECONDS:-30}"
step "docker compose test"
# Builds the image from this machine's files (no registry), runs the 3-node compose cluster
# through a disconnect and a restart; says SKIPPED when there is no Docker engine.
scripts/compose-test.sh
step "all tests passed in $((SECONDS - started)) s"
