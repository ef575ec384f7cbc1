//! Bodies of the coordination endpoints (SPEC §8): leases, locks with fencing tokens.
//!
//! Lease ids and fences are `u64`s. A lease id travels as a JSON string (`"id": "1234"`), as
//! SPEC §8 shows, so that JavaScript clients do not round it; requests accept a string or a
//! number. Fences and indexes are numbers.

use serde::{Deserialize, Deserializer, Serialize};

use crate::kv::JsonValue;

/// The HTTP header that fences a write: `If-Fence: <lock name>=<fence>`.
pub const IF_FENCE: &str = "if-fence";

/// A lease id as a string in JSON, read from a string or a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl Serialize for LeaseId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.to_string())
    }
}

impl<'de> Deserialize<'de> for LeaseId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Num(u64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Num(n) => Ok(LeaseId(n)),
            Either::Text(t) => t
                .parse()
                .map(LeaseId)
                .map_err(|_| serde::de::Error::custom(format!("not a lease id: {t:?}"))),
        }
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Body of `POST /v1/lease`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseGrantRequest {
    /// The time to live asked for (raised to the cluster's minimum).
    pub ttl_ms: u64,
}

/// Answer to a grant or a keepalive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseResponse {
    /// The lease's id (the index of the entry that granted it).
    pub id: LeaseId,
    /// Its time to live, as granted.
    pub ttl_ms: u64,
    /// The log index the answer reflects (the grant's entry, or the keepalive's read index).
    pub index: u64,
}

/// Answer to `GET /v1/lease/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    /// The lease's id.
    pub id: LeaseId,
    /// Its time to live.
    pub ttl_ms: u64,
    /// Time left on the leader's clock.
    pub remaining_ms: u64,
    /// Keys attached to it.
    pub keys: Vec<String>,
    /// Locks it holds or waits for.
    pub locks: Vec<String>,
    /// The log index the answer reflects.
    pub index: u64,
}

/// Answer to `DELETE /v1/lease/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRevokeResponse {
    /// The lease's id.
    pub id: LeaseId,
    /// The keys deleted with it.
    pub keys: Vec<String>,
    /// The locks it released or stopped waiting for.
    pub locks: Vec<String>,
    /// The revocation's log index.
    pub index: u64,
}

/// Body of `POST /v1/lock/{name}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockRequest {
    /// The lease that will hold the lock: the lock is released when it ends.
    pub lease: LeaseId,
    /// The holder's value (an election's candidate, a worker's address...). UTF-8.
    #[serde(default)]
    pub value: String,
    /// How long to wait in the queue when the lock is held (0: do not wait).
    #[serde(default)]
    pub wait_ms: u64,
}

/// A lock's holder: the answer to an acquire, to `GET /v1/lock/{name}`, and the body of a 409
/// `lock_held` or a 412 `fence_rejected` (under `holder`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHolderInfo {
    /// The lock's name.
    pub name: String,
    /// The holder's lease.
    pub lease: LeaseId,
    /// The holder's value.
    #[serde(flatten)]
    pub value: JsonValue,
    /// The fencing token: the index of the entry that granted the lock.
    pub fence: u64,
    /// The log index the answer reflects.
    pub index: u64,
}

/// Parses `If-Fence: name=fence`.
pub fn parse_if_fence(v: &str) -> Result<(String, u64), String> {
    let (name, fence) = v
        .rsplit_once('=')
        .ok_or_else(|| format!("If-Fence must be <lock name>=<fence>, got {v:?}"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err("If-Fence names no lock".into());
    }
    let fence = fence
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("If-Fence: {:?} is not a fence (a log index)", fence.trim()))?;
    if fence == 0 {
        return Err("If-Fence: a fence is never 0".into());
    }
    Ok((name.to_string(), fence))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_strings_out_and_either_in() {
        let r = LeaseResponse {
            id: LeaseId(u64::MAX),
            ttl_ms: 3000,
            index: 7,
        };
        let text = serde_json::to_string(&r).unwrap_or_default();
        assert!(text.contains("\"id\":\"18446744073709551615\""), "{text}");
        for body in [r#"{"lease": 12}"#, r#"{"lease": "12"}"#] {
            let l: LockRequest = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(l.lease, LeaseId(12));
        }
        assert!(serde_json::from_str::<LockRequest>(r#"{"lease": "x"}"#).is_err());
        assert!(serde_json::from_str::<LockRequest>(r#"{"lease": -1}"#).is_err());
    }

    #[test]
    fn if_fence_parses_or_explains() {
        assert_eq!(parse_if_fence("jobs=42"), Ok(("jobs".into(), 42)));
        assert_eq!(parse_if_fence("a=b=9"), Ok(("a=b".into(), 9)));
        for bad in ["", "jobs", "=4", "jobs=", "jobs=x", "jobs=0", "jobs=-1"] {
            assert!(parse_if_fence(bad).is_err(), "{bad}");
        }
    }
}
