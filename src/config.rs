//! One `Config` for the whole server: every knob with its default, its reason and its unit,
//! from flags, environment or a TOML file, checked by [`Config::validate`] before anything
//! starts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rtmp_proto::session::SessionConfig;
use serde::{Deserialize, Serialize};

// Operations (issue 16): the effective config as TOML for `check-config`, the commented
// default file for the package, and what a reload may change. Kept apart so that the sections
// other features add here merge cleanly.
mod file;
mod reload;
pub use file::{default_config_file, effective_toml, is_secret};
pub use reload::{plan_reload, ReloadPlan, LIVE_KEYS, RESTART_KEYS};

/// The protocol's defaults, which the protocol flags take as theirs.
const SESSION: SessionConfig = SessionConfig::DEFAULT;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// rtmp-relay: a thread-per-core RTMP relay. Publish with
/// `ffmpeg -re -i in.mp4 -c copy -f flv rtmp://HOST/live/KEY`, play with
/// `ffplay rtmp://HOST/live/KEY`.
///
/// Serialised (kebab-case keys, the long flag names) for `check-config`, the default config
/// file and reload's comparison of the running config with the file's.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(name = "rtmp-relay", version, about, long_about = None, args_override_self = true)]
#[command(after_long_help = file::COMMANDS_HELP)]
#[serde(rename_all = "kebab-case")]
pub struct Config {
    /// Address to accept RTMP connections on.
    #[arg(long, env = "RTMP_RELAY_LISTEN", default_value = "0.0.0.0:1935")]
    pub listen: SocketAddr,

    /// Shards: one glommio executor per shard, each pinned to its own core with its own listener
    /// and its own part of the streams. Default: one per core available to the process.
    #[arg(long, env = "RTMP_RELAY_SHARDS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub shards: Option<u16>,

    /// Frames queued to one other shard beyond which video to it skips to the next keyframe
    /// (control messages are never dropped).
    #[arg(long, default_value_t = 4096)]
    pub mesh_frame_limit: usize,

    /// Messages in flight per ordered pair of shards on the channel mesh. Frames beyond it wait
    /// in the sender's outbox, where --mesh-frame-limit applies.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub mesh_channel_capacity: u32,

    /// Control messages (publish requests, subscriptions, answers) queued to one other shard
    /// beyond which that shard counts as stuck: new publishes and plays that need it are
    /// refused (limit `mesh_control_limit`) until it catches up. Releases still go.
    #[arg(long, default_value_t = 65_536)]
    pub mesh_control_limit: usize,

    /// Testing aid: every shard also listens on its own 127.0.0.1 port, so a test can place a
    /// connection on a chosen shard (`ServerHandle::shard_addr`).
    #[arg(long, hide = true)]
    pub debug_shard_listeners: bool,

    /// Testing aid: a play of this stream key panics its connection's task, so a test can see
    /// what a panic does to the process (it must exit loudly, not run on with a dead shard).
    #[arg(long, hide = true)]
    pub debug_panic_on_key: Option<String>,

    /// Testing aid: a play of this stream key blocks its shard's thread for
    /// --debug-stall-secs, so a test can see the watchdog stop while a shard does not answer.
    #[arg(long, hide = true)]
    pub debug_stall_on_key: Option<String>,

    /// Testing aid: how long --debug-stall-on-key blocks the shard.
    #[arg(long, hide = true, default_value_t = 10)]
    pub debug_stall_secs: u64,

    /// Address of the HTTP control plane: /metrics (Prometheus), /api/streams (JSON), /healthz.
    /// Keep it on localhost or behind a firewall: it lists peers and stream keys.
    #[arg(long, env = "RTMP_RELAY_HTTP", default_value = "127.0.0.1:8935")]
    pub http: SocketAddr,

    /// Do not start the HTTP control plane.
    #[arg(long)]
    pub no_http: bool,

    /// Log filter (tracing-subscriber EnvFilter syntax: `info`, `rtmp_relay=debug`, ...).
    #[arg(long, env = "RTMP_RELAY_LOG", default_value = "info")]
    pub log_level: String,

    /// Log output format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Chunk size the server announces and writes with. Larger chunks mean fewer chunk headers
    /// and fewer bytes to copy per frame; 4096 is what ffmpeg and OBS use.
    #[arg(long, default_value_t = SESSION.out_chunk_size, value_parser = clap::value_parser!(u32).range(128..=16_777_215))]
    pub out_chunk_size: u32,

    /// Largest RTMP message accepted from a client, in bytes. Far above a 4K keyframe; stops a
    /// client from making the server buffer a declared 16 MiB message.
    #[arg(long, default_value_t = SESSION.chunk_limits.max_message_len)]
    pub max_message_bytes: u32,

    /// Most bytes of late-join cache (the current GOP) kept per stream. A stream whose GOP
    /// outgrows it stops caching until the next keyframe: late joiners then wait for it.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub gop_cache_max_bytes: usize,

    /// Most milliseconds of media in the late-join cache per stream. Streams with a longer
    /// keyframe interval are not cached: their late joiners wait for the next keyframe.
    #[arg(long, default_value_t = 6_000)]
    pub gop_cache_max_ms: u32,

    /// How far behind live (milliseconds of media queued) a player may fall before it skips to
    /// the next keyframe. Audio and sequence headers are still delivered while it skips. Must
    /// exceed --gop-cache-max-ms, since a late joiner starts one GOP behind.
    #[arg(long, alias = "subscriber-soft-lag-ms", default_value_t = 8_000)]
    pub player_soft_lag_ms: u32,

    /// Queued bytes for one player above which it is disconnected.
    #[arg(long, alias = "subscriber-hard-limit-bytes", default_value_t = 64 * 1024 * 1024)]
    pub player_hard_limit_bytes: usize,

    /// Seconds a player may make no write progress, with data queued, before it is disconnected.
    #[arg(long, alias = "subscriber-stall-secs", default_value_t = 15)]
    pub player_stall_secs: u64,

    /// Kernel send buffer for players' sockets, in bytes (Linux doubles it); 0 keeps kernel
    /// autotuning. Autotuning grows it to several MiB, which hides a slow player from the relay
    /// for half a minute at 2.5 Mbit/s; the default holds 20 Mbit/s at 200 ms RTT.
    #[arg(long, default_value_t = 256 * 1024)]
    pub player_send_buffer_bytes: usize,

    /// Seconds players stay attached to a stream whose publisher left, waiting for a republish.
    #[arg(long, default_value_t = 30)]
    pub republish_wait_secs: u64,

    /// Seconds a client has to complete the handshake and connect. Stops slowloris-style
    /// clients from holding connections open without speaking.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout_secs: u64,

    /// Seconds a connected client has to publish or play before it is closed (counted from its
    /// `connect`, and afresh from the end of its last publish or play).
    #[arg(long, default_value_t = 30)]
    pub idle_before_play_secs: u64,

    /// Seconds a publisher may send nothing before it is closed (its players then wait for a
    /// republish). Encoders send media continuously; a silent one is gone or wedged.
    #[arg(long, default_value_t = 30)]
    pub publisher_idle_secs: u64,

    /// Most open connections on the server (divided evenly among shards). Stops descriptor
    /// and memory exhaustion by connection floods.
    #[arg(long, default_value_t = 20_000)]
    pub max_connections: usize,

    /// Most open connections from one IP address.
    #[arg(long, default_value_t = 1_000)]
    pub max_connections_per_ip: u32,

    /// Most connections from one IP address still in the handshake (before `connect`). A
    /// flood of half-open handshakes from one address cannot crowd out other clients. High
    /// enough for a restreaming host or a NAT that reconnects a hundred clients at once.
    #[arg(long, default_value_t = 200)]
    pub max_handshaking_per_ip: u32,

    /// Most streams (published or waited for) per shard.
    #[arg(long, default_value_t = 10_000)]
    pub max_streams_per_shard: usize,

    /// Most players of one stream on one shard.
    #[arg(long, alias = "max-subscribers-per-stream", default_value_t = 10_000)]
    pub max_players_per_stream: usize,

    /// Longest app name or stream key accepted, in bytes. Names end up in log lines, metric
    /// labels, map keys and file names; real keys are a few dozen bytes.
    #[arg(long, default_value_t = 1024)]
    pub max_stream_name_bytes: usize,

    /// Most chunk streams one connection may use (real clients use fewer than 10).
    #[arg(long, default_value_t = SESSION.chunk_limits.max_chunk_streams)]
    pub max_chunk_streams: usize,

    /// Most bytes one connection may hold in partially received messages.
    #[arg(long, default_value_t = SESSION.chunk_limits.max_partial_bytes)]
    pub max_partial_bytes: usize,

    /// Deepest AMF nesting accepted in commands and metadata.
    #[arg(long, default_value_t = SESSION.amf_limits.max_depth)]
    pub max_amf_depth: usize,

    /// Longest AMF string accepted, in bytes.
    #[arg(long, default_value_t = SESSION.amf_limits.max_string_len)]
    pub max_amf_string_bytes: usize,

    /// Most elements of one AMF array or object accepted (a 16 MiB metadata message of empty
    /// keys would otherwise cost millions of allocations).
    #[arg(long, default_value_t = SESSION.amf_limits.max_elements)]
    pub max_amf_elements: usize,

    /// Most message streams (createStream) one connection may open. Real clients open one;
    /// each costs a little state.
    #[arg(long, default_value_t = SESSION.max_message_streams)]
    pub max_message_streams: usize,

    /// Window Acknowledgement Size announced to clients, in bytes: how often they acknowledge
    /// what they received (which the stats API shows per player as unacknowledged bytes).
    #[arg(long, default_value_t = SESSION.window_ack_size)]
    pub window_ack_size: u32,

    /// Seconds a graceful shutdown waits for connections to flush their last messages and
    /// for recordings to close.
    #[arg(long, default_value_t = 5)]
    pub shutdown_timeout_secs: u64,

    /// Record every published stream as FLV into this directory (created if missing; its
    /// parent must exist). Off by default.
    #[arg(long, env = "RTMP_RELAY_RECORD_DIR")]
    pub record_dir: Option<std::path::PathBuf>,

    /// Record only streams of these apps (comma-separated); default: every app.
    #[arg(long, value_delimiter = ',')]
    pub record_apps: Vec<String>,

    /// Recording file name, relative to --record-dir; `/` makes subdirectories. Placeholders:
    /// {app}, {key} (without its query), {start} (publish start, UTC, YYYYMMDD-HHMMSS),
    /// {start_ms} (Unix milliseconds), {segment} (000, 001, ...). Keys are untrusted: one that
    /// cannot be made a safe file name is relayed but not recorded.
    #[arg(long, default_value = crate::record::DEFAULT_TEMPLATE)]
    pub record_template: String,

    /// Start a new recording file at the first keyframe this many seconds into the current one
    /// (needs {segment} in the template). Default: one file per publish.
    #[arg(long)]
    pub record_segment_secs: Option<u32>,

    /// Start a new recording file at the first keyframe once the current one has this many
    /// bytes (needs {segment} in the template).
    #[arg(long)]
    pub record_segment_bytes: Option<u64>,

    /// Milliseconds recorded frames may wait in memory before they are handed to the kernel:
    /// bounds what a crash (kill -9) loses from the end of a recording.
    #[arg(long, default_value_t = 1_000)]
    pub record_flush_ms: u64,

    /// Bytes one recording may hold waiting for the disk before it is stopped (relay goes on).
    /// Must exceed the largest keyframe.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub record_buffer_bytes: usize,

    /// Address to accept RTMPS (RTMP over TLS) connections on, e.g. `0.0.0.0:443`. Needs
    /// --rtmps-cert and --rtmps-key (or `[[rtmps-certs]]` in the config file). Same shards,
    /// limits and timeouts as the plain listener; the TLS handshake counts against
    /// --handshake-timeout-secs and --max-handshaking-per-ip.
    #[arg(long, env = "RTMP_RELAY_RTMPS_LISTEN")]
    pub rtmps_listen: Option<SocketAddr>,

    /// The RTMPS listener's certificate chain, PEM, leaf first: its default certificate.
    #[arg(long, env = "RTMP_RELAY_RTMPS_CERT")]
    pub rtmps_cert: Option<std::path::PathBuf>,

    /// The private key of --rtmps-cert, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "RTMP_RELAY_RTMPS_KEY")]
    pub rtmps_key: Option<std::path::PathBuf>,

    /// Seconds between looks at the certificate files; a changed file is reloaded without
    /// dropping a session (a bad one is refused, logged, and the old certificate kept). SIGHUP
    /// reloads at once. 0: only on SIGHUP.
    #[arg(long, default_value_t = 5)]
    pub tls_reload_check_secs: u64,

    /// More RTMPS certificates, chosen by SNI (config file only): `[[rtmps-certs]]` tables with
    /// `cert`, `key` and `names = ["live.example.com", "*.example.net"]`.
    #[arg(skip)]
    #[serde(skip)]
    pub rtmps_certs: Vec<CertEntry>,

    /// Push every published stream to this URL (`rtmp://` or `rtmps://`; `{app}` and `{name}`
    /// are replaced by the stream's). Per-app rules with patterns: `[[push]]` in the config file.
    #[arg(long, env = "RTMP_RELAY_PUSH")]
    pub push: Option<String>,

    /// Push rules (config file only): `[[push]]` tables with `url`, and optionally `app`,
    /// `names` (a `*` pattern), `ca-file`, `insecure-skip-verify`, `pin-sha256`.
    #[arg(skip)]
    #[serde(skip)]
    pub pushes: Vec<PushEntry>,

    /// Bytes queued for one push destination above which it is disconnected and reconnected
    /// (a destination slower than the stream; video is skipped to the next keyframe long
    /// before, past --player-soft-lag-ms).
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub push_queue_bytes: usize,

    /// Milliseconds before the first retry of a failed push; doubles per failure in a row.
    #[arg(long, default_value_t = 500)]
    pub push_backoff_min_ms: u64,

    /// Longest wait between two attempts of a failing push, in seconds.
    #[arg(long, default_value_t = 30)]
    pub push_backoff_max_secs: u64,

    /// Seconds a push has to connect, complete its handshakes and start publishing.
    #[arg(long, default_value_t = 10)]
    pub push_connect_timeout_secs: u64,

    /// CA certificates (PEM) that rtmps:// push destinations are verified against, instead of
    /// the Mozilla root set built in.
    #[arg(long)]
    pub push_ca_file: Option<std::path::PathBuf>,

    /// Do not verify rtmps:// push destinations' certificates (testing with self-signed
    /// certificates only: the connection is encrypted, not authenticated).
    #[arg(long)]
    pub push_insecure_skip_verify: bool,

    /// Who may publish, for apps without an `[auth.apps.NAME]` section: open (anyone; the
    /// default), token (a signed JWT in `?token=`), callback (the HTTP backend decides),
    /// token-or-callback, deny. Publishing open on a non-loopback listener logs a warning.
    #[arg(long, default_value = "open")]
    pub publish_auth: crate::auth::Method,

    /// Who may play, for apps without an `[auth.apps.NAME]` section (same methods).
    #[arg(long, default_value = "open")]
    pub play_auth: crate::auth::Method,

    /// Address blocks (CIDR, comma-separated) allowed to publish; empty: any. Deny wins.
    #[arg(long, value_delimiter = ',')]
    pub publish_allow: Vec<crate::auth::Cidr>,

    /// Address blocks refused for publishing, whatever else admits them.
    #[arg(long, value_delimiter = ',')]
    pub publish_deny: Vec<crate::auth::Cidr>,

    /// Address blocks allowed to play; empty: any. Deny wins.
    #[arg(long, value_delimiter = ',')]
    pub play_allow: Vec<crate::auth::Cidr>,

    /// Address blocks refused for playing.
    #[arg(long, value_delimiter = ',')]
    pub play_deny: Vec<crate::auth::Cidr>,

    /// JWKS file of token verification keys (chosen by `kid`; HS256, RS256, ES256, EdDSA).
    /// Re-read on SIGHUP and when it changes.
    #[arg(long, env = "RTMP_RELAY_AUTH_KEYS")]
    pub auth_keys: Option<std::path::PathBuf>,

    /// Milliseconds between looks at the keys file for changes; 0: reload on SIGHUP only.
    #[arg(long, default_value_t = 2_000)]
    pub auth_keys_poll_ms: u64,

    /// End admitted sessions whose token's key a reload removed (within a second). Off: a
    /// reload only affects new sessions.
    #[arg(long)]
    pub auth_revoke_on_key_removal: bool,

    /// Longest token accepted, in bytes (longer ones are refused and counted as the
    /// `auth_max_token_bytes` limit).
    #[arg(long, default_value_t = 4096)]
    pub auth_max_token_bytes: usize,

    /// Seconds of clock skew allowed on a token's exp and nbf.
    #[arg(long, default_value_t = 5)]
    pub auth_leeway_secs: u64,

    /// HTTP URL (http://host:port/path) of the callback backend for every event (on_publish,
    /// on_play, on_publish_done, on_play_done; the body's `event` says which).
    /// `[auth.callback]` in the config file sets them one by one.
    #[arg(long, env = "RTMP_RELAY_AUTH_CALLBACK")]
    pub auth_callback: Option<String>,

    /// File holding the shared secret callback requests are signed with (HMAC-SHA256 of the
    /// body, header X-Rtmp-Relay-Signature: sha256=HEX). At least 16 bytes; required with
    /// callbacks.
    #[arg(long, env = "RTMP_RELAY_AUTH_CALLBACK_SECRET_FILE")]
    pub auth_callback_secret_file: Option<std::path::PathBuf>,

    /// Deadline of one callback call (connect, request, answer), in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    pub auth_callback_timeout_ms: u64,

    /// Decision callbacks in flight at once; over it the action's fail policy applies.
    #[arg(long, default_value_t = 256)]
    pub auth_callback_max_in_flight: usize,

    /// Seconds an allow or deny answer is reused for the same request; 0: no cache.
    #[arg(long, default_value_t = 5)]
    pub auth_callback_cache_secs: u64,

    /// Most answers cached (the oldest are evicted first).
    #[arg(long, default_value_t = 10_000)]
    pub auth_callback_cache_entries: usize,

    /// Largest callback answer read, in bytes; a larger one is a failure.
    #[arg(long, default_value_t = 64 * 1024)]
    pub auth_callback_max_answer_bytes: usize,

    /// Done events (on_publish_done, on_play_done) waiting for delivery; when full the oldest
    /// is dropped and counted.
    #[arg(long, default_value_t = 1024)]
    pub auth_done_queue: usize,

    /// Retries of a done event that failed, with doubling pauses from 250 ms.
    #[arg(long, default_value_t = 3)]
    pub auth_done_retries: u32,

    /// What a failed publish callback (5xx, timeout, refused, garbage, over capacity) means.
    #[arg(long, default_value = "deny")]
    pub auth_fail_publish: crate::auth::FailPolicy,

    /// What a failed play callback means.
    #[arg(long, default_value = "deny")]
    pub auth_fail_play: crate::auth::FailPolicy,

    /// This node's name in callback bodies. Default: the host name.
    #[arg(long, env = "RTMP_RELAY_NODE_ID")]
    pub node_id: Option<String>,

    /// Per-app access policies, secret-key maps and per-event callback URLs: the `[auth]`
    /// section of the config file (see README, "Access control").
    #[arg(skip)]
    #[serde(skip)]
    pub auth_file: AuthSection,

    /// Feed one local stream from an upstream: `APP/NAME=URL` (`rtmp://` or `rtmps://`), run
    /// as --pull-mode says. More, with TLS options: `[[pull]]` in the config file. A pulled key
    /// cannot be published by a connection (refused with NetStream.Publish.BadName).
    #[arg(long, env = "RTMP_RELAY_PULL")]
    pub pull: Option<String>,

    /// When the --pull stream runs: `always`, or `on-demand` (from its first player until
    /// --pull-linger-secs after its last).
    #[arg(long, default_value = "on-demand")]
    pub pull_mode: String,

    /// Pulls (config file only): `[[pull]]` tables with `app`, `name`, `url`, and optionally
    /// `mode` (`always` or `on-demand`, the default), `ca-file`, `insecure-skip-verify`,
    /// `pin-sha256`.
    #[arg(skip)]
    #[serde(skip)]
    pub pulls: Vec<PullEntry>,

    /// Seconds an on-demand pull keeps running after its last player left (a viewer who comes
    /// back finds the GOP cache warm).
    #[arg(long, default_value_t = 10)]
    pub pull_linger_secs: u64,

    /// Milliseconds before the first retry of a failed pull; doubles per failure in a row.
    #[arg(long, default_value_t = 500)]
    pub pull_backoff_min_ms: u64,

    /// Longest wait between two attempts of a failing pull, in seconds.
    #[arg(long, default_value_t = 30)]
    pub pull_backoff_max_secs: u64,

    /// Seconds a pull has to connect, complete its handshakes and get NetStream.Play.Start.
    #[arg(long, default_value_t = 10)]
    pub pull_connect_timeout_secs: u64,

    /// Pull connection attempts started per second on the server (each shard its share); an
    /// attempt over it waits (players asking for many on-demand pulls at once, or many failing
    /// upstreams, cannot turn the server into a connection flood).
    #[arg(long, default_value_t = 20)]
    pub pull_attempts_per_sec: u32,

    /// Pull attempts connecting at once on the server (each shard its share); an attempt over
    /// it waits.
    #[arg(long, default_value_t = 16)]
    pub pull_attempts_in_flight: usize,

    /// CA certificates (PEM) that rtmps:// pull upstreams are verified against, instead of the
    /// Mozilla root set built in.
    #[arg(long)]
    pub pull_ca_file: Option<std::path::PathBuf>,

    /// Do not verify rtmps:// pull upstreams' certificates (testing with self-signed
    /// certificates only).
    #[arg(long)]
    pub pull_insecure_skip_verify: bool,

    /// A TOML file of settings: keys are the long flag names (`listen = "0.0.0.0:1935"`,
    /// `shards = 8`, `record-dir = "/var/lib/rtmp-relay"`; `_` or `-` alike). Flags given on the
    /// command line override it.
    #[arg(long, env = "RTMP_RELAY_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// One RTMPS certificate of the config file (`[[rtmps-certs]]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CertEntry {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    #[serde(default)]
    pub names: Vec<String>,
}

/// One push rule of the config file (`[[push]]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PushEntry {
    /// Destination URL; `{app}` and `{name}` are replaced by the local stream's.
    pub url: String,
    /// Only streams of this app (default: every app).
    pub app: Option<String>,
    /// Only stream names matching this `*` pattern (default: every name).
    pub names: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// SHA-256 fingerprint of the destination's certificate (hex, colons allowed).
    pub pin_sha256: Option<String>,
}

/// One pull of the config file (`[[pull]]`): the local stream `app`/`name` fed from `url`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PullEntry {
    pub app: String,
    pub name: String,
    /// Upstream URL; `{app}` and `{name}` are replaced by the local stream's.
    pub url: String,
    /// `always` or `on-demand` (default).
    pub mode: Option<String>,
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// SHA-256 fingerprint of the upstream's certificate (hex, colons allowed).
    pub pin_sha256: Option<String>,
}

/// The structured sections of a config file, which are not flags.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Sections {
    #[serde(default, alias = "rtmps_certs")]
    rtmps_certs: Vec<CertEntry>,
    #[serde(default)]
    push: Vec<PushEntry>,
    #[serde(default)]
    pull: Vec<PullEntry>,
}

/// A config file that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Invalid { path: std::path::PathBuf, message: String },
    #[error(transparent)]
    Flags(#[from] clap::Error),
}

impl Config {
    /// The configuration from the command line and, with `--config FILE`, the TOML file it
    /// names. The file's settings become flags placed before the command line's, so clap checks
    /// them exactly like flags (unknown keys and bad values are refused with the key's name)
    /// and whatever the command line says wins.
    pub fn load<I, T>(args: I) -> Result<Config, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let from_flags = Config::try_parse_from(&args)?;
        let Some(path) = from_flags.config.clone() else { return Ok(from_flags) };
        let text = std::fs::read_to_string(&path)
            .map_err(|source| LoadError::Read { path: path.clone(), source })?;
        let invalid = |message: String| LoadError::Invalid { path: path.clone(), message };
        let mut table: toml::Table =
            text.parse().map_err(|e: toml::de::Error| invalid(e.message().to_owned()))?;
        let auth: AuthSection = match table.remove("auth") {
            Some(section) => section
                .try_into()
                .map_err(|e: toml::de::Error| invalid(format!("[auth]: {}", e.message())))?,
            None => AuthSection::default(),
        };
        let (file_flags, sections) = toml_to_flags(table).map_err(invalid)?;
        let mut merged = Vec::with_capacity(args.len() + file_flags.len());
        merged.extend(args.first().cloned());
        merged.extend(file_flags.into_iter().map(Into::into));
        merged.extend(args.into_iter().skip(1));
        let mut config = Config::try_parse_from(merged)?;
        config.rtmps_certs = sections.rtmps_certs;
        config.pushes = sections.push;
        config.auth_file = auth;
        config.pulls = sections.pull;
        Ok(config)
    }
}

/// `key = value` pairs of a TOML table as `--key=value` flags (arrays joined with commas,
/// `true` booleans as bare flags), and the structured sections (`[[rtmps-certs]]`, `[[push]]`,
/// `[[pull]]`).
fn toml_to_flags(mut table: toml::Table) -> Result<(Vec<String>, Sections), String> {
    let mut sections = toml::Table::new();
    for name in ["rtmps-certs", "rtmps_certs", "push", "pull"] {
        if let Some(value) = table.remove(name) {
            sections.insert(name.replace('_', "-"), value);
        }
    }
    let sections: Sections = toml::Value::Table(sections)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_owned())?;
    let mut flags = Vec::with_capacity(table.len());
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        if flag == "--config" {
            return Err("a config file cannot name another config file".into());
        }
        let scalar = |value: &toml::Value| match value {
            toml::Value::String(s) => Ok(s.clone()),
            toml::Value::Integer(i) => Ok(i.to_string()),
            toml::Value::Float(f) => Ok(f.to_string()),
            other => Err(format!("{key}: unsupported value {other}")),
        };
        match &value {
            toml::Value::Boolean(true) => flags.push(flag),
            toml::Value::Boolean(false) => {}
            // An empty list is the default (no flag), not one empty item.
            toml::Value::Array(items) if items.is_empty() => {}
            toml::Value::Array(items) => {
                let items: Result<Vec<String>, String> = items.iter().map(scalar).collect();
                flags.push(format!("{flag}={}", items?.join(",")));
            }
            other => flags.push(format!("{flag}={}", scalar(other)?)),
        }
    }
    Ok((flags, sections))
}

impl Default for Config {
    fn default() -> Self {
        // The defaults live in the clap attributes; parsing no arguments is how to get them.
        Config::parse_from(["rtmp-relay"])
    }
}

/// The `[auth]` section of the config file.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// `[auth.apps.NAME]`: one app's policy.
    #[serde(default)]
    pub apps: std::collections::BTreeMap<String, AppSection>,
    /// `[auth.callback]`: per-event URLs (each defaults to `--auth-callback`).
    #[serde(default)]
    pub callback: CallbackUrls,
}

/// `[auth.apps.NAME]`: what it leaves out comes from the flags' default policy.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppSection {
    pub publish: Option<crate::auth::Method>,
    pub play: Option<crate::auth::Method>,
    pub publish_allow: Option<Vec<String>>,
    pub publish_deny: Option<Vec<String>>,
    pub play_allow: Option<Vec<String>>,
    pub play_deny: Option<Vec<String>>,
    pub publish_fail: Option<crate::auth::FailPolicy>,
    pub play_fail: Option<crate::auth::FailPolicy>,
    /// `[auth.apps.NAME.names]`: secret publish key = "public name".
    #[serde(default)]
    pub names: std::collections::BTreeMap<String, String>,
}

/// `[auth.callback]`.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallbackUrls {
    pub on_publish: Option<String>,
    pub on_play: Option<String>,
    pub on_publish_done: Option<String>,
    pub on_play_done: Option<String>,
}

/// The host name, for callback bodies' `node_id`.
fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let len = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..len]) {
        Ok(name) if rc == 0 && !name.is_empty() => name.to_owned(),
        _ => "rtmp-relay".to_owned(),
    }
}

/// The TLS options of one outbound URL (push or pull), as configured.
struct ClientTls<'a> {
    ca_file: Option<std::path::PathBuf>,
    insecure_skip_verify: bool,
    pin_sha256: Option<&'a str>,
}

impl ClientTls<'_> {
    fn build(self) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        let pin = self
            .pin_sha256
            .map(crate::tls::parse_fingerprint)
            .transpose()
            .map_err(|e| format!("pin-sha256 {e}"))?;
        let options = crate::tls::ClientTlsOptions {
            ca_file: self.ca_file,
            insecure_skip_verify: self.insecure_skip_verify,
            pin_sha256: pin,
        };
        crate::tls::client_config(&options).map_err(|e| e.to_string())
    }
}

/// A configuration that cannot work, with the knob to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl Config {
    /// Checks relations between knobs that clap cannot see one at a time.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.player_soft_lag_ms <= self.gop_cache_max_ms {
            return Err(ConfigError(format!(
                "--player-soft-lag-ms ({}) must exceed --gop-cache-max-ms ({}): late joiners \
                 start one cached GOP behind live",
                self.player_soft_lag_ms, self.gop_cache_max_ms
            )));
        }
        self.auth_settings()?;
        if let Some(record) = self.record_config() {
            record.validate().map_err(|e| match e {
                crate::record::RecordError::Template(problem) => {
                    ConfigError(format!("--record-template: {problem}"))
                }
                crate::record::RecordError::Config { knob, problem } => {
                    let flag = match knob {
                        "flush_interval" => "record-flush-ms".to_owned(),
                        knob => format!("record-{}", knob.replace('_', "-")),
                    };
                    ConfigError(format!("--{flag}: {problem}"))
                }
                other => ConfigError(format!("recording: {other}")),
            })?;
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(ConfigError(format!(
                "--log-level ({:?}) is not a valid log filter: {e}",
                self.log_level
            )));
        }
        if self.rtmps_listen.is_some() && self.rtmps_cert_specs().is_empty() {
            return Err(ConfigError(
                "--rtmps-listen needs a certificate: --rtmps-cert and --rtmps-key, or \
                 [[rtmps-certs]] in the config file"
                    .into(),
            ));
        }
        if self.rtmps_cert.is_some() != self.rtmps_key.is_some() {
            return Err(ConfigError("--rtmps-cert and --rtmps-key go together".into()));
        }
        if self.pull_backoff_min_ms == 0
            || self.pull_connect_timeout_secs == 0
            || self.pull_attempts_per_sec == 0
            || self.pull_attempts_in_flight == 0
        {
            return Err(ConfigError(
                "--pull-backoff-min-ms, --pull-connect-timeout-secs, --pull-attempts-per-sec \
                 and --pull-attempts-in-flight must be above 0"
                    .into(),
            ));
        }
        if self.push_backoff_min_ms == 0 || self.push_connect_timeout_secs == 0 {
            return Err(ConfigError(
                "--push-backoff-min-ms and --push-connect-timeout-secs must be above 0".into(),
            ));
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 0xff_ffff {
            return Err(ConfigError(format!(
                "--max-message-bytes ({}) must be in 1..=16777215 (the chunk header's 24-bit length)",
                self.max_message_bytes
            )));
        }
        Ok(())
    }

    /// The shard count: `--shards`, or one per core this process may run on.
    pub fn shard_count(&self) -> usize {
        match self.shards {
            Some(n) => usize::from(n),
            None => core_affinity::get_core_ids()
                .map(|cores| cores.len())
                .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
                .unwrap_or(1)
                .max(1),
        }
    }

    pub fn player_stall(&self) -> Duration {
        Duration::from_secs(self.player_stall_secs)
    }

    pub fn republish_wait(&self) -> Duration {
        Duration::from_secs(self.republish_wait_secs)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    /// How streams are recorded, if they are (`--record-dir`).
    pub fn record_config(&self) -> Option<crate::record::RecordConfig> {
        let dir = self.record_dir.clone()?;
        Some(crate::record::RecordConfig {
            template: self.record_template.clone(),
            segment_secs: self.record_segment_secs,
            segment_bytes: self.record_segment_bytes,
            flush_interval: Duration::from_millis(self.record_flush_ms),
            buffer_bytes: self.record_buffer_bytes,
            ..crate::record::RecordConfig::new(dir)
        })
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The per-connection limits each of `shards` shards applies: per-IP counts are kept per
    /// shard, so each enforces its share (see `conn::limits`).
    pub fn connection_limits(&self, shards: usize) -> crate::conn::ConnLimits {
        let share = |limit: u32| limit.div_ceil(shards.max(1) as u32).max(1);
        crate::conn::ConnLimits {
            player_send_buffer: self.player_send_buffer_bytes,
            max_per_ip: share(self.max_connections_per_ip),
            max_handshaking_per_ip: share(self.max_handshaking_per_ip),
            max_name_bytes: self.max_stream_name_bytes,
        }
    }

    /// The relay's knobs, as every shard applies them.
    pub fn relay_settings(&self) -> crate::stream::RelaySettings {
        crate::stream::RelaySettings {
            encoder: rtmp_proto::chunk::ChunkEncoder::new(self.out_chunk_size),
            cache: crate::stream::CacheLimits {
                max_bytes: self.gop_cache_max_bytes,
                max_ms: self.gop_cache_max_ms,
            },
            soft_lag_ms: self.player_soft_lag_ms,
            hard_queue_bytes: self.player_hard_limit_bytes,
            stall: self.player_stall(),
            republish_wait: self.republish_wait(),
            max_streams: self.max_streams_per_shard,
            max_subscribers: self.max_players_per_stream,
            record: self.record_config().map(std::rc::Rc::new),
            record_apps: self.record_apps.clone().into(),
        }
    }

    /// The RTMPS listener's certificates: the flags' first (the default), then the file's.
    pub fn rtmps_cert_specs(&self) -> Vec<crate::tls::CertSpec> {
        let mut specs = Vec::new();
        if let (Some(cert), Some(key)) = (&self.rtmps_cert, &self.rtmps_key) {
            specs.push(crate::tls::CertSpec {
                cert: cert.clone(),
                key: key.clone(),
                names: vec![],
            });
        }
        specs.extend(self.rtmps_certs.iter().map(|e| crate::tls::CertSpec {
            cert: e.cert.clone(),
            key: e.key.clone(),
            names: e.names.clone(),
        }));
        specs
    }

    /// The push relays: rules parsed, TLS client configurations built (this reads CA files:
    /// called once at start, off the shards).
    pub fn push_settings(&self) -> Result<crate::relay::PushSettings, ConfigError> {
        let mut entries = self.pushes.clone();
        if let Some(url) = &self.push {
            entries.push(PushEntry {
                url: url.clone(),
                app: None,
                names: None,
                ca_file: None,
                insecure_skip_verify: false,
                pin_sha256: None,
            });
        }
        let mut rules = Vec::with_capacity(entries.len());
        for entry in entries {
            let masked = crate::relay::mask_url(&entry.url);
            let destination = crate::relay::Destination::parse(&entry.url)
                .map_err(|e| ConfigError(format!("push: {e}")))?;
            let tls = if destination.tls {
                let options = ClientTls {
                    ca_file: entry.ca_file.clone().or_else(|| self.push_ca_file.clone()),
                    insecure_skip_verify: entry.insecure_skip_verify
                        || self.push_insecure_skip_verify,
                    pin_sha256: entry.pin_sha256.as_deref(),
                };
                Some(options.build().map_err(|e| ConfigError(format!("push {masked}: {e}")))?)
            } else {
                None
            };
            rules.push(crate::relay::PushRule {
                app: entry.app,
                pattern: entry.names,
                destination,
                tls,
            });
        }
        Ok(crate::relay::PushSettings {
            rules,
            queue_bytes: self.push_queue_bytes,
            backoff_min: Duration::from_millis(self.push_backoff_min_ms),
            backoff_max: Duration::from_secs(self.push_backoff_max_secs)
                .max(Duration::from_millis(self.push_backoff_min_ms)),
            connect_timeout: Duration::from_secs(self.push_connect_timeout_secs),
            session: self.session_config(),
        })
    }

    /// Access control as configured: the default policy from the flags, one policy per
    /// `[auth.apps.NAME]` (fields it leaves out come from the default), keys and callbacks.
    /// Reads the callback secret file (start-up only).
    pub fn auth_settings(&self) -> Result<crate::auth::Settings, ConfigError> {
        use crate::auth::{ActionPolicy, AddressRules, AppPolicy, Policies};
        let default = AppPolicy {
            publish: ActionPolicy {
                method: self.publish_auth,
                addresses: AddressRules {
                    allow: self.publish_allow.clone(),
                    deny: self.publish_deny.clone(),
                },
                fail: self.auth_fail_publish,
            },
            play: ActionPolicy {
                method: self.play_auth,
                addresses: AddressRules {
                    allow: self.play_allow.clone(),
                    deny: self.play_deny.clone(),
                },
                fail: self.auth_fail_play,
            },
            names: Default::default(),
        };
        let cidrs = |app: &str,
                     field: &str,
                     list: &Option<Vec<String>>,
                     inherited: &[crate::auth::Cidr]| {
            match list {
                None => Ok(inherited.to_vec()),
                Some(list) => list
                    .iter()
                    .map(|c| c.parse())
                    .collect::<Result<Vec<crate::auth::Cidr>, String>>()
                    .map_err(|e| ConfigError(format!("[auth.apps.{app}] {field}: {e}"))),
            }
        };
        let mut apps = Vec::new();
        for (name, section) in &self.auth_file.apps {
            let mut policy = default.clone();
            policy.publish.method = section.publish.unwrap_or(default.publish.method);
            policy.play.method = section.play.unwrap_or(default.play.method);
            policy.publish.fail = section.publish_fail.unwrap_or(default.publish.fail);
            policy.play.fail = section.play_fail.unwrap_or(default.play.fail);
            policy.publish.addresses.allow = cidrs(
                name,
                "publish_allow",
                &section.publish_allow,
                &default.publish.addresses.allow,
            )?;
            policy.publish.addresses.deny = cidrs(
                name,
                "publish_deny",
                &section.publish_deny,
                &default.publish.addresses.deny,
            )?;
            policy.play.addresses.allow =
                cidrs(name, "play_allow", &section.play_allow, &default.play.addresses.allow)?;
            policy.play.addresses.deny =
                cidrs(name, "play_deny", &section.play_deny, &default.play.addresses.deny)?;
            for (secret, public) in &section.names {
                let bad = |s: &str| s.is_empty() || s.contains(['/', '?', '\0']);
                if bad(secret) || bad(public) || secret == public {
                    return Err(ConfigError(format!(
                        "[auth.apps.{name}.names]: keys and names must be non-empty, differ, and \
                         hold no '/' or '?'"
                    )));
                }
            }
            policy.names = section.names.clone().into_iter().collect();
            apps.push((name.clone(), policy));
        }
        let urls = &self.auth_file.callback;
        let any_url = self.auth_callback.is_some()
            || urls.on_publish.is_some()
            || urls.on_play.is_some()
            || urls.on_publish_done.is_some()
            || urls.on_play_done.is_some();
        let callback = if any_url {
            let target = |specific: &Option<String>| {
                specific
                    .as_ref()
                    .or(self.auth_callback.as_ref())
                    .map(|url| crate::auth::callback::Target::parse(url))
                    .transpose()
                    .map_err(|e| ConfigError(format!("callback URL: {e}")))
            };
            let secret = match &self.auth_callback_secret_file {
                Some(path) => std::fs::read(path)
                    .map(|mut s| {
                        while s.last().is_some_and(|b| b.is_ascii_whitespace()) {
                            s.pop();
                        }
                        s
                    })
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?,
                None => Vec::new(),
            };
            Some(crate::auth::CallbackConfig {
                on_publish: target(&urls.on_publish)?,
                on_play: target(&urls.on_play)?,
                on_publish_done: target(&urls.on_publish_done)?,
                on_play_done: target(&urls.on_play_done)?,
                secret,
                timeout: Duration::from_millis(self.auth_callback_timeout_ms),
                max_in_flight: self.auth_callback_max_in_flight,
                cache_ttl: Duration::from_secs(self.auth_callback_cache_secs),
                cache_max_entries: self.auth_callback_cache_entries,
                max_answer_bytes: self.auth_callback_max_answer_bytes,
                done_queue: self.auth_done_queue,
                done_retries: self.auth_done_retries,
                done_backoff: Duration::from_millis(250),
            })
        } else {
            None
        };
        let settings = crate::auth::Settings {
            policies: Policies { default, apps },
            keys_file: self.auth_keys.clone(),
            keys_poll: Duration::from_millis(self.auth_keys_poll_ms),
            revoke_on_key_removal: self.auth_revoke_on_key_removal,
            max_token_bytes: self.auth_max_token_bytes,
            leeway_secs: self.auth_leeway_secs,
            callback,
            node_id: self.node_id.clone().unwrap_or_else(host_name),
        };
        settings.validate().map_err(|e| ConfigError(format!("access control: {e}")))?;
        Ok(settings)
    }

    /// The pulls: entries parsed and checked (one per key), TLS client configurations built
    /// (this reads CA files: called once at start, off the shards).
    pub fn pull_settings(&self) -> Result<crate::relay::PullSettings, ConfigError> {
        let mut entries = self.pulls.clone();
        if let Some(flag) = &self.pull {
            let (key, url) =
                flag.split_once('=').ok_or_else(|| ConfigError("--pull: APP/NAME=URL".into()))?;
            let (app, name) =
                key.split_once('/').ok_or_else(|| ConfigError("--pull: APP/NAME=URL".into()))?;
            entries.push(PullEntry {
                app: app.to_string(),
                name: name.to_string(),
                url: url.to_string(),
                mode: Some(self.pull_mode.clone()),
                ca_file: None,
                insecure_skip_verify: false,
                pin_sha256: None,
            });
        }
        let mut pulls: Vec<crate::relay::PullSpec> = Vec::with_capacity(entries.len());
        for entry in entries {
            let masked = crate::relay::mask_url(&entry.url);
            let key = crate::stream::StreamKey::new(entry.app.clone(), entry.name.clone());
            let bad_part = |part: &str| part.is_empty() || part.contains(['/', '?', '{', '}']);
            if bad_part(&entry.app) || bad_part(&entry.name) {
                return Err(ConfigError(format!(
                    "pull {masked}: app {:?} and name {:?} must be non-empty, without '/', '?', \
                     '{{' or '}}'",
                    entry.app, entry.name
                )));
            }
            if pulls.iter().any(|p| p.key == key) {
                return Err(ConfigError(format!(
                    "pull: {key} has two pulls; a key has one source"
                )));
            }
            let mode = crate::relay::PullMode::parse(entry.mode.as_deref().unwrap_or("on-demand"))
                .map_err(|e| ConfigError(format!("pull {key}: {e}")))?;
            let source = crate::relay::Destination::parse(&entry.url)
                .map_err(|e| ConfigError(format!("pull {key}: {e}")))?;
            let tls = if source.tls {
                let options = ClientTls {
                    ca_file: entry.ca_file.clone().or_else(|| self.pull_ca_file.clone()),
                    insecure_skip_verify: entry.insecure_skip_verify
                        || self.pull_insecure_skip_verify,
                    pin_sha256: entry.pin_sha256.as_deref(),
                };
                Some(options.build().map_err(|e| ConfigError(format!("pull {masked}: {e}")))?)
            } else {
                None
            };
            pulls.push(crate::relay::PullSpec { key, source, mode, tls });
        }
        Ok(crate::relay::PullSettings {
            pulls,
            backoff_min: Duration::from_millis(self.pull_backoff_min_ms),
            backoff_max: Duration::from_secs(self.pull_backoff_max_secs)
                .max(Duration::from_millis(self.pull_backoff_min_ms)),
            connect_timeout: Duration::from_secs(self.pull_connect_timeout_secs),
            linger: Duration::from_secs(self.pull_linger_secs),
            attempts_per_sec: self.pull_attempts_per_sec,
            attempts_in_flight: self.pull_attempts_in_flight,
            session: self.session_config(),
        })
    }

    /// The protocol settings every session of this server uses.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            out_chunk_size: self.out_chunk_size,
            chunk_limits: rtmp_proto::chunk::Limits {
                max_message_len: self.max_message_bytes,
                max_chunk_streams: self.max_chunk_streams,
                max_partial_bytes: self.max_partial_bytes,
            },
            amf_limits: rtmp_proto::amf0::AmfLimits {
                max_depth: self.max_amf_depth,
                max_string_len: self.max_amf_string_bytes,
                max_elements: self.max_amf_elements,
            },
            window_ack_size: self.window_ack_size,
            max_message_streams: self.max_message_streams,
            handshake_timeout: self.handshake_timeout(),
            idle_before_play: Duration::from_secs(self.idle_before_play_secs),
            publisher_idle: Duration::from_secs(self.publisher_idle_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = Config::default();
        config.validate().expect("defaults validate");
        assert_eq!(config.listen, "0.0.0.0:1935".parse().unwrap());
    }

    #[test]
    fn the_time_limit_flags_reach_the_session_and_default_alike() {
        let defaults = rtmp_proto::session::SessionConfig::default();
        let session = Config::default().session_config();
        assert_eq!(session.handshake_timeout, defaults.handshake_timeout);
        assert_eq!(session.idle_before_play, defaults.idle_before_play);
        assert_eq!(session.publisher_idle, defaults.publisher_idle);

        let config = Config::parse_from([
            "rtmp-relay",
            "--handshake-timeout-secs",
            "3",
            "--idle-before-play-secs",
            "4",
            "--publisher-idle-secs",
            "5",
        ]);
        let session = config.session_config();
        assert_eq!(session.handshake_timeout, Duration::from_secs(3));
        assert_eq!(session.idle_before_play, Duration::from_secs(4));
        assert_eq!(session.publisher_idle, Duration::from_secs(5));
    }

    #[test]
    fn soft_lag_must_exceed_the_cached_gop() {
        let config = Config::parse_from([
            "rtmp-relay",
            "--player-soft-lag-ms",
            "1000",
            "--gop-cache-max-ms",
            "2000",
        ]);
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_old_subscriber_flag_names_still_work() {
        let config = Config::parse_from([
            "rtmp-relay",
            "--subscriber-soft-lag-ms=9000",
            "--subscriber-hard-limit-bytes=1048576",
            "--subscriber-stall-secs=7",
            "--max-subscribers-per-stream=12",
        ]);
        assert_eq!(config.player_soft_lag_ms, 9000);
        assert_eq!(config.player_hard_limit_bytes, 1 << 20);
        assert_eq!(config.player_stall_secs, 7);
        assert_eq!(config.max_players_per_stream, 12);
    }

    fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("rtmp-relay-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_config_file_sets_knobs_and_flags_override_it() {
        let path = temp_file(
            "ok.toml",
            "listen = \"127.0.0.1:1936\"\nshards = 3\nno_http = true\n\
             record-dir = \"/tmp/rec\"\nrecord_apps = [\"live\", \"vod\"]\nmax-amf-depth = 8\n",
        );
        let file = path.to_str().unwrap();
        let config = Config::load(["rtmp-relay", "--config", file, "--shards", "2"]).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.listen, "127.0.0.1:1936".parse().unwrap());
        assert_eq!(config.shards, Some(2), "the command line wins");
        assert!(config.no_http);
        assert_eq!(config.record_dir.as_deref(), Some(std::path::Path::new("/tmp/rec")));
        assert_eq!(config.record_apps, ["live", "vod"]);
        assert_eq!(config.max_amf_depth, 8);
    }

    #[test]
    fn a_bad_config_file_names_the_problem() {
        let unknown = temp_file("unknown.toml", "lissen = \"127.0.0.1:1\"\n");
        let bad_value = temp_file("bad.toml", "shards = \"many\"\n");
        let not_toml = temp_file("broken.toml", "listen = \n");
        for (path, needle) in [(&unknown, "lissen"), (&bad_value, "many"), (&not_toml, "")] {
            let err = Config::load(["rtmp-relay", "--config", path.to_str().unwrap()])
                .expect_err("refused")
                .to_string();
            std::fs::remove_file(path).unwrap();
            assert!(err.contains(needle), "{err}");
        }
        let missing = Config::load(["rtmp-relay", "--config", "/nonexistent/relay.toml"]);
        assert!(matches!(missing, Err(LoadError::Read { .. })));
    }

    #[test]
    fn rtmps_certificates_and_push_rules_come_from_the_config_file() {
        let path = temp_file(
            "sections.toml",
            "rtmps-listen = \"127.0.0.1:1443\"\n\
             [[rtmps-certs]]\ncert = \"/tls/a.pem\"\nkey = \"/tls/a.key\"\nnames = [\"a.test\"]\n\
             [[push]]\napp = \"live\"\nnames = \"cam*\"\nurl = \"rtmp://127.0.0.2/live/{name}\"\n",
        );
        let config = Config::load(["rtmp-relay", "--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(config.rtmps_cert_specs().len(), 1);
        assert_eq!(config.rtmps_cert_specs()[0].names, ["a.test"]);
        let push = config.push_settings().unwrap();
        assert_eq!(push.rules.len(), 1);
        assert!(push.rules[0].matches(&crate::stream::StreamKey::new("live", "cam1")));
        let bad = temp_file("badpush.toml", "[[push]]\nurl = \"http://x/a/b\"\n");
        let config = Config::load(["rtmp-relay", "--config", bad.to_str().unwrap()]).unwrap();
        assert!(config.push_settings().unwrap_err().to_string().contains("rtmp"));
        let unknown = temp_file("unknownpush.toml", "[[push]]\nurl = \"rtmp://h/a/b\"\nfoo = 1\n");
        let err = Config::load(["rtmp-relay", "--config", unknown.to_str().unwrap()]).unwrap_err();
        assert!(err.to_string().contains("foo"), "{err}");
        for p in [path, bad, unknown] {
            std::fs::remove_file(p).unwrap();
        }
        let no_cert = Config::parse_from(["rtmp-relay", "--rtmps-listen", "127.0.0.1:1443"]);
        assert!(no_cert.validate().is_err(), "an RTMPS listener needs a certificate");
    }

    #[test]
    fn the_auth_section_sets_per_app_policies_over_the_flag_default() {
        let keys = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/auth/jwks.json");
        let path = temp_file(
            "auth.toml",
            &format!(
                "publish-auth = \"token\"\nauth-keys = {keys:?}\nplay-deny = [\"192.0.2.0/24\"]\n\
                 [auth.apps.live]\nplay = \"deny\"\npublish_allow = [\"10.0.0.0/8\"]\n\
                 [auth.apps.live.names]\nsk_1 = \"cam1\"\n"
            ),
        );
        let config = Config::load(["rtmp-relay", "--config", path.to_str().unwrap()]).unwrap();
        std::fs::remove_file(&path).unwrap();
        let settings = config.auth_settings().unwrap();
        let (live, _) = settings.policies.for_app("live");
        assert_eq!(live.publish.method, crate::auth::Method::Token, "inherited from the flag");
        assert_eq!(live.play.method, crate::auth::Method::Deny);
        assert_eq!(live.publish.addresses.allow, ["10.0.0.0/8".parse().unwrap()]);
        assert_eq!(live.play.addresses.deny, ["192.0.2.0/24".parse().unwrap()], "inherited");
        assert_eq!(live.names.get("sk_1").map(String::as_str), Some("cam1"));
        let (other, _) = settings.policies.for_app("other");
        assert_eq!(other.play.method, crate::auth::Method::Open);
    }

    #[test]
    fn bad_auth_settings_name_the_problem() {
        for (text, needle) in [
            ("[auth.apps.live]\npublsh = \"token\"\n", "publsh"),
            ("[auth.apps.live]\npublish = \"maybe\"\n", "maybe"),
            ("[auth.apps.live]\npublish_allow = [\"10.0.0.0/40\"]\n", "prefix"),
            ("[auth.apps.live.names]\na = \"a\"\n", "differ"),
            ("publish-auth = \"token\"\n", "keys file"),
            ("publish-auth = \"callback\"\n", "on_publish"),
            ("auth-callback = \"http://127.0.0.1:9/x\"\n", "secret"),
            ("auth-callback = \"https://127.0.0.1:9/x\"\n", "https"),
        ] {
            let path = temp_file("bad-auth.toml", text);
            let err = match Config::load(["rtmp-relay", "--config", path.to_str().unwrap()]) {
                Ok(config) => config.validate().expect_err(text).to_string(),
                Err(e) => e.to_string(),
            };
            std::fs::remove_file(&path).unwrap();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn recording_knobs_are_validated() {
        let config = Config::parse_from([
            "rtmp-relay",
            "--record-dir",
            "/tmp/rec",
            "--record-segment-secs",
            "10",
            "--record-template",
            "{app}/{key}.flv",
        ]);
        let err = config.validate().expect_err("segments need {segment}").to_string();
        assert!(err.contains("{segment}"), "{err}");
        assert!(Config::default().record_config().is_none(), "recording is off by default");
    }
}
