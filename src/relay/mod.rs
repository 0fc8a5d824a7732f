//! Outbound relays (restreaming): every publish of a matching stream is pushed to one or more
//! `rtmp://` / `rtmps://` destinations, each an outbound RTMP client session (rtmp-proto's
//! [`ClientSession`](rtmp_proto::session::ClientSession)) driven on the stream's owner shard.
//! The other way, a **pull** feeds a named local stream from an upstream URL: a source of the
//! stream, not a sink (see [`pull`]).
//!
//! Each destination is a **sink** of the stream (design.md): a [`Subscriber`] of kind relay
//! with its own [`OutQueue`] under the slow-sink policy (invariant 6) and its own hard limit,
//! so a slow or dead destination never slows the stream, its players or the other
//! destinations. A push:
//! - starts when the publish starts ([`PublishHook::published`]); it connects, publishes, and
//!   only then joins the stream, which hands it the late-join cache first (metadata as
//!   `@setDataFrame`, sequence headers, the GOP from its keyframe), then every frame;
//! - ends when the publish ends: `FCUnpublish` and `deleteStream` go out after what is queued,
//!   so the destination sees the stream end (not just a dropped connection);
//! - after any failure (refused, reset, stalled, over its hard limit, a bad certificate) waits
//!   an exponential backoff with jitter and starts again, resuming at a keyframe.
//!
//! Placed between `config` and `conn` in the layering: it uses conn's socket (and its TLS
//! layer) and the stream's sinks; the runtime installs one [`PushRelays`] per shard.
//!
//! [`Subscriber`]: crate::stream::Subscriber
//! [`OutQueue`]: crate::stream::OutQueue
//! [`PublishHook::published`]: crate::stream::PublishHook::published

mod outbound;
pub mod pull;
mod push;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rtmp_proto::session::SessionConfig;
use tracing::{info, Instrument};

use crate::metrics::PushStats;
use crate::stream::{PublishHook, RelaySettings, Stream, StreamKey};

pub use pull::{PullMode, PullRelays, PullSettings, PullSpec};
pub use push::PushHandle;

/// A destination URL as configured: `rtmp[s]://host[:port]/app[/more]/name`, where the last
/// path segment (query included) is the stream name and the rest the app. `{app}` and `{name}`
/// in the app or name are replaced by the local stream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    pub name: String,
}

impl Destination {
    pub fn parse(url: &str) -> Result<Destination, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rtmps://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("rtmp://") {
            (false, rest)
        } else {
            return Err(format!("{}: not an rtmp:// or rtmps:// URL", mask_url(url)));
        };
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| format!("{}: no app and stream name in the URL", mask_url(url)))?;
        let (host, port) = match authority.rsplit_once(':') {
            // [v6]:port or host:port; a bare IPv6 literal needs brackets.
            Some((host, port)) if !host.ends_with(':') => (
                host,
                port.parse::<u16>().map_err(|_| format!("{}: bad port {port:?}", mask_url(url)))?,
            ),
            _ => (authority, if tls { 443 } else { 1935 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(format!("{}: no host", mask_url(url)));
        }
        let (app, name) = path
            .rsplit_once('/')
            .ok_or_else(|| format!("{}: the URL needs /app/name", mask_url(url)))?;
        if app.is_empty() || name.is_empty() {
            return Err(format!("{}: the URL needs /app/name", mask_url(url)));
        }
        Ok(Destination {
            tls,
            host: host.to_string(),
            port,
            app: app.to_string(),
            name: name.to_string(),
        })
    }

    /// The concrete target for one local stream.
    pub fn target_for(&self, key: &StreamKey) -> Target {
        let fill = |s: &str| s.replace("{app}", &key.app).replace("{name}", &key.name);
        let app = fill(&self.app);
        let name = fill(&self.name);
        let scheme = if self.tls { "rtmps" } else { "rtmp" };
        let host =
            if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let tc_url = format!("{scheme}://{host}:{}/{app}", self.port);
        let masked = format!("{tc_url}/{}", mask_key(&name));
        Target {
            tls: self.tls,
            host: self.host.clone(),
            port: self.port,
            app,
            name,
            tc_url,
            masked,
        }
    }
}

/// A stream key as logs and metrics may show it: its first two characters, then `***`.
fn mask_key(name: &str) -> String {
    let shown: String = name.chars().take(2).collect();
    format!("{shown}***")
}

/// A URL (possibly not parsable) with its last path segment masked.
pub fn mask_url(url: &str) -> String {
    match url.rsplit_once('/') {
        Some((head, last)) if head.contains("//") && !head.ends_with('/') => {
            format!("{head}/{}", mask_key(last))
        }
        _ => "<url>".to_string(),
    }
}

/// Where one push of one stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub app: String,
    pub name: String,
    pub tc_url: String,
    /// The URL with the stream key masked: what logs, metrics and the stats API show.
    pub masked: String,
}

/// Which streams a push rule applies to, and where it sends them.
#[derive(Debug, Clone)]
pub struct PushRule {
    /// The app whose streams are pushed (`None`: every app).
    pub app: Option<String>,
    /// Stream names pushed: `*` matches any run of characters (`None`: every name).
    pub pattern: Option<String>,
    pub destination: Destination,
    /// TLS client configuration for an `rtmps://` destination.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

impl PushRule {
    pub fn matches(&self, key: &StreamKey) -> bool {
        self.app.as_ref().is_none_or(|app| *app == key.app)
            && self.pattern.as_ref().is_none_or(|p| glob(p, &key.name))
    }
}

/// `*`-only glob matching (no other metacharacters).
pub fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

/// The push knobs, as every shard applies them.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub rules: Vec<PushRule>,
    /// Bytes queued for one destination above which it is cut and reconnected.
    pub queue_bytes: usize,
    /// First wait after a failure; doubles with each failure in a row, up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Time to connect, handshake (TCP, TLS, RTMP) and get `NetStream.Publish.Start`.
    pub connect_timeout: Duration,
    /// The outbound sessions' protocol limits (what the destination may send us).
    pub session: SessionConfig,
}

impl Default for PushSettings {
    fn default() -> Self {
        Self {
            rules: Vec::new(),
            queue_bytes: 16 << 20,
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            session: SessionConfig::default(),
        }
    }
}

/// One shard's push relays: started and stopped with the publishes of the streams it owns.
#[derive(Debug)]
pub struct PushRelays {
    settings: Rc<PushSettings>,
    relay: RelaySettings,
    shard_id: usize,
    /// Pushes of the current publishes, by stream uid.
    active: RefCell<HashMap<u64, Vec<Rc<PushHandle>>>>,
    next_id: Cell<u64>,
    rng: Cell<u64>,
}

impl PushRelays {
    pub fn new(settings: PushSettings, relay: RelaySettings, shard_id: usize) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x2545_f491, |d| d.as_nanos() as u64);
        Self {
            settings: Rc::new(settings),
            relay,
            shard_id,
            active: RefCell::new(HashMap::new()),
            // Sink ids: the shard in the top bits (like connection ids), bit 47 set so they
            // never equal a connection's.
            next_id: Cell::new(((shard_id as u64) << 48) | (1 << 47)),
            rng: Cell::new(seed ^ (shard_id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        }
    }

    /// Whether any rule could push anything.
    pub fn is_empty(&self) -> bool {
        self.settings.rules.is_empty()
    }

    /// Every push of this shard, for the stats.
    pub fn stats(&self, now: Instant) -> Vec<PushStats> {
        let active = self.active.borrow();
        active.values().flatten().map(|handle| handle.stats(now)).collect()
    }

    fn next_seed(&self) -> u64 {
        let mut state = self.rng.get();
        let seed = crate::conn::xorshift(&mut state);
        self.rng.set(state);
        seed
    }
}

impl PublishHook for PushRelays {
    fn published(&self, stream: &Rc<Stream>, _now: Instant) {
        let mut handles = Vec::new();
        for rule in self.settings.rules.iter().filter(|r| r.matches(&stream.key)) {
            let id = self.next_id.get() + 1;
            self.next_id.set(id);
            let target = rule.destination.target_for(&stream.key);
            info!(stream = %stream.key, destination = %target.masked, "push starting");
            let handle = Rc::new(PushHandle::new(id, stream.clone(), target, rule.tls.clone()));
            let span = tracing::info_span!("push", shard = self.shard_id, stream = %stream.key,
                destination = %handle.target.masked);
            let task = push::run(
                handle.clone(),
                self.settings.clone(),
                self.relay.clone(),
                self.next_seed(),
            );
            glommio::spawn_local(task.instrument(span)).detach();
            handles.push(handle);
        }
        if !handles.is_empty() {
            // A stale entry of the same uid (a republish) is stopped first.
            if let Some(old) = self.active.borrow_mut().insert(stream.uid(), handles) {
                old.iter().for_each(|h| h.stop());
            }
        }
    }

    fn unpublished(&self, stream: &Rc<Stream>, _now: Instant) {
        let handles = self.active.borrow_mut().remove(&stream.uid());
        for handle in handles.into_iter().flatten() {
            handle.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_host_port_app_and_name() {
        let d = Destination::parse("rtmps://live-api-s.facebook.com:443/rtmp/{name}").unwrap();
        assert!(d.tls);
        assert_eq!((d.host.as_str(), d.port), ("live-api-s.facebook.com", 443));
        assert_eq!((d.app.as_str(), d.name.as_str()), ("rtmp", "{name}"));
        let d = Destination::parse("rtmp://127.0.0.2/live/app2/key?x=1").unwrap();
        assert_eq!((d.port, d.app.as_str(), d.name.as_str()), (1935, "live/app2", "key?x=1"));
        let d = Destination::parse("rtmps://[::1]:8443/{app}/{name}").unwrap();
        assert_eq!((d.host.as_str(), d.port), ("::1", 8443));
        for bad in ["http://x/a/b", "rtmp://host", "rtmp://host/onlyapp", "rtmp://h:port/a/b"] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        let err = Destination::parse("rtmp://host:99999/app/secret-key").unwrap_err();
        assert!(!err.contains("secret-key"), "errors mask the key: {err}");
    }

    #[test]
    fn targets_fill_the_template_and_mask_the_key() {
        let d = Destination::parse("rtmps://[::1]:8443/{app}-out/{name}").unwrap();
        let t = d.target_for(&StreamKey::new("live", "secret"));
        assert_eq!(t.tc_url, "rtmps://[::1]:8443/live-out");
        assert_eq!(t.name, "secret");
        assert_eq!(t.masked, "rtmps://[::1]:8443/live-out/se***");
    }

    #[test]
    fn rules_match_by_app_and_glob() {
        assert!(glob("cam*", "cam1") && glob("*", "") && glob("a*b*c", "aXXbYYc"));
        assert!(!glob("cam*", "xcam") && !glob("a*b", "ab-") && !glob("ab*ba", "aba"));
        let rule = PushRule {
            app: Some("live".into()),
            pattern: Some("cam*".into()),
            destination: Destination::parse("rtmp://h/a/{name}").unwrap(),
            tls: None,
        };
        assert!(rule.matches(&StreamKey::new("live", "cam2")));
        assert!(!rule.matches(&StreamKey::new("other", "cam2")));
        assert!(!rule.matches(&StreamKey::new("live", "studio")));
    }
}
