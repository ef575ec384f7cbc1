//! # forward: write routing
//!
//! This stage decides where a client write is proposed: here when this node leads, otherwise on
//! the leader, to which it is forwarded over the peer transport and whose answer is relayed
//! (`router.rs`); on the leader, forwarded writes are proposed and answered (`serve.rs`). It may
//! touch the Ready loop's handle and the transport; it never looks inside a command.
//!
//! A forwarded write carries its mode, so the leader answers at the point the client asked for,
//! and the client request's id ([`REQUEST_ID`]), so that the leader's log lines about it say
//! which request it was.
//! Only errors that prove the write was not applied ([`WriteError::certainly_not_applied`]: no
//! leader, not the leader, dropped) are retried here, a bounded number of times within the
//! request deadline; a timeout without an answer is `outcome_unknown`, never retried.

mod router;
mod serve;

pub use router::{Router, MAX_FORWARDED_WRITES};

tokio::task_local! {
    /// The id of the client request being served (set by the HTTP handler, as the header
    /// value it answers with: cloning it costs no allocation), carried with a forwarded write
    /// to the leader's log lines.
    pub static REQUEST_ID: hyper::header::HeaderValue;
}

/// The id of the request this task serves, if any, as the header value the HTTP handler set.
pub fn current_request_id_value() -> Option<hyper::header::HeaderValue> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// The id of the request this task serves, if any (empty when none).
pub fn current_request_id() -> String {
    REQUEST_ID
        .try_with(|v| v.to_str().map(str::to_owned).unwrap_or_default())
        .unwrap_or_default()
}
