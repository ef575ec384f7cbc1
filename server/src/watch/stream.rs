//! One watcher: its filter and position, and the Server-Sent Events it produces, one chunk at
//! a time, only when its connection asks for more (so a watcher that does not read holds no
//! more than its socket's buffers).
//!
//! A watcher's position is an applied index: every change at or below it has been delivered or
//! did not match (a resume point may also name a place inside an entry, see [`Start`]). It reads
//! the change log while it is below the feed, then the feed. Once it has read from the feed,
//! falling below it again means its connection did not keep up: it is cut off with an event
//! saying where to resume.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use keel_api::kv::JsonValue;
use keel_api::watch::{ChangeEvent, CutoffEvent, ProgressEvent};
use tokio::sync::watch;
use tokio::time::Instant;

use super::feed::{Feed, FeedRead};
use super::registry::Registration;
use crate::proto::ChangeKind;
use crate::sm::{Change, StateMachine};
use crate::storage::StorageError;

/// Entries read from the feed, or changes from the change log, per chunk.
const PAGE: usize = 256;
/// Bytes of changes (read from the change log) or of events (formatted) per chunk, about: a
/// chunk ends at the first entry boundary past it, so that a watcher far behind over large
/// values holds a chunk of this order, not a page of them.
const CHUNK_BYTES: usize = 1024 * 1024;

/// Which keys a watcher follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    /// Exactly this key.
    Key(String),
    /// Every key starting with this ("" for all).
    Prefix(String),
}

impl Filter {
    fn matches(&self, key: &str) -> bool {
        match self {
            Filter::Key(k) => k == key,
            Filter::Prefix(p) => key.starts_with(p.as_str()),
        }
    }
}

/// Where a watch starts: after entry `after`, and, if `skip` names a place in the next entry,
/// after that place too (a watcher cut off inside an entry's changes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Start {
    /// Every change of entries at or below this has been seen.
    pub after: u64,
    /// `(index, place)`: the changes of entry `index` up to `place` have been seen too.
    pub skip: Option<(u64, u32)>,
}

impl Start {
    /// Parses a `Last-Event-ID`: `N` (every change through entry N seen) or `N.P` (through
    /// place P of entry N).
    pub fn from_event_id(id: &str) -> Option<Start> {
        match id.split_once('.') {
            None => Some(Start {
                after: id.trim().parse().ok()?,
                skip: None,
            }),
            Some((i, p)) => {
                let index: u64 = i.trim().parse().ok()?;
                let place: u32 = p.trim().parse().ok()?;
                Some(Start {
                    after: index.checked_sub(1)?,
                    skip: Some((index, place)),
                })
            }
        }
    }
}

/// One watcher's state.
pub struct Watcher {
    /// The change log, read when the watcher is behind the feed.
    sm: StateMachine,
    /// Recent changes, read when the watcher is within them.
    feed: Arc<Feed>,
    /// The key or prefix watched.
    filter: Filter,
    /// Every change up to this index has been sent (or did not match).
    position: u64,
    /// Resuming inside an entry: the changes of entry `.0` up to place `.1` were sent before.
    skip: Option<(u64, u32)>,
    /// Has read from the feed: falling behind it now means cut off.
    live: bool,
    /// The last read of the feed reached its head (not cut short by the page size).
    caught_up: bool,
    /// Its place in the registry: signalled when a change matches it.
    reg: Registration,
    /// Changes dispatched before the watcher registered were not signalled to it: it may move
    /// to the dispatched index without reading only once its own reading has passed this.
    jump_from: u64,
    /// Becomes true when the node stops serving: the stream ends.
    closed: watch::Receiver<bool>,
    /// The longest silence before a progress event is sent.
    progress_every: Duration,
    /// When the last chunk was sent.
    last_sent: Instant,
    /// The first chunk (a progress event saying where the watch starts) is not sent yet.
    greeted: bool,
    /// The stream has ended (cut off or closed): nothing more is sent.
    done: bool,
    /// Whether the watcher may still read (its caller's token is still in force); None: always.
    allowed: Option<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl Watcher {
    /// A watcher of `filter` from `start`, sending a progress event when nothing else was sent
    /// for `progress_every`.
    pub fn new(
        sm: StateMachine,
        feed: Arc<Feed>,
        filter: Filter,
        start: Start,
        progress_every: Duration,
    ) -> Self {
        let reg = feed.registry().register(filter.clone());
        let jump_from = feed.registry().dispatched();
        Watcher {
            reg,
            jump_from,
            caught_up: false,
            closed: feed.closed(),
            sm,
            feed,
            filter,
            position: start.after,
            skip: start.skip,
            live: false,
            progress_every,
            last_sent: Instant::now(),
            greeted: false,
            done: false,
            allowed: None,
        }
    }

    /// Ends the stream (a `cutoff` event, reason `unauthorized`) at the first turn where
    /// `allowed` says no: the caller's rights, checked while it runs.
    pub fn allowed_while(mut self, allowed: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.allowed = Some(Box::new(allowed));
        self
    }

    /// The next chunk of the stream; None when it ends.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        match self.next().await {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::warn!(error = %e, "a watch stopped on a storage error");
                self.done = true;
                None
            }
        }
    }

    async fn next(&mut self) -> Result<Option<Bytes>, StorageError> {
        if !self.greeted {
            self.greeted = true;
            return Ok(Some(self.progress()));
        }
        // Bounded: each turn delivers, waits, or moves the position forward.
        for _ in 0..1_000_000 {
            if self.done || *self.closed.borrow() {
                return Ok(None);
            }
            if self.allowed.as_ref().is_some_and(|allowed| !allowed()) {
                self.done = true;
                return Ok(Some(self.cutoff("unauthorized")));
            }
            // The flag is cleared before reading, so that a change signalled after the read
            // raises it again. Not raised: nothing up to the dispatched index concerns this
            // watcher beyond what it read, and it moves there without reading.
            let dispatched = self.feed.registry().dispatched();
            let signalled = self.reg.signal.take();
            if !signalled && self.caught_up && self.position >= self.jump_from {
                self.position = self.position.max(dispatched);
            }
            let mut out = String::new();
            match self.feed.read_after(self.position, PAGE) {
                FeedRead::Behind { .. } if self.live => {
                    self.done = true;
                    return Ok(Some(self.cutoff("slow")));
                }
                FeedRead::Behind { .. } => {
                    self.caught_up = false;
                    // RocksDB reads block: off the async workers, one page at a time.
                    let (sm, position) = (self.sm.clone(), self.position);
                    let page = tokio::task::spawn_blocking(move || {
                        sm.read_history(position, PAGE, CHUNK_BYTES)
                    })
                    .await
                    .map_err(|e| StorageError::Corrupt {
                        what: "change log read",
                        detail: e.to_string(),
                    })??;
                    if page.history_after > self.position {
                        self.done = true;
                        return Ok(Some(self.cutoff("compacted")));
                    }
                    self.format_run(&page.changes, &mut out);
                    self.position = self.position.max(page.through);
                    // A long scan of changes this watcher does not want still says how far it
                    // got, so that its client neither takes it for dead nor starts over.
                    if out.is_empty() && self.last_sent.elapsed() >= self.progress_every {
                        return Ok(Some(self.progress()));
                    }
                }
                FeedRead::Groups { groups, through } => {
                    self.live = true;
                    self.caught_up = groups.len() < PAGE;
                    let mut reached = through;
                    for (i, g) in groups.iter().enumerate() {
                        self.format_run(&g.changes, &mut out);
                        if out.len() >= CHUNK_BYTES && i + 1 < groups.len() {
                            // Full: the rest on the next call.
                            reached = g.index;
                            self.caught_up = false;
                            break;
                        }
                    }
                    self.position = self.position.max(reached);
                    if out.is_empty() && groups.is_empty() {
                        if !self.wait().await {
                            return Ok(None);
                        }
                        if self.last_sent.elapsed() >= self.progress_every {
                            return Ok(Some(self.progress()));
                        }
                        continue;
                    }
                }
            }
            if !out.is_empty() {
                self.last_sent = Instant::now();
                return Ok(Some(Bytes::from(out)));
            }
        }
        Ok(None)
    }

    /// Waits for a new batch, the progress deadline or the end; false at the end.
    async fn wait(&mut self) -> bool {
        let deadline = self.last_sent + self.progress_every;
        let signal = self.reg.signal.clone();
        tokio::select! {
            _ = signal.raised() => true,
            _ = tokio::time::sleep_until(deadline) => true,
            _ = self.closed.wait_for(|c| *c) => false,
        }
    }

    /// Formats the matching changes of whole entries, in order. Each event's id is its index,
    /// except inside an entry whose later changes also match: `index.place`, so that a
    /// connection cut between them resumes at the next one.
    fn format_run(&mut self, changes: &[Change], out: &mut String) {
        let matching: Vec<&Change> = changes
            .iter()
            .filter(|c| c.index > self.position)
            .filter(|c| match self.skip {
                Some((index, place)) if c.index == index => c.place > place,
                _ => true,
            })
            .filter(|c| self.filter.matches(&c.key))
            .collect();
        if let Some(last) = changes.last() {
            if self.skip.is_some_and(|(index, _)| last.index >= index) {
                self.skip = None;
            }
        }
        for (i, c) in matching.iter().enumerate() {
            let last_of_entry = matching.get(i + 1).is_none_or(|n| n.index != c.index);
            let id = if last_of_entry {
                c.index.to_string()
            } else {
                format!("{}.{}", c.index, c.place)
            };
            let (event, value, version) = match c.kind {
                ChangeKind::Put => ("put", JsonValue::from_bytes(&c.value), c.index),
                ChangeKind::Delete => ("delete", JsonValue::none(), 0),
                ChangeKind::Expire => ("expire", JsonValue::none(), 0),
            };
            let data = ChangeEvent {
                key: c.key.clone(),
                value,
                version,
                index: c.index,
                lease: (c.lease != 0).then_some(c.lease),
            };
            sse(out, &id, event, &data);
        }
    }

    /// The id that resumes where this watcher is: its position, or, while it has not yet
    /// passed the entry its start named a place in, that place (so that resuming with it does
    /// not deliver that entry's first changes again).
    fn resume_id(&self) -> String {
        match self.skip {
            Some((index, place)) if self.position < index => format!("{index}.{place}"),
            _ => self.position.to_string(),
        }
    }

    fn progress(&mut self) -> Bytes {
        self.last_sent = Instant::now();
        let mut out = String::new();
        let index = self.position;
        sse(
            &mut out,
            &self.resume_id(),
            "progress",
            &ProgressEvent { index },
        );
        Bytes::from(out)
    }

    fn cutoff(&mut self, reason: &str) -> Bytes {
        let mut out = String::new();
        let index = self.position;
        let data = CutoffEvent {
            index,
            reason: reason.to_string(),
        };
        sse(&mut out, &self.resume_id(), "cutoff", &data);
        Bytes::from(out)
    }
}

/// Appends one event.
fn sse<T: serde::Serialize>(out: &mut String, id: &str, event: &str, data: &T) {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    let _ = write!(out, "id: {id}\nevent: {event}\ndata: {json}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_parse_as_resume_points() {
        assert_eq!(
            Start::from_event_id("12"),
            Some(Start {
                after: 12,
                skip: None
            })
        );
        assert_eq!(
            Start::from_event_id("12.3"),
            Some(Start {
                after: 11,
                skip: Some((12, 3))
            })
        );
        for bad in [
            "",
            "x",
            "-1",
            "12.",
            ".3",
            "0.1",
            "1.2.3",
            "99999999999999999999",
        ] {
            assert_eq!(Start::from_event_id(bad), None, "{bad:?}");
        }
    }
}
