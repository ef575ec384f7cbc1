//! Waiting on a cluster for what a test needs before it goes on.

use std::time::Duration;

use crate::{wait_until, Cluster, Resp};

impl Cluster {
    /// Waits until node `id` answers a stale read of `key` at `min_index` with 200 (it has
    /// applied that index), and returns the answer.
    pub fn wait_read_at(&self, id: u64, key: &str, min_index: u64, timeout: Duration) -> Resp {
        wait_until(
            timeout,
            &format!("node {id} to read {key} at index {min_index}"),
            || {
                let r = self
                    .get(
                        id,
                        &format!("{key}?consistency=stale&min_index={min_index}"),
                    )
                    .ok()?;
                (r.status == 200).then_some(r)
            },
        )
    }
}
