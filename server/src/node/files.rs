//! The open-file budget: how many client connections a node may hold so that a flood of them
//! never takes the descriptors RocksDB, the peers and the node itself need.
//!
//! At start the node raises its soft open-file limit toward the hard one (what Go does for etcd),
//! then splits it: [`RESERVED_FILES`] for the node (the peer port's connections, listeners, the
//! write-ahead log, snapshot and backup files), a share for RocksDB's table files (its
//! `max_open_files`), and the rest for client connections, at most `--max-connections`. Without
//! the split, 1,024 descriptors and the default cap of 4,096 let a flood hold every descriptor:
//! `accept` failed and new clients were left unanswered, and RocksDB could fail to open a file
//! it had just written (a flush or a compaction), which stops the node.

/// Descriptors kept for the node's peers: connections not yet identified (the peer port's
/// pending slots), and the members' connections each way.
const PEER_FILES: u64 = crate::transport::MAX_PENDING_CONNECTIONS as u64
    + 2 * crate::transport::MAX_INBOUND_CONNECTIONS as u64;
/// Descriptors kept for the node itself: peers ([`PEER_FILES`]), and 128 for listeners, the
/// write-ahead log, manifest and info log, compaction outputs, snapshot and backup files (a
/// backup's checkpoint is opened with at most 64 table files), the runtime's own.
pub const RESERVED_FILES: u64 = PEER_FILES + 128;
/// Fewest client connections a node is started with.
pub const MIN_CONNECTIONS: u64 = 16;
/// Bounds of RocksDB's share (table files kept open).
const ROCKSDB_FILES: (u64, u64) = (64, 4096);

/// How the open-file limit is split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileBudget {
    /// RocksDB's `max_open_files`.
    pub rocksdb_files: i32,
    /// Client connections served at once.
    pub connections: usize,
}

/// Why a node cannot start with this open-file limit.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the open-file limit is {limit}, too low for a node: it needs at least {needed} \
     (raise it with `ulimit -n`, LimitNOFILE= or the container's nofile ulimit)"
)]
pub struct TooFewFiles {
    /// The limit in force.
    pub limit: u64,
    /// The least a node starts with.
    pub needed: u64,
}

/// The least open-file limit a node starts with.
pub const MIN_FILES: u64 = RESERVED_FILES + ROCKSDB_FILES.0 + MIN_CONNECTIONS;

/// Splits `limit` descriptors: RocksDB gets a quarter (within its bounds, and leaving
/// [`MIN_CONNECTIONS`]), the node [`RESERVED_FILES`], client connections the rest, at most
/// `max_connections`.
pub fn split(limit: u64, max_connections: usize) -> Result<FileBudget, TooFewFiles> {
    if limit < MIN_FILES {
        return Err(TooFewFiles {
            limit,
            needed: MIN_FILES,
        });
    }
    let rocksdb = (limit / 4)
        .clamp(ROCKSDB_FILES.0, ROCKSDB_FILES.1)
        .min(limit - RESERVED_FILES - MIN_CONNECTIONS);
    let room = limit - RESERVED_FILES - rocksdb;
    Ok(FileBudget {
        rocksdb_files: i32::try_from(rocksdb).unwrap_or(i32::MAX),
        connections: usize::try_from(room)
            .unwrap_or(usize::MAX)
            .min(max_connections),
    })
}

/// Raises the soft open-file limit to the hard one (or as near as the system allows) and returns
/// the soft limit in force (unlimited reads as `u64::MAX`; None if it cannot be read).
pub fn raise_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        // Where the hard limit cannot be the soft one (an infinite hard limit on macOS, whose
        // soft limit stops at 10,240), the most that can.
        for want in [lim.rlim_max, lim.rlim_max.min(10_240)] {
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit reads the struct it is given, which lives for the call.
            if want > lim.rlim_cur && unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0
            {
                lim.rlim_cur = want;
                break;
            }
        }
    }
    Some(if lim.rlim_cur == libc::RLIM_INFINITY {
        u64::MAX
    } else {
        lim.rlim_cur
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_split_between_rocksdb_the_node_and_clients() {
        // A generous limit: the cap as asked, RocksDB at its upper bound.
        let b = split(1 << 20, 4096).expect("enough");
        assert_eq!((b.rocksdb_files, b.connections), (4096, 4096));
        // Debian's usual soft limit: fewer connections than asked, and all three fit.
        let b = split(1024, 4096).expect("enough");
        assert_eq!(RESERVED_FILES, 512);
        assert_eq!((b.rocksdb_files, b.connections), (256, 256));
        assert!(RESERVED_FILES + b.rocksdb_files as u64 + b.connections as u64 <= 1024);
        // A cap below the room is kept.
        assert_eq!(split(1024, 40).map(|b| b.connections), Ok(40));
        // The least limit that serves the default cap, and one less.
        assert_eq!(split(6143, 4096).map(|b| b.connections), Ok(4096));
        assert_eq!(split(6142, 4096).map(|b| b.connections), Ok(4095));
        // `--max-connections` + RESERVED_FILES + 4,096 always serves the cap.
        for asked in [1usize, 4096, 10_000, 100_000] {
            let limit = asked as u64 + RESERVED_FILES + 4096;
            assert_eq!(
                split(limit, asked).map(|b| b.connections),
                Ok(asked),
                "{asked}"
            );
        }
        // Unlimited.
        assert_eq!(split(u64::MAX, 4096).map(|b| b.connections), Ok(4096));
        // Too few to start: a clear refusal naming the least that works.
        assert_eq!(
            split(MIN_FILES - 1, 4096),
            Err(TooFewFiles {
                limit: MIN_FILES - 1,
                needed: MIN_FILES
            })
        );
        let b = split(MIN_FILES, 4096).expect("just enough");
        assert_eq!(b.connections, MIN_CONNECTIONS as usize);
        assert_eq!(
            RESERVED_FILES + b.rocksdb_files as u64 + b.connections as u64,
            MIN_FILES
        );
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let read = || {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: as in raise_limit.
            assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
            lim
        };
        let hard = read().rlim_max;
        // Lowered first (to what the other tests of this process still have room in), so that
        // the raise has something to do.
        let lowered = libc::rlimit {
            rlim_cur: hard.min(4096),
            rlim_max: hard,
        };
        // SAFETY: setrlimit reads the struct it is given, which lives for the call.
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) }, 0);
        let soft = raise_limit().expect("readable");
        let after = read();
        assert_eq!(after.rlim_max, hard, "the hard limit moved");
        if hard != libc::RLIM_INFINITY {
            assert_eq!(
                (after.rlim_cur, soft),
                (hard, hard),
                "not raised to the hard limit"
            );
        }
    }
}
