#!/usr/bin/env bash
# Installs what keel needs to build and test on a fresh Debian machine, and nothing that is
# already there: protoc (raft-rs's build), libclang (bindgen for rust-rocksdb), Debian's
# librocksdb-dev (linked instead of compiling the bundled RocksDB, which takes ~25 minutes on two
# cores; .cargo/config.toml points ROCKSDB_LIB_DIR at it), iproute2/iptables for the
# fault-injection tests, fuse3 (fusermount3) when not root, for the power-loss tests, promtool
# (Debian's prometheus) to check the metrics and the scrape config, and chromium for the
# dashboard's browser test.
# Set KEEL_WITH_ETCD=1 to also install etcd for the side-by-side benchmark.
set -euo pipefail

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || need+=(libclang-dev)
[ -e /usr/lib/x86_64-linux-gnu/librocksdb.so ] || need+=(librocksdb-dev)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
command -v prlimit >/dev/null 2>&1 || need+=(util-linux)  # limits.rs runs nodes under a low open-file limit
# The power-loss tests mount FUSE file systems: directly as root, through fusermount3 otherwise.
[ "$(id -u)" = 0 ] || command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ "${KEEL_WITH_ETCD:-0}" = 1 ]; then
  command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
fi

if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) and run this again" >&2
  exit 1
fi
