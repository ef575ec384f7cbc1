//! Watches: the change feed of keys or a prefix (`GET /v1/watch`, Server-Sent Events), as a
//! stream of events that survives node failures by itself.
//!
//! A [`Watch`] remembers the id of the last event it handed out. When its connection ends (the
//! node was killed, paused past the idle limit, cut it off as too slow, or lost the history the
//! watch needs), it reconnects to a member, round robin, with that id as `Last-Event-ID`: the
//! server resumes right after it, so no change is lost or repeated, whatever node answers. A
//! start older than every member's history is reported as [`Error::Compacted`].
//!
//! ```
//! # let cluster = keel_tests::Cluster::start(3);
//! # let endpoints = cluster.endpoints();
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use keel_client::{Client, WatchKind, WatchOptions};
//!
//! let client = Client::new(endpoints).await?;
//! let at = client.put("jobs/1", "queued").await?.index;
//! let mut watch = client.watch(WatchOptions::prefix("jobs/").from_index(at)).await?;
//! let first = watch.next_change().await?;
//! assert_eq!((first.kind, first.key.as_str()), (WatchKind::Put, "jobs/1"));
//! assert_eq!(first.value.as_deref(), Some(&b"queued"[..]));
//! # Ok::<(), keel_client::Error>(())
//! # }).unwrap();
//! ```

use std::collections::VecDeque;
use std::time::Duration;

use keel_api::watch::{ChangeEvent, CutoffEvent, ProgressEvent, SseEvent, SseParser};
use keel_api::{params, ErrorBody, ErrorCode};

use crate::client::encode_key;
use crate::http::StreamingResponse;
use crate::{Client, Error};

/// What to watch and from where.
#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    key: Option<String>,
    prefix: String,
    from_index: Option<u64>,
    resume_id: Option<String>,
    progress: Option<Duration>,
}

impl WatchOptions {
    /// Every key starting with `prefix` (`""`: every key).
    pub fn prefix(prefix: impl Into<String>) -> Self {
        WatchOptions {
            prefix: prefix.into(),
            ..Default::default()
        }
    }

    /// Exactly this key.
    pub fn key(key: impl Into<String>) -> Self {
        WatchOptions {
            key: Some(key.into()),
            ..Default::default()
        }
    }

    /// Start with the changes of this index (default: from now).
    pub fn from_index(mut self, index: u64) -> Self {
        self.from_index = Some(index);
        self
    }

    /// Resume right after an event id an earlier watch handed out ([`WatchEvent::id`]).
    pub fn resume_after(mut self, id: impl Into<String>) -> Self {
        self.resume_id = Some(id.into());
        self
    }

    /// Ask for progress events this often when nothing changes (0.1–5 s; default 5 s).
    pub fn progress_every(mut self, every: Duration) -> Self {
        self.progress = Some(every);
        self
    }
}

/// What an event says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchKind {
    /// The key was written.
    Put,
    /// The key was deleted.
    Delete,
    /// The key was deleted because its lease expired.
    Expire,
    /// A bookmark: every change up to `index` has been handed out.
    Progress,
}

/// One event of a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchEvent {
    /// What happened.
    pub kind: WatchKind,
    /// The key (empty for progress).
    pub key: String,
    /// The new value (puts only).
    pub value: Option<Vec<u8>>,
    /// The key's version after the change (its index; 0 once deleted).
    pub version: u64,
    /// The index of the change (of the bookmark, for progress).
    pub index: u64,
    /// The key's lease, or the lease whose end deleted it.
    pub lease: Option<u64>,
    /// The event's id: give it to [`WatchOptions::resume_after`] to resume after it.
    pub id: String,
}

/// A watch in progress: call [`Watch::next`] for each event.
pub struct Watch {
    /// Where the members are, and the HTTP stack to reach them.
    client: Client,
    /// The query without its start (`prefix=...` or `key=...`, and `progress_ms`).
    query: String,
    /// Where the first connection starts (None: now).
    from_index: Option<u64>,
    /// The id of the last event handed out (or of the cutoff that ended a stream).
    resume: Option<String>,
    /// The open stream, if any.
    conn: Option<StreamingResponse>,
    /// Splits the stream into events (keeps a partial event across reads).
    parser: SseParser,
    /// Events parsed but not yet handed out.
    ready: VecDeque<WatchEvent>,
    /// Longest silence before the connection is taken for dead (three progress periods).
    idle: Duration,
    /// Connection attempts that failed in a row.
    failures: u32,
    /// Members that answered 410 in a row.
    compacted: Vec<String>,
    /// Streams that ended and were resumed.
    reconnects: u64,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("query", &self.query)
            .field("resume", &self.resume)
            .finish()
    }
}

impl Client {
    /// Starts a watch (it connects on the first [`Watch::next`]).
    pub async fn watch(&self, opts: WatchOptions) -> Result<Watch, Error> {
        let mut query = match &opts.key {
            Some(k) => format!("{}={}", params::KEY, encode_key(k)),
            None => format!("{}={}", params::PREFIX, encode_key(&opts.prefix)),
        };
        let progress = opts.progress.unwrap_or(Duration::from_secs(5));
        if let Some(p) = opts.progress {
            query.push_str(&format!("&{}={}", params::PROGRESS_MS, p.as_millis()));
        }
        Ok(Watch {
            client: self.clone(),
            query,
            from_index: opts.from_index,
            resume: opts.resume_id,
            conn: None,
            parser: SseParser::default(),
            ready: VecDeque::new(),
            idle: progress * 3 + Duration::from_secs(1),
            failures: 0,
            compacted: Vec::new(),
            reconnects: 0,
        })
    }
}

impl Watch {
    /// The next event (changes and progress bookmarks), reconnecting as needed.
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        // Bounded: every turn hands out an event, reads from the connection, or reconnects
        // (and reconnections that fail in a row end the watch).
        loop {
            if let Some(e) = self.ready.pop_front() {
                self.resume = Some(e.id.clone());
                return Ok(e);
            }
            let Some(conn) = self.conn.as_mut() else {
                self.connect().await?;
                continue;
            };
            match conn.chunk(self.idle).await {
                Ok(Some(bytes)) => {
                    for ev in self.parser.feed(&bytes) {
                        self.take(ev)?;
                    }
                }
                Ok(None) | Err(_) => self.drop_connection(),
            }
        }
    }

    /// The next change, skipping progress events.
    pub async fn next_change(&mut self) -> Result<WatchEvent, Error> {
        loop {
            let e = self.next().await?;
            if e.kind != WatchKind::Progress {
                return Ok(e);
            }
        }
    }

    /// The id of the last event handed out: where this watch would resume.
    pub fn resume_id(&self) -> Option<&str> {
        self.resume.as_deref()
    }

    /// How many times a stream ended (a node failed, or cut the watch off) and was resumed.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    fn drop_connection(&mut self) {
        self.reconnects += 1;
        self.conn = None;
        // A partial event is dropped: the resume id is that of the last whole one.
        self.parser = SseParser::default();
    }

    fn take(&mut self, ev: SseEvent) -> Result<(), Error> {
        let id = ev.id.clone().unwrap_or_default();
        let bad = |e: serde_json::Error| {
            Error::Unexpected(format!(
                "a watch event that does not parse ({e}): {}",
                ev.data
            ))
        };
        let kind = match ev.event.as_str() {
            "put" => WatchKind::Put,
            "delete" => WatchKind::Delete,
            "expire" => WatchKind::Expire,
            "progress" => {
                let p: ProgressEvent = serde_json::from_str(&ev.data).map_err(bad)?;
                self.ready.push_back(WatchEvent {
                    kind: WatchKind::Progress,
                    key: String::new(),
                    value: None,
                    version: 0,
                    index: p.index,
                    lease: None,
                    id,
                });
                return Ok(());
            }
            "cutoff" => {
                // The stream ends here; the next connection resumes after the cutoff's id.
                let _: CutoffEvent = serde_json::from_str(&ev.data).map_err(bad)?;
                self.resume = Some(id);
                self.drop_connection();
                return Ok(());
            }
            _ => return Ok(()),
        };
        let c: ChangeEvent = serde_json::from_str(&ev.data).map_err(bad)?;
        self.ready.push_back(WatchEvent {
            kind,
            value: (kind == WatchKind::Put).then(|| c.value.to_bytes().unwrap_or_default()),
            key: c.key,
            version: c.version,
            index: c.index,
            lease: c.lease,
            id,
        });
        Ok(())
    }

    async fn connect(&mut self) -> Result<(), Error> {
        let attempts = self.client.inner.retry.max_attempts.max(1);
        if self.failures >= attempts {
            return Err(Error::Timeout {
                message: format!("the watch could not reconnect in {attempts} attempts"),
            });
        }
        if self.failures > 0 {
            self.client.backoff(self.failures).await;
        }
        let target = self.client.any_member();
        let mut path = format!("/v1/watch?{}", self.query);
        let mut headers: Vec<(&str, &str)> = Vec::new();
        match (&self.resume, self.from_index) {
            (Some(id), _) => headers.push(("last-event-id", id.as_str())),
            (None, Some(n)) => path.push_str(&format!("&{}={n}", params::FROM_INDEX)),
            (None, None) => {}
        }
        let resp = match self
            .client
            .inner
            .http
            .stream(&target, &path, &headers)
            .await
        {
            Ok(r) => r,
            Err(_) => {
                self.failures += 1;
                return Ok(());
            }
        };
        if resp.status == 200 {
            self.failures = 0;
            self.compacted.clear();
            self.conn = Some(resp);
            return Ok(());
        }
        let status = resp.status;
        let body = resp
            .collect(self.client.inner.http.request_timeout())
            .await
            .unwrap_or_default();
        let err: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let message = err
            .as_ref()
            .map(|b| b.error.message.clone())
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        match err.as_ref().and_then(ErrorBody::code) {
            Some(ErrorCode::Compacted) => {
                // Another member (one that did not install a snapshot) may still have it.
                if !self.compacted.contains(&target) {
                    self.compacted.push(target);
                }
                if self.compacted.len() >= self.client.members().len().max(1) {
                    return Err(Error::Compacted {
                        message,
                        oldest_index: err.and_then(|b| b.oldest_index).unwrap_or(0),
                    });
                }
                Ok(())
            }
            _ if (400..500).contains(&status) => Err(Error::BadRequest {
                code: err.map(|b| b.error.code).unwrap_or_default(),
                message,
            }),
            _ => {
                self.failures += 1;
                Ok(())
            }
        }
    }
}
