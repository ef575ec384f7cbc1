//! Watches from the tests: a blocking reader of `GET /v1/watch`'s Server-Sent Events over the
//! harness's HTTP stack ([`crate::http`]), and the change events parsed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use keel_client::http::StreamingResponse;
use keel_client::keel_api::watch::{ChangeEvent, SseEvent, SseParser};

use crate::{Cluster, Resp};

/// An open watch stream (or the answer that refused it).
pub struct SseStream {
    resp: Option<StreamingResponse>,
    parser: SseParser,
    queue: VecDeque<SseEvent>,
    /// The status of the answer.
    pub status: u16,
    /// Set once the stream ended (the server closed it).
    pub ended: bool,
}

impl SseStream {
    /// The next event within `timeout`; None if none came (or the stream ended: see `ended`).
    pub fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        // Bounded by the deadline: every turn reads a chunk or gives up.
        loop {
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.ended {
                return None;
            }
            let resp = self.resp.as_mut()?;
            let _guard = crate::http::runtime().enter();
            match futures::executor::block_on(resp.chunk(left)) {
                Ok(Some(bytes)) => self.queue.extend(self.parser.feed(&bytes)),
                Ok(None) => self.ended = true,
                // A timeout leaves the stream open; a broken connection ends it.
                Err(keel_client::http::HttpError::Timeout { .. }) => return None,
                Err(_) => self.ended = true,
            }
        }
    }

    /// Events until `stop` says so (included) or `timeout` passes; panics on a timeout.
    pub fn until(
        &mut self,
        timeout: Duration,
        what: &str,
        mut stop: impl FnMut(&SseEvent) -> bool,
    ) -> Vec<SseEvent> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        // Bounded by the deadline.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(e) = self.next(left) else {
                panic!(
                    "waiting for {what}: none within {timeout:?} (ended: {}); got {got:?}",
                    self.ended
                );
            };
            let done = stop(&e);
            got.push(e);
            if done {
                return got;
            }
        }
    }
}

/// A change event's data.
pub fn change(e: &SseEvent) -> ChangeEvent {
    match serde_json::from_str(&e.data) {
        Ok(c) => c,
        Err(err) => panic!("a change event that does not parse ({err}): {e:?}"),
    }
}

/// The `index` of a progress or cutoff event.
pub fn index_of(e: &SseEvent) -> u64 {
    serde_json::from_str::<serde_json::Value>(&e.data)
        .ok()
        .and_then(|v| v["index"].as_u64())
        .unwrap_or_else(|| panic!("no index in {e:?}"))
}

impl Cluster {
    /// Opens `GET /v1/watch?{query}` on node `id` with `headers`; the stream, or the refusal.
    pub fn watch(&self, id: u64, query: &str, headers: &[(&str, &str)]) -> Result<SseStream, Resp> {
        let addr = self.http_addr(id);
        let path = format!("/v1/watch?{query}");
        let http = self.http.raw();
        let _guard = crate::http::runtime().enter();
        let resp = match futures::executor::block_on(http.stream(&addr, &path, headers)) {
            Ok(r) => r,
            Err(e) => panic!("watch on node {id}: {e}"),
        };
        if resp.status != 200 {
            let status = resp.status;
            let headers = resp
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = futures::executor::block_on(resp.collect(Duration::from_secs(10)))
                .unwrap_or_default()
                .to_vec();
            return Err(Resp {
                status,
                headers,
                body,
            });
        }
        Ok(SseStream {
            status: resp.status,
            resp: Some(resp),
            parser: SseParser::default(),
            queue: VecDeque::new(),
            ended: false,
        })
    }
}
