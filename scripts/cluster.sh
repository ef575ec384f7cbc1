#!/usr/bin/env bash
# Sets up what is missing, builds keel and starts the local 3-node cluster (Ctrl-C stops it).
# Extra arguments go to `keel cluster` (for example --data-dir DIR, --base-port N).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release -p keel --bin keel
exec target/release/keel cluster --nodes 3 "$@"
