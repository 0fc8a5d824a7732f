//! The limits a peer can trip (design invariant 5), each named after its config flag, and their
//! per-shard trip counters.
//!
//! A limit's name is its flag without the leading `--` and with underscores, so the
//! `limit` label of `rtmp_relay_limits_tripped_total`, the `limit` field of a log line and the
//! flag that raises the limit are one word (`limit="max_connections_per_ip"` is
//! `--max-connections-per-ip`).

use std::fmt;

use super::Counter;

/// Declares [`Limit`] from one list, so the variants, their names and [`Limit::ALL`] cannot
/// disagree.
macro_rules! limits {
    ($( $(#[doc = $doc:literal])* $variant:ident => $name:literal, )*) => {
        /// One limit a peer can trip. See the module doc for how it is named.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Limit {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl Limit {
            /// Every limit, in declaration order (the order they are exported in).
            pub const ALL: [Limit; [$(Limit::$variant),*].len()] = [$(Limit::$variant),*];

            /// How many limits there are.
            pub const COUNT: usize = Limit::ALL.len();

            /// The limit's name: its config flag without `--`, `-` written `_`.
            pub fn name(self) -> &'static str {
                match self {
                    $( Limit::$variant => $name, )*
                }
            }
        }
    };
}

limits! {
    /// `--max-connections`: open connections on the server (each shard its share); a new one
    /// is refused.
    MaxConnections => "max_connections",
    /// `--max-connections-per-ip`: open connections from one address; a new one is refused.
    MaxConnectionsPerIp => "max_connections_per_ip",
    /// `--max-handshaking-per-ip`: connections from one address not through `connect` yet; a
    /// new one is refused.
    MaxHandshakingPerIp => "max_handshaking_per_ip",
    /// `--handshake-timeout-secs`: the handshake and `connect` took too long; closed.
    HandshakeTimeoutSecs => "handshake_timeout_secs",
    /// `--idle-before-play-secs`: connected, but neither published nor played in time; closed.
    IdleBeforePlaySecs => "idle_before_play_secs",
    /// `--publisher-idle-secs`: a publisher sent nothing for this long; closed.
    PublisherIdleSecs => "publisher_idle_secs",
    /// `--max-stream-name-bytes`: an app name or stream key too long; closed.
    MaxStreamNameBytes => "max_stream_name_bytes",
    /// `--max-streams-per-shard`: a publish or play would create one stream too many on its
    /// shard; refused.
    MaxStreamsPerShard => "max_streams_per_shard",
    /// `--max-players-per-stream`: a stream has as many players on this shard as allowed;
    /// the play is refused.
    MaxPlayersPerStream => "max_players_per_stream",
    /// `--gop-cache-max-bytes`: a stream's cached GOP outgrew its bytes; the cache waits for
    /// the next keyframe.
    GopCacheMaxBytes => "gop_cache_max_bytes",
    /// `--gop-cache-max-ms`: a stream's cached GOP outgrew its duration; the cache waits for
    /// the next keyframe.
    GopCacheMaxMs => "gop_cache_max_ms",
    /// `--player-hard-limit-bytes`: a player with this much queued; disconnected.
    PlayerHardLimitBytes => "player_hard_limit_bytes",
    /// `--player-stall-secs`: a player whose socket took nothing for this long;
    /// disconnected.
    PlayerStallSecs => "player_stall_secs",
    /// `--max-message-bytes`: a message declared longer; the connection is closed (also
    /// counted as the protocol error `message_too_long`).
    MaxMessageBytes => "max_message_bytes",
    /// `--max-chunk-streams`: one chunk stream too many on a connection; closed (protocol
    /// error `too_many_chunk_streams`).
    MaxChunkStreams => "max_chunk_streams",
    /// `--max-partial-bytes`: too many bytes of half-received messages held; closed (protocol
    /// error `partial_bytes_exceeded`).
    MaxPartialBytes => "max_partial_bytes",
    /// `--max-message-streams`: message streams (`createStream`) per connection; closed
    /// (protocol error `too_many_message_streams`).
    MaxMessageStreams => "max_message_streams",
    /// `--max-amf-depth`: AMF nesting too deep; closed (protocol error `amf`).
    MaxAmfDepth => "max_amf_depth",
    /// `--max-amf-string-bytes`: an AMF string too long; closed (protocol error `amf`).
    MaxAmfStringBytes => "max_amf_string_bytes",
    /// `--max-amf-elements`: values in one AMF array or object; closed (protocol error
    /// `amf`).
    MaxAmfElements => "max_amf_elements",
    /// `--mesh-control-limit`: control messages queued to a stuck shard; a publish or play
    /// that needs that shard is refused.
    MeshControlLimit => "mesh_control_limit",
    /// `--push-queue-bytes`: an outbound relay (push) whose destination fell this far behind;
    /// its session is closed and reconnects.
    PushQueueBytes => "push_queue_bytes",
    /// `--auth-max-token-bytes`: a token longer than this is refused before it is parsed.
    AuthMaxTokenBytes => "auth_max_token_bytes",
    /// `--pull-attempts-per-sec`: pull connection attempts started in one second (each shard
    /// its share); a further attempt waits.
    PullAttemptsPerSec => "pull_attempts_per_sec",
    /// `--pull-attempts-in-flight`: pull attempts connecting at once (each shard its share); a
    /// further attempt waits.
    PullAttemptsInFlight => "pull_attempts_in_flight",
}

impl Limit {
    /// Limits with no config flag (their names are the flags they would have): none now; a
    /// new limit without a knob goes here, and the invariant-5 test says so.
    pub const WITHOUT_FLAG: [Limit; 0] = [];

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One shard's trip counters, one per [`Limit`].
#[derive(Debug, Default)]
pub struct LimitCounters([Counter; Limit::COUNT]);

impl LimitCounters {
    /// Counts one trip of `limit`.
    pub fn trip(&self, limit: Limit) {
        self.0[limit.index()].inc();
    }

    pub fn snapshot(&self) -> LimitCounts {
        LimitCounts(std::array::from_fn(|i| self.0[i].get()))
    }
}

/// How many times each limit tripped: a plain copy of [`LimitCounters`], summed over shards
/// with `+`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitCounts([u64; Limit::COUNT]);

impl Default for LimitCounts {
    fn default() -> Self {
        LimitCounts([0; Limit::COUNT])
    }
}

impl LimitCounts {
    /// How many times `limit` tripped.
    pub fn get(&self, limit: Limit) -> u64 {
        self.0[limit.index()]
    }

    /// Every limit with its count, zeros included, in [`Limit::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Limit, u64)> + '_ {
        Limit::ALL.into_iter().map(|limit| (limit, self.get(limit)))
    }
}

impl std::ops::Add for LimitCounts {
    type Output = LimitCounts;

    fn add(self, o: LimitCounts) -> LimitCounts {
        LimitCounts(std::array::from_fn(|i| self.0[i] + o.0[i]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_each_limit_once_in_discriminant_order() {
        for (i, limit) in Limit::ALL.iter().enumerate() {
            assert_eq!(limit.index(), i, "{limit}");
        }
    }

    #[test]
    fn trips_are_counted_per_limit_and_summed() {
        let counters = LimitCounters::default();
        counters.trip(Limit::GopCacheMaxMs);
        counters.trip(Limit::GopCacheMaxMs);
        counters.trip(Limit::MaxConnections);
        let counts = counters.snapshot();
        assert_eq!(counts.get(Limit::GopCacheMaxMs), 2);
        assert_eq!(counts.get(Limit::MaxConnections), 1);
        assert_eq!(counts.get(Limit::GopCacheMaxBytes), 0);
        assert_eq!(counts.iter().count(), Limit::COUNT);
        assert_eq!((counts + counts).get(Limit::GopCacheMaxMs), 4);
    }
}
