//! Where the Ready loop compacts the Raft log to (a pure rule, tested on its own).

/// Where to compact the log to, if anywhere: half of `every` entries behind the applied index,
/// once `every` are applied since the last compaction (`truncated`; 0: never). The applied index
/// is the lower of raft-rs's and this loop's: raft-rs may hand out entries above its applied
/// index as committed (after a restart with data ahead of the log); compacting those stops it.
pub(super) fn compaction_point(
    every: u64,
    truncated: u64,
    raft_applied: u64,
    applied: u64,
) -> Option<u64> {
    let applied = raft_applied.min(applied);
    (every != 0 && applied > truncated.saturating_add(every)).then(|| applied - every / 2)
}

#[cfg(test)]
mod tests {
    use super::compaction_point;

    #[test]
    fn the_log_is_compacted_only_below_what_raft_rs_has_applied() {
        // Nothing before `every` entries are applied past the last compaction, nor with 0.
        assert_eq!(compaction_point(100, 0, 100, 100), None);
        assert_eq!(compaction_point(0, 0, 10_000, 10_000), None);
        assert_eq!(compaction_point(100, 0, 101, 101), Some(51));
        // The loop ahead of raft-rs (a restart with the data ahead of the log): raft-rs's index
        // rules, and nothing it has yet to hand out is compacted away.
        assert_eq!(compaction_point(100, 0, 150, 900), Some(100));
        assert_eq!(compaction_point(100, 400, 450, 900), None);
        // raft-rs ahead of the loop: the loop's.
        assert_eq!(compaction_point(100, 0, 900, 150), Some(100));
        // A huge period never wraps into a compaction.
        assert_eq!(compaction_point(u64::MAX, 5, 10, 10), None);
    }
}
