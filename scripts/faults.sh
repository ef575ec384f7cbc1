#!/usr/bin/env bash
# The long fault run: every profile (combined, crash, partition, five nodes, a 2-2 split of four,
# power loss), on schedules drawn from one printed seed (KEEL_FAULT_SEED=... replays them),
# KEEL_FAULTS_SECS seconds each (default 120), checked for linearizability, bank and set
# anomalies. Reports go to target/fault-reports/. Usage: scripts/faults.sh [seconds-per-profile]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --workspace --all-targets
export KEEL_BIN="$PWD/target/release/keel"
export KEEL_FAULTS_SECS="${1:-${KEEL_FAULTS_SECS:-120}}"
# --workspace, like the build above, so that features unify the same way and nothing is rebuilt
cargo test --release --workspace --test faults long_run_over_every_profile -- --ignored --nocapture
