//! A graceful stop: wait for a signal, and hand leadership over first when leading.

use std::time::Duration;

use keel_api::cluster::Role;
use tracing::{info, warn};

use crate::raft::{Event, NodeHandle};

/// How long a leader stopping gracefully waits for its successor to take over.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// A leader that stops on purpose hands leadership to its most up-to-date voter first, so that
/// a planned restart costs no election timeout.
pub(super) async fn hand_over_leadership(node: &NodeHandle) {
    let Some(report) = node.status().await else {
        return;
    };
    if report.status.role != Role::Leader {
        return;
    }
    let Some(target) = report.best_successor() else {
        return;
    };
    info!(to = target, "handing leadership over before stopping");
    node.send(Event::TransferLeader(target));
    let moved = node
        .shared()
        .wait_leader(HANDOVER_WAIT, |l| l.is_some_and(|l| l != report.status.id))
        .await;
    if !moved {
        warn!("leadership did not move in time; stopping anyway");
    }
}

/// Resolves on SIGINT or SIGTERM.
pub(super) async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
