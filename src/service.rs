//! Running as a service: signals, systemd readiness, status and watchdog, and the one reload
//! path.
//!
//! The binary's main thread runs [`run`]: it starts the server, tells systemd `READY=1` once
//! every shard listens and the control plane serves, then handles events one at a time:
//! - SIGTERM or SIGINT: `STOPPING=1` and a graceful shutdown (a second signal exits at once);
//! - SIGHUP or `POST /reload`: `RELOADING=1`, the config loaded again from the same command
//!   line and file, planned against the running one (`config::plan_reload`), the log filter
//!   swapped and every shard handed the new config over its control channel, then `READY=1`.
//!   An invalid file is refused whole with a log line; the running config stays.
//!
//! Under systemd (`NOTIFY_SOCKET` set) a watchdog thread asks every shard for a snapshot
//! through its control channel, with a deadline: only when all of them answer does it send
//! `WATCHDOG=1` (if `WatchdogSec=` is set) and a `STATUS=` line with streams and players. A
//! shard stuck in a loop or a blocking call stops the pings and systemd restarts the process.
//! Without `NOTIFY_SOCKET` none of this runs: every notification is a no-op.

use std::ffi::OsString;
use std::process::ExitCode;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{error, info, warn};

use crate::config::{plan_reload, Config, LoadError};
use crate::metrics::ReloadHook;
use crate::runtime::{ShardControls, ShardSnapshot};

/// How long `POST /reload` waits for the reload to be done.
const RELOAD_ANSWER_WAIT: Duration = Duration::from_secs(30);
/// How long a reload waits for every shard to confirm.
const RELOAD_SHARD_WAIT: Duration = Duration::from_secs(5);
/// How often STATUS= is refreshed when systemd asks for no watchdog.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

enum Event {
    Shutdown(&'static str),
    Reload { source: &'static str, reply: Option<mpsc::Sender<Result<String, String>>> },
}

/// Runs the server as a service until a shutdown signal; the process's exit code. `args` is
/// the command line, loaded again on each reload.
pub fn run(args: Vec<OsString>, config: Config) -> ExitCode {
    // Block the signals here, before any shard thread exists, so every thread inherits the
    // mask and the signals wait for `sigwait` in the signal thread instead of killing the
    // process mid-write.
    let signals = match block_signals() {
        Ok(signals) => signals,
        Err(e) => {
            error!(error = %e, "cannot install signal handling");
            return ExitCode::FAILURE;
        }
    };
    let (events_tx, events) = mpsc::channel();
    let reload_hook: ReloadHook = {
        let events = events_tx.clone();
        Arc::new(move || {
            let (reply, answer) = mpsc::channel();
            let request = Event::Reload { source: "http", reply: Some(reply) };
            events.send(request).map_err(|_| "the server is shutting down".to_owned())?;
            answer
                .recv_timeout(RELOAD_ANSWER_WAIT)
                .map_err(|_| "the reload did not finish in time".to_owned())?
        })
    };
    let server = match crate::runtime::start_with(&config, Some(reload_hook)) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || forward_signals(&signals, &events_tx))
    {
        error!(error = %e, "cannot start the signal thread");
        return ExitCode::FAILURE;
    }
    notify(&[NotifyState::Ready, NotifyState::Status("serving")]);

    let (stop_watch, watch_stopped) = mpsc::channel::<()>();
    let watchdog = std::env::var_os("NOTIFY_SOCKET").is_some().then(|| {
        let controls = server.controls();
        let interval = sd_notify::watchdog_enabled();
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(&controls, interval, &watch_stopped))
    });

    let mut running = config;
    let signal = loop {
        match events.recv() {
            Ok(Event::Shutdown(signal)) => break signal,
            Ok(Event::Reload { source, reply }) => {
                // What is reloaded from its own files: the RTMPS certificates (on their
                // reloader's thread) and the access-control keys.
                server.request_tls_reload();
                match server.reload_auth_keys() {
                    Ok(keys) => info!(keys, "{source}: auth keys reloaded"),
                    Err(e) => warn!(error = %e, "{source}: auth keys not reloaded"),
                }
                let outcome = reload(&args, &mut running, &server.controls(), source);
                if let Some(reply) = reply {
                    let _ = reply.send(outcome);
                }
            }
            Err(_) => break "signal thread gone",
        }
    };
    notify(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
    info!(signal, timeout_secs = running.shutdown_timeout_secs, "shutting down gracefully");
    drop(stop_watch);
    if let Some(Ok(thread)) = watchdog {
        let _ = thread.join();
    }
    server.shutdown();
    info!("shut down");
    ExitCode::SUCCESS
}

/// One reload: the report as JSON, or why the new config was refused.
fn reload(
    args: &[OsString],
    running: &mut Config,
    controls: &ShardControls,
    source: &'static str,
) -> Result<String, String> {
    let reloading = NotifyState::monotonic_usec_now().ok();
    notify(&[Some(NotifyState::Reloading), reloading].into_iter().flatten().collect::<Vec<_>>());
    let outcome = plan(args, running).map(|plan| {
        let unconfirmed = if plan.applied.is_empty() {
            Vec::new()
        } else {
            controls.reload(&plan.config, RELOAD_SHARD_WAIT).err().unwrap_or_default()
        };
        *running = plan.config.clone();
        (plan, unconfirmed)
    });
    notify(&[NotifyState::Ready]);
    match outcome {
        Ok((plan, unconfirmed)) => {
            info!(source, applied = ?plan.applied, restart_required = ?plan.restart_required,
                "config reloaded");
            if !plan.restart_required.is_empty() {
                warn!(settings = ?plan.restart_required,
                    "these settings changed but need a restart: running with the old values");
            }
            if !unconfirmed.is_empty() {
                warn!(shards = ?unconfirmed, "shards did not confirm the reload in time");
            }
            // Last, so that the lines above are written at the level they were asked at.
            // The filter was validated with the rest of the file.
            if plan.applied.iter().any(|key| key == "log-level") {
                if let Err(e) = crate::telemetry::set_filter(&plan.config.log_level) {
                    error!(error = %e, "the log level could not be changed");
                }
            }
            let report = serde_json::json!({
                "applied": plan.applied,
                "restart_required": plan.restart_required,
                "unconfirmed_shards": unconfirmed,
            });
            Ok(report.to_string())
        }
        Err(refused) => {
            error!(source, error = %refused, "config reload refused: the running config is kept");
            Err(refused)
        }
    }
}

fn plan(args: &[OsString], running: &Config) -> Result<crate::config::ReloadPlan, String> {
    let new = Config::load(args.iter().cloned()).map_err(|e| describe(&e))?;
    plan_reload(running, &new).map_err(|e| e.to_string())
}

/// A load error in one line: clap's first line names the flag (the file's key) and the value.
pub fn describe(error: &LoadError) -> String {
    match error {
        LoadError::Flags(e) => {
            let text = e.to_string();
            let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("invalid flags");
            first.trim_start_matches("error: ").to_owned()
        }
        other => other.to_string(),
    }
}

/// The watchdog: every `interval / 3` (or every [`STATUS_INTERVAL`] without a watchdog) ask
/// every shard for a snapshot; only when all answer in time, `WATCHDOG=1` and a fresh status.
fn watch(controls: &ShardControls, interval: Option<Duration>, stop: &mpsc::Receiver<()>) {
    let tick = interval
        .map_or(STATUS_INTERVAL, |w| (w / 3).clamp(Duration::from_millis(50), STATUS_INTERVAL));
    info!(
        watchdog_ms = interval.map(|w| w.as_millis() as u64),
        tick_ms = tick.as_millis() as u64,
        "systemd notification on"
    );
    let mut silent_before = Vec::new();
    loop {
        match controls.snapshots_within(tick) {
            Ok(snapshots) => {
                if !silent_before.is_empty() {
                    info!("every shard answers again: watchdog resumed");
                    silent_before.clear();
                }
                let status = status_line(&snapshots);
                let mut states = vec![NotifyState::Status(&status)];
                if interval.is_some() {
                    states.push(NotifyState::Watchdog);
                }
                notify(&states);
            }
            Err(silent) => {
                if silent != silent_before {
                    warn!(shards = ?silent, "shards do not answer: watchdog withheld");
                }
                let status = format!("shards not answering: {silent:?}");
                notify(&[NotifyState::Status(&status)]);
                silent_before = silent;
            }
        }
        match stop.recv_timeout(tick) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// `STATUS=`: what `systemctl status` shows.
fn status_line(snapshots: &[ShardSnapshot]) -> String {
    let total =
        snapshots.iter().fold(crate::metrics::CountersSnapshot::default(), |t, s| t + s.counters);
    format!(
        "{} streams, {} publishers, {} players, {} connections",
        total.streams, total.publishers, total.subscribers, total.connections_open
    )
}

/// Sends `states` to systemd; nothing without `NOTIFY_SOCKET`. A failure is logged, never
/// fatal: the server serves whether or not its supervisor hears it.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "systemd notification failed");
    }
}

fn block_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset/sigaddset initialise the set we own; pthread_sigmask only changes this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, signal);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

/// Turns signals into events. A second shutdown signal means "now": an operator who does not
/// want to wait is not made to.
fn forward_signals(set: &libc::sigset_t, events: &mpsc::Sender<Event>) {
    let mut shutting_down = false;
    loop {
        let mut signal = 0;
        // SAFETY: `set` was initialised by `block_signals` and its signals are blocked.
        if unsafe { libc::sigwait(set, &mut signal) } != 0 {
            continue;
        }
        let name = match signal {
            libc::SIGHUP => {
                if !shutting_down {
                    let _ = events.send(Event::Reload { source: "SIGHUP", reply: None });
                }
                continue;
            }
            libc::SIGTERM => "SIGTERM",
            _ => "SIGINT",
        };
        if shutting_down {
            error!(signal = name, "second signal: exiting at once");
            std::process::exit(130);
        }
        shutting_down = true;
        let _ = events.send(Event::Shutdown(name));
    }
}
