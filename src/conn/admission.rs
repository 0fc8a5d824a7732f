//! Connection admission and the per-connection count limits (the time limits are the session's:
//! see `rtmp_proto::session::SessionConfig`).
//!
//! Per-IP counts are kept per shard, like everything else (design.md, invariant 2): each shard
//! enforces its share of the per-IP limits (`limit / shards`, rounded up). SO_REUSEPORT spreads
//! one address's connections over the shards by the hash of their 4-tuple, and a client's
//! source ports vary, so the shares fill evenly and the server-wide count stays within a few
//! connections of the configured limit without any table shared between cores.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;

use rtmp_proto::amf0::AmfError;
use rtmp_proto::chunk::DecodeError;
use rtmp_proto::command::CommandError;
use rtmp_proto::session::{SessionError, TimeLimit};

use crate::metrics::Limit;

/// Count and size limits for one connection. Each stops a named attack; each trips a counter.
/// Its time limits (handshake, idle before play, publisher idle) are in the session's
/// `SessionConfig`, which runs them on the time the connection gives it.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// SO_SNDBUF for players (0: kernel autotuning).
    pub player_send_buffer: usize,
    /// Open connections per IP address on this shard (its share of the server's limit).
    pub max_per_ip: u32,
    /// Connections per IP address still before `connect` on this shard (its share).
    pub max_handshaking_per_ip: u32,
    /// Longest app or stream key (log and label flooding, oversized map keys).
    pub max_name_bytes: usize,
}

/// Which admission limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    ServerFull,
    PerIp,
    HandshakingPerIp,
}

impl Refusal {
    /// The limit that refused.
    pub fn limit(self) -> Limit {
        match self {
            Refusal::ServerFull => Limit::MaxConnections,
            Refusal::PerIp => Limit::MaxConnectionsPerIp,
            Refusal::HandshakingPerIp => Limit::MaxHandshakingPerIp,
        }
    }
}

/// The limit (named after its flag) that a session time limit is.
pub fn time_limit(limit: TimeLimit) -> Limit {
    match limit {
        TimeLimit::Handshake => Limit::HandshakeTimeoutSecs,
        TimeLimit::IdleBeforePlay => Limit::IdleBeforePlaySecs,
        TimeLimit::PublisherIdle => Limit::PublisherIdleSecs,
    }
}

/// The limit a protocol error reports, if it is one of the protocol's bounds (counted besides
/// the protocol error itself).
pub fn tripped_by(error: &SessionError) -> Option<Limit> {
    match error {
        SessionError::Chunk(DecodeError::MessageTooLong { .. }) => Some(Limit::MaxMessageBytes),
        SessionError::Chunk(DecodeError::TooManyChunkStreams { .. }) => {
            Some(Limit::MaxChunkStreams)
        }
        SessionError::Chunk(DecodeError::PartialBytesExceeded { .. }) => {
            Some(Limit::MaxPartialBytes)
        }
        SessionError::TooManyStreams { .. } => Some(Limit::MaxMessageStreams),
        SessionError::Timeout(limit) => Some(time_limit(*limit)),
        SessionError::Command(CommandError::Amf(amf)) => match amf {
            AmfError::TooDeep => Some(Limit::MaxAmfDepth),
            AmfError::StringTooLong(_) => Some(Limit::MaxAmfStringBytes),
            AmfError::TooManyElements => Some(Limit::MaxAmfElements),
            AmfError::Truncated
            | AmfError::UnknownMarker(_)
            | AmfError::BadReference(_)
            | AmfError::Malformed(_) => None,
        },
        SessionError::Handshake(_)
        | SessionError::Chunk(_)
        | SessionError::Control(_)
        | SessionError::Command(_) => None,
    }
}

#[derive(Debug, Default)]
struct IpCount {
    open: u32,
    handshaking: u32,
}

/// Open and handshaking connections per IP address on one shard.
#[derive(Debug, Default)]
pub struct IpTable {
    counts: RefCell<HashMap<IpAddr, IpCount>>,
}

impl IpTable {
    fn with_counts<T>(&self, f: impl FnOnce(&mut HashMap<IpAddr, IpCount>) -> T) -> T {
        f(&mut self.counts.borrow_mut())
    }

    /// Admits a new connection from `ip`, or says which limit refuses it.
    pub fn admit(self: &Rc<Self>, ip: IpAddr, limits: &ConnLimits) -> Result<Admission, Refusal> {
        self.with_counts(|counts| {
            let count = counts.entry(ip).or_default();
            if count.open >= limits.max_per_ip {
                return Err(Refusal::PerIp);
            }
            if count.handshaking >= limits.max_handshaking_per_ip {
                return Err(Refusal::HandshakingPerIp);
            }
            count.open += 1;
            count.handshaking += 1;
            Ok(())
        })?;
        Ok(Admission { table: self.clone(), ip, handshaking: true })
    }

    /// Addresses with open connections (for tests and stats).
    pub fn addresses(&self) -> usize {
        self.with_counts(|counts| counts.len())
    }
}

/// One admitted connection's place in the [`IpTable`]; dropping it gives the place back.
#[derive(Debug)]
pub struct Admission {
    table: Rc<IpTable>,
    ip: IpAddr,
    handshaking: bool,
}

impl Admission {
    /// The connection got through `connect`: it no longer counts as handshaking.
    pub fn handshake_done(&mut self) {
        if std::mem::replace(&mut self.handshaking, false) {
            self.table.with_counts(|counts| {
                if let Some(count) = counts.get_mut(&self.ip) {
                    count.handshaking = count.handshaking.saturating_sub(1);
                }
            });
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        let handshaking = self.handshaking;
        self.table.with_counts(|counts| {
            if let Some(count) = counts.get_mut(&self.ip) {
                count.open = count.open.saturating_sub(1);
                if handshaking {
                    count.handshaking = count.handshaking.saturating_sub(1);
                }
                if count.open == 0 {
                    counts.remove(&self.ip);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, handshaking: u32) -> ConnLimits {
        ConnLimits {
            player_send_buffer: 0,
            max_per_ip: per_ip,
            max_handshaking_per_ip: handshaking,
            max_name_bytes: 1024,
        }
    }

    #[test]
    fn per_ip_and_handshaking_limits_and_release() {
        let table = Rc::new(IpTable::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let l = limits(3, 2);
        let mut a = table.admit(ip, &l).unwrap();
        let _b = table.admit(ip, &l).unwrap();
        assert_eq!(table.admit(ip, &l).unwrap_err(), Refusal::HandshakingPerIp);
        assert!(table.admit(other, &l).is_ok(), "other addresses are not affected");
        a.handshake_done();
        let mut c = table.admit(ip, &l).unwrap();
        c.handshake_done();
        assert_eq!(table.admit(ip, &l).unwrap_err(), Refusal::PerIp);
        drop(a);
        assert!(table.admit(ip, &l).is_ok());
    }

    #[test]
    fn closing_everything_forgets_the_address() {
        let table = Rc::new(IpTable::default());
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let admissions: Vec<_> =
            (0..5).map(|_| table.admit(ip, &limits(10, 10)).unwrap()).collect();
        assert_eq!(table.addresses(), 1);
        drop(admissions);
        assert_eq!(table.addresses(), 0);
    }
}
