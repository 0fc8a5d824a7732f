//! `rtmp-relay`: config -> telemetry -> runtime -> exit code.

use std::process::ExitCode;

use rtmp_relay::config::{LoadError, LogFormat};
use rtmp_relay::{telemetry, Config};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    // `rtmp-relay token ...`: mint a token and exit.
    if std::env::args_os().nth(1).is_some_and(|a| a == "token") {
        use clap::Parser;
        let args = rtmp_relay::auth::cli::TokenArgs::parse_from(std::env::args_os().skip(1));
        return match rtmp_relay::auth::cli::run(args, std::time::SystemTime::now()) {
            Ok(out) => {
                println!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("rtmp-relay token: {e}");
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::load(std::env::args_os()) {
        Ok(config) => config,
        // --help and --version arrive here too: clap prints them and exits 0.
        Err(LoadError::Flags(e)) => e.exit(),
        Err(e) => {
            eprintln!("rtmp-relay: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&config.log_level, config.log_format == LogFormat::Json);
    abort_on_panic();
    // Block SIGINT/SIGTERM (and SIGHUP, the keys reload) here, before any shard thread exists, so every thread inherits the
    // mask and the signals wait for `sigwait` below instead of killing the process mid-write.
    let signals = match block_shutdown_signals() {
        Ok(signals) => signals,
        Err(e) => {
            error!(error = %e, "cannot install signal handling");
            return ExitCode::FAILURE;
        }
    };
    let server = match rtmp_relay::start(&config) {
        Ok(server) => server,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP reloads the RTMPS certificates (on the reloader's thread) and the access-control
    // keys; SIGINT/SIGTERM stop.
    let signal = loop {
        match wait_for(&signals) {
            "SIGHUP" => {
                info!("SIGHUP: reloading TLS certificates and auth keys");
                server.request_tls_reload();
                match server.reload_auth_keys() {
                    Ok(keys) => info!(keys, "SIGHUP: auth keys reloaded"),
                    Err(e) => warn!(error = %e, "SIGHUP: auth keys not reloaded"),
                }
            }
            signal => break signal,
        }
    };
    info!(signal, timeout_secs = config.shutdown_timeout_secs, "shutting down gracefully");
    // A second signal means "now": an operator who does not want to wait is not made to.
    std::thread::spawn(move || {
        let signal = loop {
            match wait_for(&signals) {
                "SIGHUP" => continue,
                signal => break signal,
            }
        };
        error!(signal, "second signal: exiting at once");
        std::process::exit(130);
    });
    server.shutdown();
    info!("shut down");
    ExitCode::SUCCESS
}

/// A panic anywhere ends the process, loudly. glommio does not catch panics in tasks: one
/// would unwind out of its shard's executor and leave the server running without that shard
/// (its streams unreachable, the other shards' mesh messages to it lost). A supervisor restarts
/// a process that died; nothing restarts a shard. `tests/shutdown.rs` shows it happen.
fn abort_on_panic() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        error!(thread = thread.name().unwrap_or("?"), panic = %info, "panic: exiting");
        default_hook(info);
        std::process::abort();
    }));
}

/// SIGINT and SIGTERM (shutdown) and SIGHUP (reload certificates).
fn block_shutdown_signals() -> std::io::Result<libc::sigset_t> {
    // SAFETY: sigemptyset/sigaddset initialise the set we own; pthread_sigmask only changes this
    // thread's mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(set)
    }
}

fn wait_for(set: &libc::sigset_t) -> &'static str {
    let mut signal = 0;
    // SAFETY: `set` was initialised by `block_shutdown_signals` and its signals are blocked.
    unsafe { libc::sigwait(set, &mut signal) };
    match signal {
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "SIGINT",
    }
}
