//! `GET /v1/watch`: the change feed as Server-Sent Events (SPEC §9). The handler checks the
//! filter, the start and the caller's rights, answers 410 when the start is older than this
//! node's history, and hands the stream to a [`Watcher`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::HeaderMap;
use keel_api::ErrorCode;

use super::auth::{Caller, Role};
use super::error::ApiError;
use super::reply::{Answer, Reply};
use super::request::{validate_key, Query};
use super::Api;
use crate::watch::{Filter, Start, Watcher};

/// Progress events of an idle watch, unless `progress_ms` says otherwise.
pub const DEFAULT_PROGRESS: Duration = Duration::from_secs(5);
/// The most often (and least often) a watch may ask for progress events, in milliseconds.
const PROGRESS_RANGE_MS: std::ops::RangeInclusive<u64> = 100..=5_000;

impl Api {
    /// `GET /v1/watch?prefix=P|key=K[&from_index=N][&progress_ms=M]`, resumed with
    /// `Last-Event-ID`.
    pub(super) fn watch(&self, headers: &HeaderMap, q: Query, caller: &Caller) -> Answer {
        let filter = match (q.key, q.prefix) {
            (Some(_), Some(_)) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    "a watch follows a key or a prefix, not both",
                ))
            }
            (Some(key), None) => {
                validate_key(&key)?;
                Filter::Key(key)
            }
            (None, prefix) => Filter::Prefix(prefix.unwrap_or_default()),
        };
        may_read(caller, &filter)?;
        let progress = match q.progress_ms {
            None => DEFAULT_PROGRESS,
            Some(ms) if PROGRESS_RANGE_MS.contains(&ms) => Duration::from_millis(ms),
            Some(ms) => {
                return Err(ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "progress_ms must be between {} and {}, not {ms}",
                        PROGRESS_RANGE_MS.start(),
                        PROGRESS_RANGE_MS.end()
                    ),
                ))
            }
        };
        // A reconnecting client's Last-Event-ID wins over the from_index of the URL it reuses.
        let start = match headers.get("last-event-id") {
            Some(v) => v
                .to_str()
                .ok()
                .and_then(Start::from_event_id)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidHeader,
                        "Last-Event-ID must be an event id of a watch: N or N.P",
                    )
                })?,
            None => Start {
                after: match q.from_index {
                    Some(n) => n.saturating_sub(1),
                    None => self.feed.head(),
                },
                skip: None,
            },
        };
        let mut start = start;
        if headers.contains_key("last-event-id")
            && crate::planted::active(crate::planted::Bug::WatchResumeSkip)
        {
            start.after = start.after.saturating_add(1);
        }
        // Exact: read from the database, not the published copy (which may lag a trim).
        let oldest = self.sm.history_start()?;
        if start.after < self.feed.covers_after() && start.after < oldest {
            let mut err = ApiError::new(
                ErrorCode::Compacted,
                format!(
                    "this node keeps the changes of index {} on; the watch starts after {}",
                    oldest.saturating_add(1),
                    start.after
                ),
            );
            err.body.oldest_index = Some(oldest.saturating_add(1));
            return Err(err);
        }
        let mut watcher = Watcher::new(
            self.sm.clone(),
            self.feed.clone(),
            filter.clone(),
            start,
            progress,
        );
        // The token is checked again while the stream runs: a token revoked (or narrowed) in the
        // auth file ends the watch at its next turn (at the latest its next progress event).
        // Only when a reload has put new tokens in force: the generation last found allowing it
        // (none yet: the caller's grant may predate a reload) saves a scan of every token at
        // every turn. A reload between reading the generation and the check only means one
        // more check next turn.
        if let (Some(tokens), Some(grant)) = (&self.tokens, &caller.0) {
            let (tokens, grant) = (tokens.clone(), grant.clone());
            let allowed_in = AtomicU64::new(u64::MAX);
            watcher = watcher.allowed_while(move || {
                let generation = tokens.generation();
                if allowed_in.load(Ordering::Acquire) == generation {
                    return true;
                }
                let ok = tokens.still_allows(&grant, |now| may_read(now, &filter).is_ok());
                if ok {
                    allowed_in.store(generation, Ordering::Release);
                }
                ok
            });
        }
        Ok(Reply::events(watcher, start.after))
    }
}

/// Whether `caller` may read what `filter` follows: checked when a watch opens and again while
/// it runs.
fn may_read(caller: &Caller, filter: &Filter) -> Result<(), ApiError> {
    match filter {
        Filter::Key(k) => caller.need_key(Role::Read, k),
        Filter::Prefix(p) => caller.need_prefix(Role::Read, p),
    }
}
