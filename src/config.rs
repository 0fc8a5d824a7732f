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

    /// A TOML file of settings: keys are the long flag names (`listen = "0.0.0.0:1935"`,
    /// `shards = 8`, `record-dir = "/var/lib/rtmp-relay"`; `_` or `-` alike). Flags given on the
    /// command line override it.
    #[arg(long, env = "RTMP_RELAY_CONFIG")]
    pub config: Option<std::path::PathBuf>,
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
        let file_flags = toml_to_flags(&text)
            .map_err(|message| LoadError::Invalid { path: path.clone(), message })?;
        let mut merged = Vec::with_capacity(args.len() + file_flags.len());
        merged.extend(args.first().cloned());
        merged.extend(file_flags.into_iter().map(Into::into));
        merged.extend(args.into_iter().skip(1));
        Ok(Config::try_parse_from(merged)?)
    }
}

/// `key = value` pairs of a TOML table as `--key=value` flags (arrays joined with commas,
/// `true` booleans as bare flags).
fn toml_to_flags(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.message().to_owned())?;
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
            toml::Value::Array(items) => {
                let items: Result<Vec<String>, String> = items.iter().map(scalar).collect();
                flags.push(format!("{flag}={}", items?.join(",")));
            }
            other => flags.push(format!("{flag}={}", scalar(other)?)),
        }
    }
    Ok(flags)
}

impl Default for Config {
    fn default() -> Self {
        // The defaults live in the clap attributes; parsing no arguments is how to get them.
        Config::parse_from(["rtmp-relay"])
    }
}

/// A configuration that cannot work, with the knob to fix.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

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
