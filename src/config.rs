//! One `Config` for the whole server: every knob with its default, its reason and its unit,
//! from flags, environment or a TOML file, checked by [`Config::validate`] before anything
//! starts.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// rtmp-relay: a thread-per-core RTMP relay. Publish with
/// `ffmpeg -re -i in.mp4 -c copy -f flv rtmp://HOST/live/KEY`, play with
/// `ffplay rtmp://HOST/live/KEY`.
#[derive(Debug, Clone, Parser)]
#[command(name = "rtmp-relay", version, about, long_about = None)]
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

    /// Testing aid: every shard also listens on its own 127.0.0.1 port, so a test can place a
    /// connection on a chosen shard (`ServerHandle::shard_addr`).
    #[arg(long, hide = true)]
    pub debug_shard_listeners: bool,

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
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(128..=16_777_215))]
    pub out_chunk_size: u32,

    /// Largest RTMP message accepted from a client, in bytes. Far above a 4K keyframe; stops a
    /// client from making the server buffer a declared 16 MiB message.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
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
    #[arg(long, default_value_t = 8_000)]
    pub subscriber_soft_lag_ms: u32,

    /// Queued bytes for one player above which it is disconnected.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    pub subscriber_hard_limit_bytes: usize,

    /// Seconds a player may make no write progress, with data queued, before it is disconnected.
    #[arg(long, default_value_t = 15)]
    pub subscriber_stall_secs: u64,

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

    /// Seconds a connected client has to publish or play before it is closed.
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
    /// flood of half-open handshakes from one address cannot crowd out other clients.
    #[arg(long, default_value_t = 50)]
    pub max_handshaking_per_ip: u32,

    /// Most streams (published or waited for) per shard.
    #[arg(long, default_value_t = 10_000)]
    pub max_streams_per_shard: usize,

    /// Most players of one stream on one shard.
    #[arg(long, default_value_t = 10_000)]
    pub max_subscribers_per_stream: usize,

    /// Most chunk streams one connection may use (real clients use fewer than 10).
    #[arg(long, default_value_t = 64)]
    pub max_chunk_streams: usize,

    /// Most bytes one connection may hold in partially received messages.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub max_partial_bytes: usize,

    /// Deepest AMF nesting accepted in commands and metadata.
    #[arg(long, default_value_t = 32)]
    pub max_amf_depth: usize,

    /// Longest AMF string accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub max_amf_string_bytes: usize,

    /// Seconds a graceful shutdown waits for connections to flush their last messages.
    #[arg(long, default_value_t = 5)]
    pub shutdown_timeout_secs: u64,
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
        if self.subscriber_soft_lag_ms <= self.gop_cache_max_ms {
            return Err(ConfigError(format!(
                "--subscriber-soft-lag-ms ({}) must exceed --gop-cache-max-ms ({}): late joiners \
                 start one cached GOP behind live",
                self.subscriber_soft_lag_ms, self.gop_cache_max_ms
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

    pub fn subscriber_stall(&self) -> Duration {
        Duration::from_secs(self.subscriber_stall_secs)
    }

    pub fn republish_wait(&self) -> Duration {
        Duration::from_secs(self.republish_wait_secs)
    }

    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// The per-connection limits each of `shards` shards applies: per-IP counts are kept per
    /// shard, so each enforces its share (see `conn::limits`).
    pub fn connection_limits(&self, shards: usize) -> crate::conn::ConnLimits {
        let share = |limit: u32| limit.div_ceil(shards.max(1) as u32).max(1);
        crate::conn::ConnLimits {
            handshake: self.handshake_timeout(),
            idle_before_play: Duration::from_secs(self.idle_before_play_secs),
            publisher_idle: Duration::from_secs(self.publisher_idle_secs),
            player_send_buffer: self.player_send_buffer_bytes,
            max_per_ip: share(self.max_connections_per_ip),
            max_handshaking_per_ip: share(self.max_handshaking_per_ip),
        }
    }

    /// The protocol settings every session of this server uses.
    pub fn session_config(&self) -> rtmp_proto::session::SessionConfig {
        let defaults = rtmp_proto::session::SessionConfig::default();
        rtmp_proto::session::SessionConfig {
            out_chunk_size: self.out_chunk_size,
            chunk_limits: rtmp_proto::chunk::Limits {
                max_message_len: self.max_message_bytes,
                max_chunk_streams: self.max_chunk_streams,
                max_partial_bytes: self.max_partial_bytes,
            },
            amf_limits: rtmp_proto::amf0::AmfLimits {
                max_depth: self.max_amf_depth,
                max_string_len: self.max_amf_string_bytes,
                ..defaults.amf_limits
            },
            ..defaults
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
    fn soft_lag_must_exceed_the_cached_gop() {
        let config = Config::parse_from([
            "rtmp-relay",
            "--subscriber-soft-lag-ms",
            "1000",
            "--gop-cache-max-ms",
            "2000",
        ]);
        assert!(config.validate().is_err());
    }
}
