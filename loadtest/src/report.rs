//! Interval lines, the final table and the JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rtmp_loadtest::procfs::ProcSample;
use serde::Serialize;

use crate::cli::Plan;
use crate::stats::{Gauges, IntervalStats, PlayerStats, Summary};

/// One printed interval.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalLine {
    pub index: u32,
    /// Seconds since the start at the end of this interval.
    pub t_s: f64,
    pub measured: bool,
    pub gauges: Gauges,
    /// Megabits per second read by all players.
    pub rx_mbit_s: f64,
    /// Media messages per second received by all players.
    pub rx_msgs_s: f64,
    /// Megabits per second of payload sent by the publishers.
    pub tx_mbit_s: f64,
    pub latency_us: Summary,
    pub slow_latency_us: Summary,
    pub lost: u64,
    pub reordered: u64,
    pub join_gaps: u64,
    pub slow_lost: u64,
    pub joins: u64,
    pub errors: u64,
}

impl IntervalLine {
    pub fn new(plan: &Plan, index: u32, stats: &IntervalStats, gauges: Gauges) -> Self {
        let secs = plan.interval.as_secs_f64();
        let rx_bytes = stats.players.bytes + stats.slow.bytes;
        Self {
            index,
            t_s: secs * f64::from(index),
            measured: index > plan.warmup_intervals,
            gauges,
            rx_mbit_s: rx_bytes as f64 * 8.0 / secs / 1e6,
            rx_msgs_s: (stats.players.media + stats.slow.media) as f64 / secs,
            tx_mbit_s: stats.bytes_sent as f64 * 8.0 / secs / 1e6,
            latency_us: stats.players.latency.summary(),
            slow_latency_us: stats.slow.latency.summary(),
            lost: stats.players.lost,
            reordered: stats.players.reordered,
            join_gaps: stats.players.join_gaps,
            slow_lost: stats.slow.lost,
            joins: stats.player_joins,
            errors: stats.error_count(),
        }
    }

    pub fn header() -> String {
        format!(
            "{:>7} {:>4} {:>7} {:>5} {:>5} {:>8} {:>8} | {:>7} {:>7} {:>7} {:>7} | {:>6} {:>5} {:>5} {:>5}",
            "t(s)",
            "pubs",
            "players",
            "slow",
            "stall",
            "rxMbit/s",
            "msgs/s",
            "p50µs",
            "p99µs",
            "p999µs",
            "maxµs",
            "lost",
            "reord",
            "joins",
            "errs"
        )
    }

    pub fn render(&self) -> String {
        let mark = if self.measured { ' ' } else { 'w' };
        format!(
            "{:>6.1}{mark} {:>4} {:>7} {:>5} {:>5} {:>8.1} {:>8.0} | {:>7} {:>7} {:>7} {:>7} | {:>6} {:>5} {:>5} {:>5}",
            self.t_s,
            self.gauges.publishing,
            self.gauges.playing,
            self.gauges.slow,
            self.gauges.stalled,
            self.rx_mbit_s,
            self.rx_msgs_s,
            self.latency_us.p50,
            self.latency_us.p99,
            self.latency_us.p999,
            self.latency_us.max,
            self.lost,
            self.reordered,
            self.joins,
            self.errors,
        )
    }
}

/// Above this share of its cores the load generator is the bottleneck: a reader that cannot
/// keep up backs every socket up, the server then writes in larger batches, and latency and
/// server CPU measure the generator as much as the server.
pub const BUSY_SHARE: f64 = 0.8;

/// Above this share of its cores' time spent waiting for them (runnable, but other processes
/// had the CPU), the generator read late for reasons of its own machine: latency includes that
/// wait, and its reads batch up, which flatters everyone's CPU per player.
pub const WAIT_SHARE: f64 = 0.25;

/// Whether the load generator's own figures say it limited the measurement.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SelfCheck {
    /// Cores the generator ran on: its executors, or the distinct CPUs they were pinned to.
    pub cores: usize,
    /// CPU time over (window x cores), 0..1.
    pub cpu_share: f64,
    /// Time its threads waited for a CPU over (window x cores), when the kernel reports it.
    pub wait_share: Option<f64>,
    /// `cpu_share` above [`BUSY_SHARE`].
    pub busy: bool,
    /// `wait_share` above [`WAIT_SHARE`].
    pub starved: bool,
}

impl SelfCheck {
    pub fn new(cpu_s: f64, wait_s: Option<f64>, window_s: f64, cores: usize) -> Self {
        let capacity = window_s * cores.max(1) as f64;
        let share = |secs: f64| if capacity > 0.0 { secs / capacity } else { 0.0 };
        let cpu_share = share(cpu_s);
        let wait_share = wait_s.map(share);
        Self {
            cores,
            cpu_share,
            wait_share,
            busy: cpu_share > BUSY_SHARE,
            starved: wait_share.is_some_and(|w| w > WAIT_SHARE),
        }
    }

    /// The warnings to print (and write to the JSON) about this run.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.busy {
            out.push(format!(
                "the load generator used {:.0}% of its {} core(s) (above {:.0}%): it was the \
                 bottleneck, so latency and server CPU partly measure it; give it more --cores \
                 (and --cpus) or fewer players",
                self.cpu_share * 100.0,
                self.cores,
                BUSY_SHARE * 100.0
            ));
        }
        if let Some(wait) = self.wait_share.filter(|_| self.starved) {
            out.push(format!(
                "the load generator waited for its CPU(s) {:.0}% of the time (above {:.0}%): \
                 other processes had its cores, so latency includes that wait and CPU per \
                 player is flattered by batched reads; measure on idle cores",
                wait * 100.0,
                WAIT_SHARE * 100.0
            ));
        }
        out
    }
}

/// A warning when the server's threads waited for a CPU more than [`WAIT_SHARE`] of one core's
/// time: other processes had its cores, and its figures (latency above all) include that.
pub fn server_wait_warning(wait_s: f64, window_s: f64) -> Option<String> {
    (window_s > 0.0 && wait_s / window_s > WAIT_SHARE).then(|| {
        format!(
            "the server's threads waited {wait_s:.1} s for a CPU in the {window_s:.0} s window: \
             other processes had its cores, so its latency and CPU figures include that; \
             measure on idle cores"
        )
    })
}

/// CPU and memory of a process over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct ProcReport {
    pub pid: Option<u32>,
    pub cpu_s: f64,
    /// CPU time over wall time, in percent of one core.
    pub cpu_percent: f64,
    /// Seconds its threads waited for a CPU during the window, when the kernel reports it.
    pub wait_s: Option<f64>,
    /// CPU microseconds per player per second (players averaged over the window).
    pub cpu_us_per_player_s: Option<f64>,
    /// RSS before any connection was opened.
    pub rss_baseline_bytes: Option<u64>,
    pub rss_start_bytes: Option<u64>,
    pub rss_end_bytes: Option<u64>,
    /// (end RSS - baseline RSS) / average players.
    pub rss_per_player_bytes: Option<f64>,
}

impl ProcReport {
    pub fn new(
        pid: Option<u32>,
        baseline: Option<ProcSample>,
        start: ProcSample,
        end: ProcSample,
        window_secs: f64,
        avg_players: f64,
    ) -> Self {
        let cpu_s = (end.cpu_secs - start.cpu_secs).max(0.0);
        let per_player = avg_players > 0.0;
        let rss_per_player = match (baseline.and_then(|b| b.rss_bytes), end.rss_bytes) {
            (Some(base), Some(end)) if per_player => Some((end as f64 - base as f64) / avg_players),
            _ => None,
        };
        Self {
            pid,
            cpu_s,
            cpu_percent: cpu_s / window_secs * 100.0,
            wait_s: start.wait_secs.zip(end.wait_secs).map(|(a, b)| (b - a).max(0.0)),
            cpu_us_per_player_s: per_player.then(|| cpu_s * 1e6 / (avg_players * window_secs)),
            rss_baseline_bytes: baseline.and_then(|b| b.rss_bytes),
            rss_start_bytes: start.rss_bytes,
            rss_end_bytes: end.rss_bytes,
            rss_per_player_bytes: rss_per_player,
        }
    }
}

/// One class of players over the measured window (join times: over the whole run).
#[derive(Debug, Clone, Serialize)]
pub struct PlayerTotals {
    pub latency_us: Summary,
    pub first_frame_us: Summary,
    pub first_keyframe_us: Summary,
    pub bytes: u64,
    pub mbit_s: f64,
    pub media_msgs: u64,
    pub live_msgs: u64,
    pub lost: u64,
    pub reordered: u64,
    pub join_gaps: u64,
}

impl PlayerTotals {
    fn new(window: &PlayerStats, run: &PlayerStats, window_secs: f64) -> Self {
        Self {
            latency_us: window.latency.summary(),
            first_frame_us: run.first_frame.summary(),
            first_keyframe_us: run.first_keyframe.summary(),
            bytes: window.bytes,
            mbit_s: window.bytes as f64 * 8.0 / window_secs / 1e6,
            media_msgs: window.media,
            live_msgs: window.live,
            lost: window.lost,
            reordered: window.reordered,
            join_gaps: run.join_gaps,
        }
    }
}

/// Connection counts averaged over the measured intervals.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GaugeTotals {
    pub publishing_avg: f64,
    pub players_avg: f64,
    pub players_min: u64,
    pub players_max: u64,
    pub slow_avg: f64,
    pub stalled_avg: f64,
}

/// The whole run, as written to `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub url: String,
    pub publishers: usize,
    pub players_per_stream: usize,
    pub video_bps: u64,
    pub audio_bps: u64,
    pub fps: u32,
    pub gop_frames: u32,
    pub cores: usize,
    pub prefix: String,
    pub keyframe_ratio: u32,
    pub interval_s: f64,
    pub player_delay_s: f64,
    pub ramp_s: f64,
    pub churn: f64,
    pub churn_period_s: f64,
    pub slow: f64,
    pub stalled: f64,
    pub rcvbuf: u32,
    pub chunk_size: u32,
    pub digest: bool,
    pub seed: u64,
    pub warmup_s: f64,
    pub window_s: f64,
    pub connections: GaugeTotals,
    /// Normal and churning players.
    pub players: PlayerTotals,
    /// Slow players, when `--slow` > 0.
    pub slow_players: PlayerTotals,
    pub player_joins: u64,
    pub player_leaves: u64,
    pub publisher_starts: u64,
    pub frames_sent: u64,
    pub publisher_mbit_s: f64,
    pub send_lag_us: Summary,
    pub write_wait_us: Summary,
    /// Whole run, warmup included: `role.reason` -> count.
    pub errors: BTreeMap<String, u64>,
    /// Whole run: server notifications by name.
    pub events: BTreeMap<String, u64>,
    pub server: Option<ProcReport>,
    pub loadgen: Option<ProcReport>,
    /// The load generator's CPU share of its cores and whether it limited the run.
    pub loadgen_check: Option<SelfCheck>,
    /// What makes this run's figures doubtful (see [`SelfCheck::warnings`]).
    pub warnings: Vec<String>,
    pub intervals: Vec<IntervalLine>,
    /// True when some executor did not report all its intervals in time.
    pub incomplete: bool,
}

/// Accumulates interval reports into totals.
#[derive(Debug, Default)]
pub struct Collector {
    /// Measured intervals only.
    pub window: IntervalStats,
    /// Every interval.
    pub run: IntervalStats,
    pub lines: Vec<IntervalLine>,
    gauge_samples: Vec<Gauges>,
}

impl Collector {
    pub fn add(
        &mut self,
        plan: &Plan,
        index: u32,
        stats: &IntervalStats,
        gauges: Gauges,
    ) -> &IntervalLine {
        let line = IntervalLine::new(plan, index, stats, gauges);
        self.run.merge(stats);
        if line.measured {
            self.window.merge(stats);
            self.gauge_samples.push(gauges);
        }
        self.lines.push(line);
        self.lines.last().expect("just pushed")
    }

    pub fn gauges(&self) -> GaugeTotals {
        let n = self.gauge_samples.len();
        if n == 0 {
            return GaugeTotals::default();
        }
        let avg =
            |f: fn(&Gauges) -> u64| self.gauge_samples.iter().map(f).sum::<u64>() as f64 / n as f64;
        GaugeTotals {
            publishing_avg: avg(|g| g.publishing),
            players_avg: avg(Gauges::all_players),
            players_min: self.gauge_samples.iter().map(Gauges::all_players).min().unwrap_or(0),
            players_max: self.gauge_samples.iter().map(Gauges::all_players).max().unwrap_or(0),
            slow_avg: avg(|g| g.slow),
            stalled_avg: avg(|g| g.stalled),
        }
    }

    pub fn totals(
        self,
        plan: &Plan,
        server: Option<ProcReport>,
        loadgen: Option<ProcReport>,
        loadgen_cores: usize,
        incomplete: bool,
    ) -> Totals {
        let secs = plan.window_secs();
        let loadgen_check =
            loadgen.as_ref().map(|p| SelfCheck::new(p.cpu_s, p.wait_s, secs, loadgen_cores));
        let mut warnings = loadgen_check.map(|c| c.warnings()).unwrap_or_default();
        warnings.extend(server.as_ref().and_then(|p| server_wait_warning(p.wait_s?, secs)));
        let connections = self.gauges();
        let name = |(role, reason): (&&str, &&str)| format!("{role}.{reason}");
        Totals {
            url: plan.url.tc_url.clone(),
            publishers: plan.publishers,
            players_per_stream: plan.players,
            video_bps: plan.stream.video_bps,
            audio_bps: plan.stream.audio_bps,
            fps: plan.stream.fps,
            gop_frames: plan.stream.gop_frames,
            cores: plan.cores,
            prefix: plan.prefix.clone(),
            keyframe_ratio: plan.stream.keyframe_ratio,
            interval_s: plan.interval.as_secs_f64(),
            player_delay_s: plan.player_delay.as_secs_f64(),
            ramp_s: plan.ramp.as_secs_f64(),
            churn: plan.churn,
            churn_period_s: plan.churn_period.as_secs_f64(),
            slow: plan.slow,
            stalled: plan.stalled,
            rcvbuf: plan.rcvbuf,
            chunk_size: plan.chunk_size,
            digest: plan.digest,
            seed: plan.seed,
            warmup_s: (plan.interval * plan.warmup_intervals).as_secs_f64(),
            window_s: secs,
            connections,
            players: PlayerTotals::new(&self.window.players, &self.run.players, secs),
            slow_players: PlayerTotals::new(&self.window.slow, &self.run.slow, secs),
            player_joins: self.run.player_joins,
            player_leaves: self.run.player_leaves,
            publisher_starts: self.run.publisher_starts,
            frames_sent: self.window.frames_sent,
            publisher_mbit_s: self.window.bytes_sent as f64 * 8.0 / secs / 1e6,
            send_lag_us: self.window.send_lag.summary(),
            write_wait_us: self.window.write_wait.summary(),
            errors: self.run.errors.iter().map(|((r, w), n)| (name((r, w)), *n)).collect(),
            events: self.run.events.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect(),
            server,
            loadgen,
            loadgen_check,
            warnings,
            intervals: self.lines,
            incomplete,
        }
    }
}

fn hist_row(out: &mut String, label: &str, s: &Summary, divisor: f64, decimals: usize) {
    if s.count == 0 {
        let _ = writeln!(out, "  {label:<28} {:>9}", 0);
        return;
    }
    let v = |x: u64| format!("{:.*}", decimals, x as f64 / divisor);
    let _ = writeln!(
        out,
        "  {label:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        s.count,
        v(s.p50),
        v(s.p90),
        v(s.p99),
        v(s.p999),
        v(s.max),
        format!("{:.*}", decimals, s.mean / divisor),
    );
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or_else(|| "?".to_owned(), |b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
}

fn proc_lines(out: &mut String, label: &str, p: &ProcReport) {
    let pid = p.pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
    let per_player = p
        .cpu_us_per_player_s
        .map_or_else(String::new, |v| format!(", {v:.2} µs CPU per player-second"));
    let waited = p.wait_s.map_or_else(String::new, |w| format!(", waited {:.2} s for a CPU", w));
    let _ = writeln!(
        out,
        "{label:<14}pid {pid}: CPU {:.2} s ({:.1}% of one core){waited}{per_player}",
        p.cpu_s, p.cpu_percent
    );
    let rss_per_player = p
        .rss_per_player_bytes
        .map_or_else(String::new, |b| format!(", {:.1} KiB per player over baseline", b / 1024.0));
    let _ = writeln!(
        out,
        "{:<14}RSS baseline {}, window start {}, end {}{rss_per_player}",
        "",
        mib(p.rss_baseline_bytes),
        mib(p.rss_start_bytes),
        mib(p.rss_end_bytes),
    );
}

/// The human summary.
pub fn render(t: &Totals, plan: &Plan) -> String {
    let mut out = String::new();
    let c = &t.connections;
    let _ = writeln!(out, "== rtmp-loadtest summary ==");
    let _ = writeln!(
        out,
        "target        {} keys {}0..{}{}",
        t.url,
        plan.prefix,
        plan.prefix,
        t.publishers - 1
    );
    let _ = writeln!(
        out,
        "load          {} publisher(s) x {} player(s) (churn {:.0}%, slow {:.0}%, stalled {:.0}%); \
         {:.2} Mbit/s video + {:.0} kbit/s audio, {} fps, keyframe every {} frames",
        t.publishers,
        t.players_per_stream,
        plan.churn * 100.0,
        plan.slow * 100.0,
        plan.stalled * 100.0,
        t.video_bps as f64 / 1e6,
        t.audio_bps as f64 / 1e3,
        t.fps,
        t.gop_frames
    );
    let _ = writeln!(
        out,
        "window        {:.1} s measured after {:.1} s warmup, {} loadgen executor(s){}",
        t.window_s,
        t.warmup_s,
        t.cores,
        if t.incomplete { "  [INCOMPLETE: an executor did not report in time]" } else { "" }
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "  {:<28} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
    );
    hist_row(&mut out, "relay latency (ms)", &t.players.latency_us, 1000.0, 3);
    hist_row(&mut out, "time to first frame (ms)", &t.players.first_frame_us, 1000.0, 1);
    hist_row(&mut out, "time to first keyframe (ms)", &t.players.first_keyframe_us, 1000.0, 1);
    if plan.slow > 0.0 {
        hist_row(&mut out, "slow: relay latency (ms)", &t.slow_players.latency_us, 1000.0, 1);
    }
    hist_row(&mut out, "publisher send lag (ms)", &t.send_lag_us, 1000.0, 3);
    hist_row(&mut out, "publisher write wait (ms)", &t.write_wait_us, 1000.0, 3);
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "players       avg {:.1} connected (min {}, max {}; slow {:.1}, stalled {:.1}), joins {}, churn leaves {}",
        c.players_avg, c.players_min, c.players_max, c.slow_avg, c.stalled_avg, t.player_joins, t.player_leaves
    );
    let p = &t.players;
    let per_player = if c.players_avg > 0.0 {
        p.mbit_s / (c.players_avg - c.slow_avg - c.stalled_avg).max(1.0)
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "received      {:.1} MB, {:.1} Mbit/s ({:.2} Mbit/s per reading player), {} media msgs ({} live)",
        p.bytes as f64 / 1e6,
        p.mbit_s,
        per_player,
        p.media_msgs,
        p.live_msgs
    );
    let _ = writeln!(
        out,
        "loss          lost {}, reordered {}, join gaps {} (whole run)",
        p.lost, p.reordered, p.join_gaps
    );
    if plan.slow > 0.0 {
        let s = &t.slow_players;
        let _ = writeln!(
            out,
            "slow players  {:.1} Mbit/s, {} media msgs, lost {} (skipped by the server), reordered {}",
            s.mbit_s, s.media_msgs, s.lost, s.reordered
        );
    }
    let _ = writeln!(
        out,
        "publishers    avg {:.1} publishing, {} publish starts, {} frames sent, {:.2} Mbit/s payload",
        c.publishing_avg, t.publisher_starts, t.frames_sent, t.publisher_mbit_s
    );
    let errors = if t.errors.is_empty() {
        "none".to_owned()
    } else {
        t.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
    };
    let _ = writeln!(out, "errors        {errors}");
    if !t.events.is_empty() {
        let events = t.events.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        let _ = writeln!(out, "events        {events}");
    }
    if let Some(server) = &t.server {
        proc_lines(&mut out, "server", server);
    }
    if let Some(loadgen) = &t.loadgen {
        proc_lines(&mut out, "loadgen", loadgen);
    }
    if let Some(check) = &t.loadgen_check {
        let waited = check.wait_share.map_or_else(String::new, |w| {
            format!(", waited for them {:.0}% of the time", w * 100.0)
        });
        let _ = writeln!(
            out,
            "{:<14}used {:.0}% of its {} core(s){waited}",
            "",
            check.cpu_share * 100.0,
            check.cores
        );
    }
    for warning in &t.warnings {
        let _ = writeln!(out, "WARNING       {warning}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_when_the_generator_is_busy_or_starved() {
        // 9 s of CPU in a 10 s window on one core: 90%, the bottleneck.
        let busy = SelfCheck::new(9.0, Some(0.1), 10.0, 1);
        assert!(busy.busy && !busy.starved);
        assert!((busy.cpu_share - 0.9).abs() < 1e-9);
        assert_eq!(busy.warnings().len(), 1);
        assert!(busy.warnings()[0].contains("90% of its 1 core"), "{:?}", busy.warnings());
        // The same CPU on two cores is 45% of them: fine.
        let spread = SelfCheck::new(9.0, Some(0.1), 10.0, 2);
        assert!(!spread.busy && !spread.starved && spread.warnings().is_empty());
        // At the threshold itself, no warning; just above it, one.
        assert!(!SelfCheck::new(8.0, None, 10.0, 1).busy);
        assert!(SelfCheck::new(8.01, None, 10.0, 1).busy);
        // Waiting for the CPU a third of the time: starved, whatever it used.
        let starved = SelfCheck::new(3.0, Some(3.5), 10.0, 1);
        assert!(!starved.busy && starved.starved);
        assert!(starved.warnings()[0].contains("waited for its CPU(s) 35%"));
        // Both at once; and no wait figure is no wait warning.
        assert_eq!(SelfCheck::new(9.5, Some(5.0), 10.0, 1).warnings().len(), 2);
        assert!(!SelfCheck::new(1.0, None, 10.0, 1).starved);
        // A degenerate window warns about nothing.
        assert!(SelfCheck::new(1.0, Some(1.0), 0.0, 1).warnings().is_empty());
    }

    #[test]
    fn warns_when_the_server_waited_for_its_cpu() {
        assert!(server_wait_warning(11.7, 15.0).is_some_and(|w| w.contains("11.7 s")));
        assert_eq!(server_wait_warning(1.0, 15.0), None);
        assert_eq!(server_wait_warning(1.0, 0.0), None);
    }
}
