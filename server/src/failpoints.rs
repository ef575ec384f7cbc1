//! Failpoints: named places where the test build (`--features failpoints`, the fault suite's
//! `keel-planted` binary) can kill the node, delay or pause it, to check recovery from exactly
//! that point (tikv/fail-rs). In default builds every point compiles to nothing.
//!
//! A point is armed with fail-rs's action syntax, at start through the `FAILPOINTS`
//! environment variable (`FAILPOINTS="snapshot-installed=return"`), or on a running node through
//! `PUT /v1/admin/failpoints/{name}` with the actions as the body (that route exists only in
//! the test build). `return` at a crash point kills the process with SIGKILL: no unwinding, no
//! destructors, no flush, what a crash leaves. `sleep(ms)`, `pause`, `panic` act as fail-rs
//! documents.

/// The last chunk of an incoming snapshot is staged (before the Ready loop installs it).
pub const SNAPSHOT_STAGED: &str = "snapshot-staged";
/// A snapshot is installed (the state machine replaced, the log truncated) and the entries
/// after it are not yet appended.
pub const SNAPSHOT_INSTALLED: &str = "snapshot-installed";
/// A batch of a snapshot's staged data is copied into place, and the install is not finished
/// (the state machine holds part of the snapshot; the node must finish the install when it
/// starts).
pub const SNAPSHOT_COPYING: &str = "snapshot-copying";
/// A leader is about to read the state machine it streams as a snapshot (a `sleep` here lets
/// the data run ahead of the snapshot's metadata).
pub const SNAPSHOT_SEND: &str = "snapshot-send";
/// Committed entries are applied and the same Ready's entries and hard state are not yet
/// appended.
pub const APPLIED_BEFORE_APPEND: &str = "applied-before-append";
/// A membership change is applied to raft-rs and put in the apply batch, which is not yet
/// written.
pub const CONF_CHANGE_APPLIED: &str = "conf-change-applied";

/// Committed entries are about to be applied (a `sleep` here makes a node's state machine lag
/// behind what its leader answers).
pub const BEFORE_APPLY: &str = "before-apply";

/// Every point, for the admin endpoint's checks.
pub const ALL: [&str; 7] = [
    BEFORE_APPLY,
    SNAPSHOT_STAGED,
    SNAPSHOT_COPYING,
    SNAPSHOT_INSTALLED,
    SNAPSHOT_SEND,
    APPLIED_BEFORE_APPEND,
    CONF_CHANGE_APPLIED,
];

/// Evaluates the point `name`: with `return`, kills this process with SIGKILL.
#[inline]
pub fn crash_point(name: &str) {
    #[cfg(feature = "failpoints")]
    if fail::eval(name, |_| ()).is_some() {
        tracing::error!(failpoint = name, "failpoint: killing the process");
        // SAFETY: kill(2) on this very process with a valid signal number.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

/// Whether this build has failpoints.
pub const ENABLED: bool = cfg!(feature = "failpoints");

/// Arms the points named in `FAILPOINTS`, for the life of the returned guard.
#[cfg(feature = "failpoints")]
pub fn setup() -> fail::FailScenario<'static> {
    fail::FailScenario::setup()
}

/// Sets the actions of point `name` on a running node (empty or `off`: disarm).
pub fn configure(name: &str, actions: &str) -> Result<(), String> {
    if !ALL.contains(&name) {
        return Err(format!("no failpoint {name:?}; known: {}", ALL.join(", ")));
    }
    #[cfg(feature = "failpoints")]
    {
        if actions.trim().is_empty() || actions.trim() == "off" {
            fail::remove(name);
            return Ok(());
        }
        fail::cfg(name, actions)
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = actions;
        Err("this build has no failpoints".into())
    }
}
