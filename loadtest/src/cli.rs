//! Command line: every flag documented, validated into a [`Plan`].

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use rtmp_loadtest::synth::StreamParams;
use rtmp_loadtest::url::RtmpUrl;

/// Drive RTMP publishers and players against a server and measure what the players get.
///
/// Each of `--publishers` streams (keys `{prefix}{i}`) gets one publisher sending a synthetic
/// H.264 + AAC stream and `--players` players. Every audio and video payload carries a send-time
/// marker, so each player measures relay latency (receive time minus send time, one clock,
/// one process), time to first frame and keyframe, and losses from the marker sequence numbers.
/// Works against any RTMP server (rtmp-relay, nginx-rtmp, SRS) that relays media unchanged.
///
/// Timeline: publishers connect at t=0; players join from `--player-delay` on, spread over
/// `--ramp`; the run ends at `--warmup` + `--duration`, and only the last `--duration` seconds
/// count in the totals (join times count over the whole run).
#[derive(Debug, Parser)]
#[command(
    name = "rtmp-loadtest",
    version,
    about,
    long_about,
    after_help = "Exit status: 0 the run completed; 1 no publish or no play ever started, an \
                  executor could not start or the JSON could not be written; 2 bad arguments; \
                  3 an executor did not stop in time (the report is printed anyway)."
)]
pub struct Cli {
    /// Server URL: rtmp://host[:port]/app (the stream keys are appended by the tool).
    pub url: String,

    /// Streams, each with one publisher.
    #[arg(short = 'p', long, visible_alias = "streams", default_value_t = 1)]
    pub publishers: usize,

    /// Players per stream.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub players: usize,

    /// Stream key prefix: stream i is published and played as `{prefix}{i}`.
    #[arg(long, default_value = "loadtest-")]
    pub prefix: String,

    /// Video bitrate of each synthetic stream, bits/s; k and M suffixes allowed (2500k, 2.5M).
    #[arg(long, default_value = "2.5M", value_parser = parse_bitrate)]
    pub bitrate: u64,

    /// Audio (AAC, 44100/1024 frames/s) bitrate of each stream, bits/s; 0 sends no audio.
    #[arg(long, default_value = "128k", value_parser = parse_bitrate)]
    pub audio_bitrate: u64,

    /// Video frames per second.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=240))]
    pub fps: u32,

    /// Seconds from one keyframe to the next (rounded to whole frames).
    #[arg(long, default_value_t = 2.0)]
    pub gop: f64,

    /// Keyframe size as a multiple of an inter frame's size.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub keyframe_ratio: u32,

    /// Measured seconds (after the warmup). The tool always stops by itself after
    /// warmup + duration.
    #[arg(short = 'd', long, default_value_t = 10.0)]
    pub duration: f64,

    /// Seconds at the start excluded from the totals (rounded up to whole intervals).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Seconds per report line.
    #[arg(long, default_value_t = 1.0)]
    pub interval: f64,

    /// Seconds after the start before the first player joins (publishers go first).
    #[arg(long, default_value_t = 1.0)]
    pub player_delay: f64,

    /// Seconds over which player joins are spread evenly (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    pub ramp: f64,

    /// Fraction of players that leave and rejoin, each after a random 0.5-1.5 x `--churn-period`.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,

    /// Mean seconds a churning player stays before it leaves and rejoins.
    #[arg(long, default_value_t = 5.0)]
    pub churn_period: f64,

    /// Fraction of players that never read after their play started (the server should cut
    /// them off, without hurting the others).
    #[arg(long, default_value_t = 0.0)]
    pub stalled: f64,

    /// Fraction of players that read at half the stream's bitrate (reported separately).
    #[arg(long, default_value_t = 0.0)]
    pub slow: f64,

    /// SO_RCVBUF for every player socket, bytes (0: the kernel's autotuning). Loopback receive
    /// buffers grow to many megabytes, which hides slow and stalled players from the server for
    /// seconds; e.g. 131072 makes them push back at once.
    #[arg(long, default_value_t = 0)]
    pub rcvbuf: u32,

    /// Load generator executors (threads); connections are spread round-robin over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cores: u32,

    /// Pin executors to these CPUs (comma-separated, one per executor); unpinned by default.
    #[arg(long, value_delimiter = ',')]
    pub cpus: Vec<usize>,

    /// Server process to sample (/proc/PID/stat and status) at the start and end of the measured
    /// window: CPU seconds, CPU µs per player-second, RSS and RSS per player.
    #[arg(long)]
    pub server_pid: Option<u32>,

    /// Also write every figure (config, intervals, totals) as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Chunk size publishers announce with Set Chunk Size.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(128..=16_777_215))]
    pub chunk_size: u32,

    /// Use the Flash Player 9 digest handshake (as ffmpeg does) instead of the plain one.
    #[arg(long)]
    pub digest: bool,

    /// Seconds a TCP connect may take.
    #[arg(long, default_value_t = 5.0)]
    pub connect_timeout: f64,

    /// Seconds from TCP connect to NetStream.Publish.Start / NetStream.Play.Start.
    #[arg(long, default_value_t = 10.0)]
    pub setup_timeout: f64,

    /// Seconds to wait before reconnecting after a failed or dropped connection.
    #[arg(long, default_value_t = 1.0)]
    pub retry_delay: f64,

    /// Seed for the handshake random bytes, player roles and churn times.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// No per-interval lines, only the summary.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Accepts `2500000`, `2500k`, `2.5M` (bits per second).
fn parse_bitrate(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 1e3),
        Some((i, 'm' | 'M')) => (&text[..i], 1e6),
        Some((i, 'g' | 'G')) => (&text[..i], 1e9),
        _ => (text, 1.0),
    };
    let value: f64 = number.parse().map_err(|_| format!("not a bitrate: {text:?}"))?;
    if !(0.0..=1e11).contains(&(value * scale)) {
        return Err(format!("bitrate out of range: {text:?}"));
    }
    Ok((value * scale).round() as u64)
}

/// What a player does once its play started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayerClass {
    /// Reads as fast as it can, stays for the whole run.
    Normal,
    /// Reads as fast as it can, leaves and rejoins now and then.
    Churn,
    /// Reads at half the stream's rate.
    Slow,
    /// Never reads after play.
    Stalled,
}

/// The validated run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub url: RtmpUrl,
    pub addr: SocketAddr,
    pub prefix: String,
    pub publishers: usize,
    pub players: usize,
    pub stream: StreamParams,
    pub interval: Duration,
    /// Intervals before the measured window.
    pub warmup_intervals: u32,
    /// All intervals of the run, warmup included.
    pub total_intervals: u32,
    pub player_delay: Duration,
    pub ramp: Duration,
    pub churn: f64,
    pub churn_period: Duration,
    pub stalled: f64,
    pub slow: f64,
    pub rcvbuf: u32,
    pub cores: usize,
    pub cpus: Vec<usize>,
    pub server_pid: Option<u32>,
    pub json: Option<PathBuf>,
    pub chunk_size: u32,
    pub digest: bool,
    pub connect_timeout: Duration,
    pub setup_timeout: Duration,
    pub retry_delay: Duration,
    pub seed: u64,
    pub quiet: bool,
}

/// Longest run accepted, so a typo cannot make the tool run for days.
const MAX_RUN_SECS: f64 = 24.0 * 3600.0;

fn seconds(name: &str, value: f64, min: f64) -> Result<Duration, String> {
    if !value.is_finite() || value < min || value > MAX_RUN_SECS {
        return Err(format!("--{name} must be between {min} and {MAX_RUN_SECS} seconds"));
    }
    Ok(Duration::from_secs_f64(value))
}

fn fraction(name: &str, value: f64) -> Result<f64, String> {
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("--{name} must be a fraction between 0 and 1"));
    }
    Ok(value)
}

impl Cli {
    /// Checks every flag and resolves the server address (once, here, not on an executor).
    pub fn plan(&self) -> Result<Plan, String> {
        let url = RtmpUrl::parse(&self.url).map_err(|e| e.to_string())?;
        let addr = url
            .authority()
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
            .next()
            .ok_or_else(|| format!("{} resolves to no address", url.host))?;
        let interval = seconds("interval", self.interval, 0.01)?;
        let duration = seconds("duration", self.duration, 0.01)?;
        let warmup = seconds("warmup", self.warmup, 0.0)?;
        let per = |d: Duration| (d.as_secs_f64() / interval.as_secs_f64() - 1e-9).ceil() as u32;
        let warmup_intervals = per(warmup);
        let total_intervals = warmup_intervals + per(duration).max(1);
        if self.publishers == 0 {
            return Err("--publishers must be at least 1".into());
        }
        let (churn, stalled, slow) = (
            fraction("churn", self.churn)?,
            fraction("stalled", self.stalled)?,
            fraction("slow", self.slow)?,
        );
        if churn + stalled + slow > 1.0 + 1e-9 {
            return Err("--churn + --stalled + --slow must not exceed 1".into());
        }
        if !(self.gop.is_finite() && self.gop > 0.0 && self.gop <= 3600.0) {
            return Err("--gop must be between 0 and 3600 seconds".into());
        }
        if self.bitrate == 0 {
            return Err("--bitrate must be positive".into());
        }
        let cores = self.cores as usize;
        if !self.cpus.is_empty() && self.cpus.len() != cores {
            return Err(format!("--cpus lists {} CPUs for {cores} executor(s)", self.cpus.len()));
        }
        let connections = self.publishers.saturating_mul(self.players.saturating_add(1));
        if connections > 1_000_000 {
            return Err(format!("{connections} connections is more than this tool will open"));
        }
        Ok(Plan {
            url,
            addr,
            prefix: self.prefix.clone(),
            publishers: self.publishers,
            players: self.players,
            stream: StreamParams::new(
                self.bitrate,
                self.audio_bitrate,
                self.fps,
                self.gop,
                self.keyframe_ratio,
            ),
            interval,
            warmup_intervals,
            total_intervals,
            player_delay: seconds("player-delay", self.player_delay, 0.0)?,
            ramp: seconds("ramp", self.ramp, 0.0)?,
            churn,
            churn_period: seconds("churn-period", self.churn_period, 0.1)?,
            stalled,
            slow,
            rcvbuf: self.rcvbuf,
            cores,
            cpus: self.cpus.clone(),
            server_pid: self.server_pid,
            json: self.json.clone(),
            chunk_size: self.chunk_size,
            digest: self.digest,
            connect_timeout: seconds("connect-timeout", self.connect_timeout, 0.001)?,
            setup_timeout: seconds("setup-timeout", self.setup_timeout, 0.001)?,
            retry_delay: seconds("retry-delay", self.retry_delay, 0.0)?,
            seed: self.seed,
            quiet: self.quiet,
        })
    }
}

impl Plan {
    /// Stream key of stream `i`.
    pub fn key(&self, stream: usize) -> String {
        format!("{}{stream}", self.prefix)
    }

    /// Wall time of the whole run.
    pub fn run_time(&self) -> Duration {
        self.interval * self.total_intervals
    }

    /// Seconds of the measured window.
    pub fn window_secs(&self) -> f64 {
        (self.interval * (self.total_intervals - self.warmup_intervals)).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrates_take_suffixes() {
        assert_eq!(parse_bitrate("2500000"), Ok(2_500_000));
        assert_eq!(parse_bitrate("2500k"), Ok(2_500_000));
        assert_eq!(parse_bitrate("2.5M"), Ok(2_500_000));
        assert_eq!(parse_bitrate("0"), Ok(0));
        assert!(parse_bitrate("fast").is_err());
        assert!(parse_bitrate("-1k").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn plan_rounds_warmup_to_intervals_and_checks_fractions() {
        let cli =
            Cli::parse_from(["rtmp-loadtest", "rtmp://127.0.0.1:1935/live", "--warmup", "1.5"]);
        let plan = cli.plan().unwrap();
        assert_eq!((plan.warmup_intervals, plan.total_intervals), (2, 12));
        assert_eq!(plan.window_secs(), 10.0);
        assert_eq!(plan.key(3), "loadtest-3");
        let cli = Cli::parse_from([
            "rtmp-loadtest",
            "rtmp://127.0.0.1/live",
            "--slow",
            "0.6",
            "--stalled",
            "0.6",
        ]);
        assert!(cli.plan().is_err());
    }
}
