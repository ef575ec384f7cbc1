//! What a node publishes about itself, read by the tests: `/v1/status` and `/metrics`.

use serde_json::Value;

use crate::Cluster;

impl Cluster {
    /// The value of the unlabelled metric `name` on node `id` (`/metrics`), if it answers and
    /// has it.
    pub fn metric(&self, id: u64, name: &str) -> Option<u64> {
        let r = self.request(id, "GET", "/metrics", &[], None).ok()?;
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The node's `/v1/status` JSON, if it answers.
    pub fn status(&self, id: u64) -> Option<Value> {
        let r = self.request(id, "GET", "/v1/status", &[], None).ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Whether node `id` answers that it is the leader.
    pub fn leads(&self, id: u64) -> bool {
        self.status(id).is_some_and(|s| s["role"] == "leader")
    }
}
