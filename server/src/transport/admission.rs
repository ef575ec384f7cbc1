//! Who may hold a slot on the peer port. A connection that has not yet said who it is (TLS
//! handshake and Hello) holds a *pending* slot: at most [`MAX_PENDING_CONNECTIONS`] in all and
//! [`MAX_PENDING_PER_IP`] per remote address, for at most the Hello deadline. Only a connection
//! whose Hello was accepted moves to one of the [`MAX_INBOUND_CONNECTIONS`] member slots. So
//! strangers who connect and say nothing can fill the pending slots of their own addresses, but
//! neither the members' slots nor the pending slots of the members' addresses.
//!
//! [`MAX_INBOUND_CONNECTIONS`]: super::MAX_INBOUND_CONNECTIONS

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections that have not yet sent an accepted Hello, in all.
pub const MAX_PENDING_CONNECTIONS: usize = 256;
/// Such connections from one remote address.
pub const MAX_PENDING_PER_IP: usize = 8;

/// The slots of the peer port.
pub(super) struct Admission {
    /// Pending connections in all.
    pending: Arc<Semaphore>,
    /// Pending connections per remote address.
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// Connections of members (after their Hello).
    members: Arc<Semaphore>,
}

/// A pending slot, released when dropped.
pub(super) struct Pending {
    _permit: OwnedSemaphorePermit,
    ip: IpAddr,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    members: Arc<Semaphore>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Pending {
    /// The connection said who it is: its pending slot is given back for a member slot, if
    /// one is free.
    pub(super) fn promote(self) -> Option<OwnedSemaphorePermit> {
        self.members.clone().try_acquire_owned().ok()
    }
}

impl Admission {
    pub(super) fn new(members: usize) -> Admission {
        Admission {
            pending: Arc::new(Semaphore::new(MAX_PENDING_CONNECTIONS)),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            members: Arc::new(Semaphore::new(members)),
        }
    }

    /// A pending slot for a connection from `ip`, if one is free.
    pub(super) fn admit(&self, ip: IpAddr) -> Option<Pending> {
        let permit = self.pending.clone().try_acquire_owned().ok()?;
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= MAX_PENDING_PER_IP {
            return None;
        }
        *n += 1;
        Some(Pending {
            _permit: permit,
            ip,
            per_ip: self.per_ip.clone(),
            members: self.members.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_cannot_take_every_slot() {
        let a = Admission::new(2);
        let stranger: IpAddr = "10.0.0.66".parse().expect("ip");
        let member: IpAddr = "10.0.0.2".parse().expect("ip");
        let held: Vec<Pending> = (0..20).filter_map(|_| a.admit(stranger)).collect();
        assert_eq!(held.len(), MAX_PENDING_PER_IP);
        let m1 = a.admit(member).expect("a member's address has room");
        let m2 = a.admit(member).expect("room");
        let s1 = m1.promote().expect("a member slot");
        let _s2 = m2.promote().expect("a member slot");
        assert!(
            a.admit(member).expect("pending").promote().is_none(),
            "2 member slots"
        );
        drop(s1);
        drop(held);
        let again: Vec<Pending> = (0..20).filter_map(|_| a.admit(stranger)).collect();
        assert_eq!(
            again.len(),
            MAX_PENDING_PER_IP,
            "slots come back when connections end"
        );
    }
}
