//! Bodies of the key-value endpoints: `PUT`/`DELETE /v1/kv/{key}`, `POST /v1/kv/{key}/add` and
//! `GET /v1/kv?prefix=`. (`GET /v1/kv/{key}` answers with the raw value and an `ETag`.)
//!
//! Values are bytes. Where they appear inside JSON, a UTF-8 value is a JSON string; any other
//! value is `"value": null` with `"value_base64"` carrying the bytes ([`JsonValue`]).

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::mode::AckPoint;

/// Answer to a put.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResponse {
    /// The write's log index.
    pub index: u64,
    /// The key's new version (equal to `index`).
    pub version: u64,
    /// Where the write was acknowledged.
    pub acked: AckPoint,
}

/// Answer to a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResponse {
    /// The write's log index.
    pub index: u64,
    /// Whether the key existed.
    pub deleted: bool,
    /// Where the write was acknowledged.
    pub acked: AckPoint,
}

/// Body of `POST /v1/kv/{key}/add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRequest {
    /// The amount to add (negative to subtract).
    pub delta: i64,
    /// Refuse if the result would be below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    /// Refuse if the result would be above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
}

/// Answer to an add.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddResponse {
    /// The new value.
    pub value: i64,
    /// The write's log index.
    pub index: u64,
    /// The key's new version.
    pub version: u64,
    /// Where the write was acknowledged.
    pub acked: AckPoint,
}

/// A value inside JSON: a string when it is UTF-8, else `null` plus base64.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonValue {
    /// The value, when it is UTF-8 (`null` otherwise: see `value_base64`).
    pub value: Option<String>,
    /// The value's bytes in standard base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

impl JsonValue {
    /// No value (`"value": null`, no base64): a deleted key in a watch event.
    pub fn none() -> Self {
        JsonValue {
            value: None,
            value_base64: None,
        }
    }

    /// Encodes bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        match std::str::from_utf8(bytes) {
            Ok(s) => JsonValue {
                value: Some(s.to_string()),
                value_base64: None,
            },
            Err(_) => JsonValue {
                value: None,
                value_base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            },
        }
    }

    /// The bytes, or None if `value_base64` is not valid base64.
    pub fn to_bytes(&self) -> Option<Vec<u8>> {
        match (&self.value, &self.value_base64) {
            (Some(s), _) => Some(s.clone().into_bytes()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD.decode(b).ok(),
            (None, None) => Some(Vec::new()),
        }
    }
}

/// One key of a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListItem {
    /// The key.
    pub key: String,
    /// Its value.
    #[serde(flatten)]
    pub value: JsonValue,
    /// Its version.
    pub version: u64,
}

/// Answer to `GET /v1/kv?prefix=P&after=K&limit=L`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListResponse {
    /// Keys in order.
    pub items: Vec<ListItem>,
    /// The applied index the page reflects.
    pub index: u64,
    /// Whether more keys match after the last one returned.
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_strings_when_utf8_and_base64_otherwise() {
        let text = ListItem {
            key: "k".into(),
            value: JsonValue::from_bytes(b"hello"),
            version: 3,
        };
        assert_eq!(
            serde_json::to_value(&text).expect("serialize"),
            json!({"key": "k", "value": "hello", "version": 3})
        );
        let binary = ListItem {
            key: "b".into(),
            value: JsonValue::from_bytes(&[0xff, 0x00]),
            version: 4,
        };
        let v = serde_json::to_value(&binary).expect("serialize");
        assert_eq!(
            v,
            json!({"key": "b", "value": null, "value_base64": "/wA=", "version": 4})
        );
        let back: ListItem = serde_json::from_value(v).expect("parse");
        assert_eq!(back.value.to_bytes(), Some(vec![0xff, 0x00]));
    }

    #[test]
    fn add_request_refuses_unknown_fields_and_omits_absent_bounds() {
        assert!(serde_json::from_str::<AddRequest>(r#"{"dleta": 1}"#).is_err());
        let a = AddRequest {
            delta: -3,
            min: Some(0),
            max: None,
        };
        assert_eq!(
            serde_json::to_value(&a).expect("serialize"),
            json!({"delta": -3, "min": 0})
        );
    }
}
