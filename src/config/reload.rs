//! What a reload may change. Every setting is in exactly one of two lists:
//!
//! - [`LIVE_KEYS`]: applied to the running server without dropping a session. Each shard
//!   receives the whole new [`Config`] over its control channel (`runtime`'s `Control::Reload`)
//!   and rebuilds from it what it holds: the relay settings (slow-player policy, limits,
//!   late-join cache and recording for streams that start from then on); the log filter is
//!   swapped by the binary. A feature with settings of its own (access policies, origins,
//!   relays) adds its keys here and picks them up in the shard's reload.
//! - [`RESTART_KEYS`]: fixed at start (sockets, threads, the chunk size every frame is encoded
//!   at, the per-connection protocol limits each session took when it began). A reload that
//!   changes one reports it as needing a restart and keeps the running value.
//!
//! A test checks that every key of [`Config`] is in one list, so a new setting cannot be
//! silently ignored by a reload.

use serde::Serialize;

use super::{Config, ConfigError};

/// Settings a reload applies live.
pub const LIVE_KEYS: &[&str] = &[
    "log-level",
    "player-soft-lag-ms",
    "player-hard-limit-bytes",
    "player-stall-secs",
    "republish-wait-secs",
    "max-streams-per-shard",
    "max-players-per-stream",
    "gop-cache-max-bytes",
    "gop-cache-max-ms",
    "record-dir",
    "record-apps",
    "record-template",
    "record-segment-secs",
    "record-segment-bytes",
    "record-flush-ms",
    "record-buffer-bytes",
    "shutdown-timeout-secs",
];

/// Settings that only a restart changes.
pub const RESTART_KEYS: &[&str] = &[
    "listen",
    "shards",
    "http",
    "no-http",
    "log-format",
    "config",
    "mesh-frame-limit",
    "mesh-channel-capacity",
    "mesh-control-limit",
    "out-chunk-size",
    "max-message-bytes",
    "max-chunk-streams",
    "max-partial-bytes",
    "max-amf-depth",
    "max-amf-string-bytes",
    "max-amf-elements",
    "max-message-streams",
    "window-ack-size",
    "handshake-timeout-secs",
    "idle-before-play-secs",
    "publisher-idle-secs",
    "max-connections",
    "max-connections-per-ip",
    "max-handshaking-per-ip",
    "max-stream-name-bytes",
    "player-send-buffer-bytes",
    "debug-shard-listeners",
    "debug-panic-on-key",
    "debug-stall-on-key",
    "debug-stall-secs",
    // Listeners, TLS, outbound relays and access control: their files reload on their own
    // (certificates and auth keys on SIGHUP and on change); their settings need a restart.
    "rtmps-listen",
    "rtmps-cert",
    "rtmps-key",
    "tls-reload-check-secs",
    "push",
    "push-queue-bytes",
    "push-backoff-min-ms",
    "push-backoff-max-secs",
    "push-connect-timeout-secs",
    "push-ca-file",
    "push-insecure-skip-verify",
    "publish-auth",
    "play-auth",
    "publish-allow",
    "publish-deny",
    "play-allow",
    "play-deny",
    "auth-keys",
    "auth-keys-poll-ms",
    "auth-revoke-on-key-removal",
    "auth-max-token-bytes",
    "auth-leeway-secs",
    "auth-callback",
    "auth-callback-secret-file",
    "auth-callback-timeout-ms",
    "auth-callback-max-in-flight",
    "auth-callback-cache-secs",
    "auth-callback-cache-entries",
    "auth-callback-max-answer-bytes",
    "auth-done-queue",
    "auth-done-retries",
    "auth-fail-publish",
    "auth-fail-play",
    "node-id",
    "pull",
    "pull-mode",
    "pull-linger-secs",
    "pull-backoff-min-ms",
    "pull-backoff-max-secs",
    "pull-connect-timeout-secs",
    "pull-attempts-per-sec",
    "pull-attempts-in-flight",
    "pull-ca-file",
    "pull-insecure-skip-verify",
];

/// What a reload does: the config to run with from now on, and what changed.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadPlan {
    /// The new config, with the restart-only settings kept as they run.
    #[serde(skip)]
    pub config: Config,
    /// Settings that changed and are applied now.
    pub applied: Vec<String>,
    /// Settings that changed in the file but need a restart: still running as they were.
    pub restart_required: Vec<String>,
}

/// Compares the running config with a freshly loaded one. The new one must be valid, and is
/// validated again after the restart-only settings are put back (a limit may relate to one).
pub fn plan_reload(running: &Config, new: &Config) -> Result<ReloadPlan, ConfigError> {
    new.validate()?;
    let old = super::file::as_table(running);
    let mut merged = super::file::as_table(new);
    let (mut applied, mut restart_required) = (Vec::new(), Vec::new());
    for (key, value) in merged.iter_mut() {
        let before = old.get(key).unwrap_or(&serde_json::Value::Null);
        if before == value {
            continue;
        }
        if RESTART_KEYS.contains(&key.as_str()) {
            restart_required.push(key.clone());
            *value = before.clone();
        } else if LIVE_KEYS.contains(&key.as_str()) {
            applied.push(key.clone());
        } else {
            // Unreachable while the classification test passes; refuse rather than guess.
            return Err(ConfigError(format!("{key}: no reload rule for this setting")));
        }
    }
    let config: Config = serde_json::from_value(serde_json::Value::Object(merged))
        .map_err(|e| ConfigError(format!("cannot merge the reloaded config: {e}")))?;
    config.validate()?;
    Ok(ReloadPlan { config, applied, restart_required })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn every_setting_has_a_reload_rule() {
        let keys: Vec<String> =
            super::super::file::as_table(&Config::default()).keys().cloned().collect();
        for key in &keys {
            let live = LIVE_KEYS.contains(&key.as_str());
            let restart = RESTART_KEYS.contains(&key.as_str());
            assert!(live ^ restart, "{key} must be in exactly one of LIVE_KEYS and RESTART_KEYS");
        }
        for key in LIVE_KEYS.iter().chain(RESTART_KEYS) {
            assert!(keys.iter().any(|k| k == key), "{key} is not a setting");
        }
    }

    #[test]
    fn live_settings_change_and_restart_settings_are_kept() {
        let running = Config::parse_from(["rtmp-relay", "--listen=127.0.0.1:1935", "--shards=2"]);
        let new = Config::parse_from([
            "rtmp-relay",
            "--listen=127.0.0.1:1936",
            "--shards=4",
            "--player-soft-lag-ms=9000",
            "--log-level=debug",
        ]);
        let plan = plan_reload(&running, &new).expect("valid");
        assert_eq!(plan.applied, ["log-level", "player-soft-lag-ms"]);
        assert_eq!(plan.restart_required, ["listen", "shards"]);
        assert_eq!(plan.config.listen, running.listen);
        assert_eq!(plan.config.shards, Some(2));
        assert_eq!(plan.config.player_soft_lag_ms, 9000);
        assert_eq!(plan.config.log_level, "debug");
    }

    #[test]
    fn an_invalid_config_is_refused_whole() {
        let running = Config::default();
        let new = Config::parse_from(["rtmp-relay", "--player-soft-lag-ms=10", "--shards=3"]);
        let err = plan_reload(&running, &new).expect_err("soft lag below the GOP");
        assert!(err.to_string().contains("--player-soft-lag-ms"), "{err}");
    }

    #[test]
    fn an_unchanged_config_changes_nothing() {
        let plan = plan_reload(&Config::default(), &Config::default()).expect("valid");
        assert!(plan.applied.is_empty() && plan.restart_required.is_empty(), "{plan:?}");
    }
}
