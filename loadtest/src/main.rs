//! `rtmp-loadtest`: flags -> plan -> executors -> interval lines -> summary (and JSON).
//!
//! The controlling thread (this one) never touches a socket: it resolves the server address,
//! starts the executors with their share of connections, merges the executors' interval
//! reports into one line each, samples `/proc` at the edges of the measured window and prints
//! the totals. Executors run one task per connection ([`publisher`], [`player`]) over plain
//! glommio sockets ([`conn`]).

mod cli;
mod conn;
mod player;
mod publisher;
mod readiness;
mod report;
mod rng;
mod shard;
mod stats;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use clap::Parser;
use rtmp_loadtest::clock;
use rtmp_loadtest::procfs::{self, ProcSample};

use crate::cli::{Cli, Plan, PlayerClass};
use crate::player::PlayerSpec;
use crate::publisher::PublisherSpec;
use crate::report::{Collector, IntervalLine, ProcReport};
use crate::rng::Rng;
use crate::shard::{Job, Report};
use crate::stats::{Gauges, IntervalStats};

/// How long after the planned end the controlling thread waits for executors before it gives
/// up on them and reports what it has.
const END_GRACE: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let plan = match cli.plan() {
        Ok(plan) => Arc::new(plan),
        Err(e) => {
            eprintln!("rtmp-loadtest: {e}");
            return ExitCode::from(2);
        }
    };
    raise_fd_limit(plan.publishers * (plan.players + 1) + 64);
    clock::epoch();

    let server_baseline = sample(plan.server_pid);
    let self_baseline = sample(None);
    let start = Instant::now() + Duration::from_millis(100);
    let (tx, rx) = mpsc::channel();
    let mut executors = Vec::new();
    for (id, jobs) in assign_jobs(&plan).into_iter().enumerate() {
        match shard::spawn(id, plan.clone(), start, jobs, tx.clone()) {
            Ok(handle) => executors.push(handle),
            Err(e) => {
                eprintln!("rtmp-loadtest: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    drop(tx);
    if !plan.quiet {
        println!(
            "rtmp-loadtest: {} publisher(s) x {} player(s) on {} ({} executor(s)); \
             'w' marks warmup intervals",
            plan.publishers, plan.players, plan.url.tc_url, plan.cores
        );
        println!("{}", IntervalLine::header());
    }

    let window_start = start + plan.interval * plan.warmup_intervals;
    let window_end = start + plan.run_time();
    let give_up = window_end + END_GRACE;
    let mut samples_start: Option<(Option<ProcSample>, Option<ProcSample>)> = None;
    let mut samples_end: Option<(Option<ProcSample>, Option<ProcSample>)> = None;
    let mut pending: BTreeMap<u32, (usize, IntervalStats, Gauges)> = BTreeMap::new();
    let mut collector = Collector::default();
    let mut done = 0;
    let mut incomplete = false;
    loop {
        let now = Instant::now();
        if samples_start.is_none() && now >= window_start {
            samples_start = Some((sample(plan.server_pid), sample(None)));
        }
        if samples_end.is_none() && now >= window_end {
            samples_end = Some((sample(plan.server_pid), sample(None)));
        }
        if done == plan.cores && samples_end.is_some() {
            break;
        }
        if now >= give_up {
            incomplete = true;
            break;
        }
        let wake = [
            samples_start.is_none().then_some(window_start),
            samples_end.is_none().then_some(window_end),
            Some(give_up),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(give_up);
        match rx.recv_timeout(wake.saturating_duration_since(now)) {
            Ok((_, Report::Interval { index, stats, gauges })) => {
                let entry = pending.entry(index).or_default();
                entry.0 += 1;
                entry.1.merge(&stats);
                entry.2.add(&gauges);
                // Lines go out in order, each once every executor has reported it.
                while let Some(entry) = pending.first_entry() {
                    if entry.get().0 < plan.cores {
                        break;
                    }
                    let (index, (_, stats, gauges)) = entry.remove_entry();
                    let line = collector.add(&plan, index, &stats, gauges);
                    if !plan.quiet {
                        println!("{}", line.render());
                    }
                }
            }
            Ok((_, Report::Done)) => done += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                incomplete = done < plan.cores;
                if samples_end.is_none() {
                    samples_end = Some((sample(plan.server_pid), sample(None)));
                }
                break;
            }
        }
    }
    incomplete |= collector.lines.len() < plan.total_intervals as usize;

    let avg_players = collector.gauges().players_avg;
    let window_secs = plan.window_secs();
    let proc_report =
        |pid: Option<u32>, baseline, start: Option<ProcSample>, end: Option<ProcSample>| {
            Some(ProcReport::new(pid, baseline, start?, end?, window_secs, avg_players))
        };
    let (server_start, self_start) = samples_start.unwrap_or((None, None));
    let (server_end, self_end) = samples_end.unwrap_or((None, None));
    let server = plan
        .server_pid
        .and_then(|pid| proc_report(Some(pid), server_baseline, server_start, server_end));
    let loadgen = proc_report(None, self_baseline, self_start, self_end);
    let totals = collector.totals(&plan, server, loadgen, loadgen_cores(&plan), incomplete);
    if !plan.quiet {
        println!();
    }
    print!("{}", report::render(&totals, &plan));
    if let Some(path) = &plan.json {
        let written = serde_json::to_vec_pretty(&totals)
            .map_err(|e| e.to_string())
            .and_then(|json| std::fs::write(path, json).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("rtmp-loadtest: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    if incomplete {
        // An executor is stuck: exit without joining it.
        eprintln!("rtmp-loadtest: some executor did not finish in time; exiting anyway");
        std::process::exit(3);
    }
    for executor in executors {
        let _ = executor.join();
    }
    if totals.publisher_starts == 0 || (plan.players > 0 && totals.player_joins == 0) {
        eprintln!("rtmp-loadtest: no publish or no play ever started");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Cores the executors ran on: the distinct CPUs of `--cpus`, else one per executor as far as
/// the process's CPU affinity allows.
fn loadgen_cores(plan: &Plan) -> usize {
    if !plan.cpus.is_empty() {
        let mut cpus = plan.cpus.clone();
        cpus.sort_unstable();
        cpus.dedup();
        return cpus.len();
    }
    let allowed = std::thread::available_parallelism().map_or(plan.cores, |n| n.get());
    plan.cores.min(allowed).max(1)
}

/// Samples `pid` (or this process with `None`), reporting a failure once on stderr.
fn sample(pid: Option<u32>) -> Option<ProcSample> {
    if pid.is_none() && cfg!(not(target_os = "linux")) {
        return None;
    }
    match procfs::sample(pid) {
        Ok(sample) => Some(sample),
        Err(e) => {
            let what = pid.map_or_else(|| "self".to_owned(), |p| p.to_string());
            eprintln!("rtmp-loadtest: cannot sample /proc/{what}: {e}");
            None
        }
    }
}

/// Spreads connections over the executors round-robin, and gives each player its class and
/// join time.
///
/// Per stream, `round(fraction x players)` players are stalled, slow and churning, picked at
/// random (seeded). Joins are ordered stream by stream in turn (player 0 of every stream, then
/// player 1, ...) and spread evenly over `--ramp` after `--player-delay`.
fn assign_jobs(plan: &Plan) -> Vec<Vec<Job>> {
    let mut rng = Rng::new(plan.seed);
    let mut jobs: Vec<Vec<Job>> = vec![Vec::new(); plan.cores];
    let mut next = 0;
    let frame_ns = plan.stream.video_interval_ns() as f64;
    for stream in 0..plan.publishers {
        // Spread keyframes over the GOP and frames over a frame interval, stream by stream.
        let share = stream as f64 / plan.publishers as f64;
        let spec = PublisherSpec {
            stream,
            seed: rng.next_u64(),
            keyframe_phase: (share * f64::from(plan.stream.gop_frames)) as u32,
            frame_offset: Duration::from_nanos((share * frame_ns) as u64),
        };
        jobs[next % plan.cores].push(Job::Publisher(spec));
        next += 1;
    }
    let count = |fraction: f64| (fraction * plan.players as f64).round() as usize;
    let classes: Vec<Vec<PlayerClass>> = (0..plan.publishers)
        .map(|_| {
            let mut classes = Vec::with_capacity(plan.players);
            for (class, n) in [
                (PlayerClass::Stalled, count(plan.stalled)),
                (PlayerClass::Slow, count(plan.slow)),
                (PlayerClass::Churn, count(plan.churn)),
            ] {
                let room = plan.players - classes.len();
                classes.resize(classes.len() + n.min(room), class);
            }
            classes.resize(plan.players, PlayerClass::Normal);
            rng.shuffle(&mut classes);
            classes
        })
        .collect();
    let total = (plan.publishers * plan.players).max(1);
    for index in 0..plan.players {
        for (stream, stream_classes) in classes.iter().enumerate() {
            let order = index * plan.publishers + stream;
            let spec = PlayerSpec {
                stream,
                class: stream_classes[index],
                join_at: plan.player_delay + plan.ramp.mul_f64(order as f64 / total as f64),
                seed: rng.next_u64(),
            };
            jobs[next % plan.cores].push(Job::Player(spec));
            next += 1;
        }
    }
    jobs
}

/// Raises the soft open-file limit towards `wanted` (up to the hard limit): every connection
/// is a file descriptor.
fn raise_fd_limit(wanted: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let wanted = wanted as libc::rlim_t;
        if limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted.min(limit.rlim_max);
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    if (limit.rlim_cur as usize) < wanted {
        eprintln!(
            "rtmp-loadtest: open-file limit {} is below the {wanted} connections planned",
            limit.rlim_cur
        );
    }
}
