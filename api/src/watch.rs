//! The watch feed, `GET /v1/watch` (SPEC §9): Server-Sent Events, one per change.
//!
//! ```text
//! id: 42
//! event: put
//! data: {"key":"jobs/1","value":"run","version":42,"index":42}
//! ```
//!
//! Events: `put`, `delete`, `expire` (a key deleted because its lease expired) carry a
//! [`ChangeEvent`]; `progress` a [`ProgressEvent`] (a bookmark: every change at or below its index
//! has been delivered; one opens every stream and one follows every `progress_ms` of quiet);
//! `cutoff` a [`CutoffEvent`] (the stream ends: the client was too slow, or the history it needs
//! was trimmed while it read; resume from its id). An event's `id` is its index, or `index.place`
//! for a change followed by others of the same entry (the changes of one transaction share an
//! index and arrive in key order): sent back as `Last-Event-ID`, it resumes right after it, on
//! any node. A start older than the node's history is answered `410 compacted` with
//! `oldest_index`.

use serde::{Deserialize, Serialize};

use crate::kv::JsonValue;

/// A key's change: `data` of `put`, `delete` and `expire` events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeEvent {
    /// The key.
    pub key: String,
    /// The new value (`null` for a delete or an expiry).
    #[serde(flatten)]
    pub value: JsonValue,
    /// The key's new version (its index; 0 once deleted).
    pub version: u64,
    /// The index of the entry that changed it.
    pub index: u64,
    /// The key's lease after a put, or the lease whose end deleted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
}

/// `data` of a `progress` event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressEvent {
    /// Every change at or below this index has been delivered.
    pub index: u64,
}

/// `data` of a `cutoff` event, the last of a stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutoffEvent {
    /// Every change at or below this index has been delivered: resume after it.
    pub index: u64,
    /// `slow` (the client did not read fast enough) or `compacted` (the history was trimmed).
    pub reason: String,
}

/// One Server-Sent Event as received.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:` (the last one seen, as the SSE rules carry it over).
    pub id: Option<String>,
    /// `event:` (`message` when absent).
    pub event: String,
    /// `data:` lines joined by newlines.
    pub data: String,
}

/// An incremental Server-Sent Events parser: feed it bytes as they arrive, take whole events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    last_id: Option<String>,
    event: Option<String>,
    data: Option<String>,
}

impl SseParser {
    /// Adds received bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if let Some(data) = self.data.take() {
                    out.push(SseEvent {
                        id: self.last_id.clone(),
                        event: self.event.take().unwrap_or_else(|| "message".into()),
                        data,
                    });
                }
                self.event = None;
                continue;
            }
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line, ""),
            };
            match field {
                "id" => self.last_id = Some(value.to_string()),
                "event" => self.event = Some(value.to_string()),
                "data" => match &mut self.data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => self.data = Some(value.to_string()),
                },
                _ => {}
            }
        }
        out
    }

    /// Bytes received that do not yet end a line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere_and_carries_the_last_id() {
        let text = "id: 4\nevent: progress\ndata: {\"index\":4}\n\n: comment\n\
                    id: 5.0\nevent: put\ndata: {\"a\":1}\n\nevent: x\ndata: one\ndata: two\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut got = p.feed(&text.as_bytes()[..split]);
            got.extend(p.feed(&text.as_bytes()[split..]));
            assert_eq!(got.len(), 3, "split at {split}");
            assert_eq!(got[0].id.as_deref(), Some("4"));
            assert_eq!(got[0].event, "progress");
            assert_eq!(got[1].id.as_deref(), Some("5.0"));
            assert_eq!(got[1].data, "{\"a\":1}");
            assert_eq!(got[2].id.as_deref(), Some("5.0"), "an id carries over");
            assert_eq!(got[2].data, "one\ntwo");
        }
    }

    #[test]
    fn a_delete_has_a_null_value() {
        let e = ChangeEvent {
            key: "k".into(),
            value: JsonValue::none(),
            version: 0,
            index: 9,
            lease: None,
        };
        let json = serde_json::to_value(&e).expect("encodes");
        assert_eq!(
            json,
            serde_json::json!({"key": "k", "value": null, "version": 0, "index": 9})
        );
        let back: ChangeEvent = serde_json::from_value(json).expect("decodes");
        assert_eq!(back, e);
    }
}
