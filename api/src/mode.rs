//! Write modes and read consistencies: what a client may ask for, and where a write was
//! acknowledged. See docs/consistency.md for the guarantees of each.
//!
//! The numeric forms travel between nodes in forwarded writes; the names travel over HTTP.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// When a write is acknowledged (`?mode=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteMode {
    /// Answered once the entry is durable in the leader's log.
    Async,
    /// Answered once committed by a majority and applied on the leader.
    Semi,
    /// Answered once applied on every voting member.
    Sync,
}

impl WriteMode {
    /// Wire form between nodes.
    pub fn as_u32(self) -> u32 {
        match self {
            WriteMode::Async => 1,
            WriteMode::Semi => 2,
            WriteMode::Sync => 3,
        }
    }

    /// From the wire form between nodes.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(WriteMode::Async),
            2 => Some(WriteMode::Semi),
            3 => Some(WriteMode::Sync),
            _ => None,
        }
    }

    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WriteMode::Async => "async",
            WriteMode::Semi => "semi",
            WriteMode::Sync => "sync",
        }
    }
}

impl FromStr for WriteMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "async" => Ok(WriteMode::Async),
            "semi" => Ok(WriteMode::Semi),
            "sync" => Ok(WriteMode::Sync),
            other => Err(format!(
                "unknown mode {other:?}: expected async, semi or sync"
            )),
        }
    }
}

impl fmt::Display for WriteMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The point at which a write was actually acknowledged (`"acked"` in answers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPoint {
    /// Durable in the leader's log.
    LeaderLog,
    /// Committed by a quorum and applied on the leader.
    Quorum,
    /// Applied on every voting member.
    All,
}

impl AckPoint {
    /// Wire form between nodes.
    pub fn as_u32(self) -> u32 {
        match self {
            AckPoint::LeaderLog => 1,
            AckPoint::Quorum => 2,
            AckPoint::All => 3,
        }
    }

    /// From the wire form between nodes.
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(AckPoint::LeaderLog),
            2 => Some(AckPoint::Quorum),
            3 => Some(AckPoint::All),
            _ => None,
        }
    }

    /// The name used in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            AckPoint::LeaderLog => "leader_log",
            AckPoint::Quorum => "quorum",
            AckPoint::All => "all",
        }
    }
}

/// How fresh a read must be (`?consistency=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadConsistency {
    /// Raft ReadIndex: sees every write acknowledged before the read began.
    Linearizable,
    /// This node's local state, at once (with `min_index`: once it has applied that index).
    Stale,
}

impl ReadConsistency {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Stale => "stale",
        }
    }
}

impl FromStr for ReadConsistency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "linearizable" => Ok(ReadConsistency::Linearizable),
            "stale" => Ok(ReadConsistency::Stale),
            other => Err(format!(
                "unknown consistency {other:?}: expected linearizable or stale"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wire_forms_round_trip() {
        for m in [WriteMode::Async, WriteMode::Semi, WriteMode::Sync] {
            assert_eq!(WriteMode::from_u32(m.as_u32()), Some(m));
            assert_eq!(m.as_str().parse::<WriteMode>(), Ok(m));
        }
        for a in [AckPoint::LeaderLog, AckPoint::Quorum, AckPoint::All] {
            assert_eq!(AckPoint::from_u32(a.as_u32()), Some(a));
            let json = serde_json::to_string(&a).expect("serialize");
            assert_eq!(json, format!("\"{}\"", a.as_str()));
        }
        for c in [ReadConsistency::Linearizable, ReadConsistency::Stale] {
            assert_eq!(c.as_str().parse::<ReadConsistency>(), Ok(c));
        }
        assert!("fast".parse::<WriteMode>().is_err());
        assert!("SEMI".parse::<WriteMode>().is_err());
        assert!("strong".parse::<ReadConsistency>().is_err());
        assert_eq!(WriteMode::from_u32(0), None);
    }
}
