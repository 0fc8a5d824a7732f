//! `rtmp-relay`: config -> telemetry -> service (runtime, signals, systemd) -> exit code.
//!
//! Two commands run instead of the server: `check-config FILE` (load, validate, print the
//! effective config with secrets masked) and `default-config` (print the commented default
//! file).

use std::ffi::OsString;
use std::process::ExitCode;

use rtmp_relay::config::{default_config_file, effective_toml, LoadError, LogFormat};
use rtmp_relay::{service, telemetry, Config};
use tracing::error;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // `rtmp-relay token ...`: mint a token and exit.
    if args.get(1).is_some_and(|a| a == "token") {
        use clap::Parser;
        let token_args = rtmp_relay::auth::cli::TokenArgs::parse_from(args.iter().skip(1));
        return match rtmp_relay::auth::cli::run(token_args, std::time::SystemTime::now()) {
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
    match args.get(1).and_then(|a| a.to_str()) {
        Some("check-config") => return check_config(&args[2..]),
        Some("default-config") => {
            print!("{}", default_config_file());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match Config::load(args.iter().cloned()) {
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
    service::run(args, config)
}

/// `rtmp-relay check-config FILE`, like `nginx -t`: 0 and the effective config on stdout when
/// FILE loads and validates; 1 and one line naming the key and the problem otherwise.
fn check_config(rest: &[OsString]) -> ExitCode {
    let [file] = rest else {
        eprintln!("usage: rtmp-relay check-config FILE");
        return ExitCode::from(2);
    };
    let shown = file.to_string_lossy();
    let loaded = Config::load([OsString::from("rtmp-relay"), "--config".into(), file.clone()]);
    let config = match loaded {
        Ok(config) => config,
        Err(e) => {
            eprintln!("rtmp-relay: {shown}: {}", service::describe(&e));
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("rtmp-relay: {shown}: {e}");
        return ExitCode::FAILURE;
    }
    print!("{}", effective_toml(&config));
    eprintln!("rtmp-relay: {shown}: configuration ok");
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
