//! The install gate: reads of the state machine are refused while a snapshot is copied into
//! place.
//!
//! A snapshot install empties the state machine in one synced write and then copies the staged
//! data in in bounded batches ([`crate::snapshot::stage`]), so that a node's memory does not grow
//! with the data. In between, the column families hold neither the old state nor the new one: a
//! read then would answer from a state that never existed. The gate is a sequence counter (a
//! seqlock without data of its own): the install makes it odd while it runs and even again when
//! it is done; a read notes the counter before it starts and succeeds only if it finds the same
//! even value after it is done. Reads never wait: a refused read is
//! [`StorageError::Installing`] (503 `not_ready`), which a client retries on another member.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::storage::StorageError;

/// The gate; one per node, shared by the readers and the Ready loop.
#[derive(Debug, Default)]
pub struct InstallGate {
    /// Odd while an install runs; moves on by two per install.
    epoch: AtomicU64,
}

/// A closed gate; only [`Closed::open`] opens it again, so an install that failed halfway leaves
/// reads refused.
#[must_use = "the gate stays closed until open() is called"]
pub struct Closed<'a>(&'a InstallGate);

impl InstallGate {
    /// Runs `read` and returns its answer if no install overlapped it.
    pub fn read<T>(
        &self,
        read: impl FnOnce() -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let before = self.epoch.load(Ordering::SeqCst);
        if before % 2 == 1 {
            return Err(StorageError::Installing);
        }
        let answer = read();
        if self.epoch.load(Ordering::SeqCst) != before {
            return Err(StorageError::Installing);
        }
        answer
    }

    /// Closes the gate for an install (through [`super::StateMachine::close_for_install`],
    /// which also empties the value cache).
    pub(super) fn close(&self) -> Closed<'_> {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        Closed(self)
    }

    /// Whether an install runs.
    pub fn is_closed(&self) -> bool {
        self.epoch.load(Ordering::SeqCst) % 2 == 1
    }
}

impl Closed<'_> {
    /// Opens the gate: the install is done.
    pub fn open(self) {
        self.0.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_that_overlaps_an_install_is_refused() {
        let gate = InstallGate::default();
        assert_eq!(gate.read(|| Ok(1)).expect("open gate"), 1);
        // An install starts and ends while the read runs: the read saw a mix, refused.
        let overlapped = gate.read(|| {
            gate.close().open();
            Ok(2)
        });
        assert!(matches!(overlapped, Err(StorageError::Installing)));
        // A read that starts during an install is refused at once, without reading.
        let closed = gate.close();
        let mut ran = false;
        let during = gate.read(|| {
            ran = true;
            Ok(3)
        });
        assert!(matches!(during, Err(StorageError::Installing)) && !ran);
        // An install that fails leaves the gate closed.
        drop(closed);
        assert!(gate.is_closed());
        assert!(matches!(gate.read(|| Ok(4)), Err(StorageError::Installing)));
    }

    #[test]
    fn an_install_that_ends_lets_reads_through_again() {
        let gate = InstallGate::default();
        gate.close().open();
        assert!(!gate.is_closed());
        assert_eq!(gate.read(|| Ok(5)).expect("open again"), 5);
    }
}
