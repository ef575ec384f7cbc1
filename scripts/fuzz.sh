#!/usr/bin/env bash
# Fuzzes the peer port (fuzz/src/peer_frames.rs): arbitrary frames through keel's decoder, the
# Ready loop's guard, and a real raft-rs node stepping what the guard admits. Builds the target
# with cargo-afl (installed if missing; it builds its own AFL++), runs AFL++ for SECONDS
# (default 60) from fuzz/seeds, and fails if a crash was saved, printing each crash's panic.
# The target depends on keel-server without its `node` feature (the frames, the decoder and the
# guard only): instrumenting the whole node took 5 min 49 s on a fresh machine, this 1 min 51 s.
# Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
if ! command -v cargo-afl >/dev/null 2>&1; then
  echo "== installing cargo-afl (once per machine)"
  # A debug build of the wrapper: it only runs cargo and AFL++ (about 10 s less to compile).
  cargo install --locked --debug cargo-afl
fi
(cd fuzz && cargo afl build --release)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "== AFL++ on the peer frame decoder and guard for ${secs}s"
AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
  cargo afl fuzz -V "$secs" -i fuzz/seeds -o "$out" fuzz/target/release/peer_frames >"$out/log" 2>&1 || {
  tail -20 "$out/log" >&2
  echo "fuzz: AFL++ did not run" >&2
  exit 1
}
grep -a "Statistics" "$out/log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g'
shopt -s nullglob
crashes=("$out"/default/crashes/id*)
if ((${#crashes[@]} > 0)); then
  echo "fuzz: ${#crashes[@]} crashes; the first ones:" >&2
  for f in "${crashes[@]:0:5}"; do
    fuzz/target/release/peer_frames <"$f" 2>&1 | grep -m1 -A1 "panicked at" >&2 || true
    mkdir -p fuzz/crashes && cp "$f" fuzz/crashes/
  done
  echo "(inputs kept in fuzz/crashes; replay: fuzz/target/release/peer_frames < FILE)" >&2
  exit 1
fi
echo "fuzz: no crash"
