//! The config as a file: the effective config that `rtmp-relay check-config` prints (secrets
//! masked), and the commented default file the package installs, generated from the flags'
//! own help and defaults so that it cannot drift from them.

use clap::CommandFactory;

use super::Config;

/// The commands beside the server itself, for `--help`.
pub(super) const COMMANDS_HELP: &str = "\
Commands:
  rtmp-relay check-config FILE   Load and validate FILE (like `nginx -t`), print the effective
                                 config with secrets masked; exit 1 naming the key at fault.
  rtmp-relay default-config      Print the commented default config file.

Signals: SIGHUP reloads the config file (so does POST /reload on the control plane, from
localhost); SIGTERM or SIGINT shut down gracefully, a second one at once.";

/// Words that make a key's value a secret: masked wherever the config is shown. Keys that
/// hold credentials (publish keys, token secrets, passwords) must contain one of them.
const SECRET_WORDS: &[&str] = &["secret", "password", "token", "credential", "passphrase"];

/// What a secret's value is shown as.
pub const MASK: &str = "********";

/// Whether the value of `key` is a secret, never to be printed.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    // A size of a token or the path of a secret file is not itself a secret.
    let about_a_secret = key.ends_with("-bytes") || key.ends_with("-file");
    !about_a_secret && SECRET_WORDS.iter().any(|word| key.contains(word))
}

/// `config` as a TOML table keyed by the long flag names.
pub(super) fn as_table(config: &Config) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(map)) => map,
        // A struct of plain fields always serialises to an object.
        _ => serde_json::Map::new(),
    }
}

/// One value as TOML (strings quoted and escaped, arrays bracketed).
fn toml_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => toml::Value::String(s.clone()).to_string(),
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(toml_value).collect::<Vec<_>>().join(", "))
        }
        other => other.to_string(),
    }
}

/// The effective config as a TOML file that `--config` would load back to the same settings:
/// every key, unset ones as comments, secrets masked.
pub fn effective_toml(config: &Config) -> String {
    let mut out = String::new();
    for (key, value) in as_table(config) {
        if key == "config" {
            continue;
        }
        if value.is_null() {
            out.push_str(&format!("# {key} is unset\n"));
        } else if is_secret(&key) {
            out.push_str(&format!("{key} = \"{MASK}\"\n"));
        } else {
            out.push_str(&format!("{key} = {}\n", toml_value(&value)));
        }
    }
    out
}

/// Words of `text` as `# `-comment lines of at most `width` columns.
fn comment(text: &str, width: usize, out: &mut String) {
    for paragraph in text.split("\n\n") {
        let mut line = String::from("#");
        for word in paragraph.split_whitespace() {
            if line.len() + 1 + word.len() > width && line.len() > 1 {
                out.push_str(&line);
                out.push('\n');
                line = String::from("#");
            }
            line.push(' ');
            line.push_str(word);
        }
        out.push_str(&line);
        out.push('\n');
    }
}

/// The default config file: every setting a file may hold, commented out at its default,
/// under the help text of its flag. Generated from the clap definitions, so a new flag or a
/// changed default shows up here (and `tests/packaging.rs` fails until the packaged copy is
/// regenerated with `rtmp-relay default-config > packaging/rtmp-relay.toml`).
pub fn default_config_file() -> String {
    let defaults = as_table(&Config::default());
    let mut out = String::from(
        "# rtmp-relay configuration (TOML). Every setting is shown commented out at its\n\
         # default: uncomment and change what you need. Keys are the long flag names of\n\
         # `rtmp-relay --help`; flags on the command line override this file.\n\
         #\n\
         # Check a change before applying it:  rtmp-relay check-config /etc/rtmp-relay/rtmp-relay.toml\n\
         # Apply it without dropping viewers:  systemctl reload rtmp-relay\n\
         # (listen and shards need a restart; a reload says so and keeps them.)\n",
    );
    let command = Config::command();
    for arg in command.get_arguments() {
        let Some(key) = arg.get_long() else { continue };
        if arg.is_hide_set() || key == "config" || key == "help" || key == "version" {
            continue;
        }
        out.push('\n');
        let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string);
        comment(help.as_deref().unwrap_or(""), 96, &mut out);
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# (environment: {})\n", env.to_string_lossy()));
        }
        match defaults.get(key) {
            Some(serde_json::Value::Null) | None => {
                out.push_str(&format!("# {key} = (unset by default)\n"));
            }
            Some(value) => out.push_str(&format!("# {key} = {}\n", toml_value(value))),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognised_by_their_key() {
        for key in ["auth-secret", "publish-token", "origin-password", "TOKEN_SECRET"] {
            assert!(is_secret(key), "{key}");
        }
        for key in ["listen", "record-dir", "debug-panic-on-key", "max-stream-name-bytes"] {
            assert!(!is_secret(key), "{key}");
        }
    }

    #[test]
    fn the_effective_config_loads_back_to_the_same_settings() {
        let config = Config::load([
            "rtmp-relay",
            "--shards=3",
            "--record-dir=/tmp/rec",
            "--record-apps=live,vod",
            "--log-level=warn,rtmp_relay=debug",
            "--no-http",
        ])
        .expect("flags parse");
        let text = effective_toml(&config);
        assert!(text.contains("record-apps = [\"live\", \"vod\"]\n"), "{text}");
        assert!(text.contains("# record-segment-secs is unset\n"), "{text}");
        let path =
            std::env::temp_dir().join(format!("rtmp-relay-{}-effective.toml", std::process::id()));
        std::fs::write(&path, &text).unwrap();
        let loaded = Config::load(["rtmp-relay", "--config", path.to_str().unwrap()]);
        std::fs::remove_file(&path).unwrap();
        let mut loaded = loaded.expect("the printed config loads");
        loaded.config = None;
        assert_eq!(as_table(&loaded), as_table(&config));
    }

    #[test]
    fn the_default_file_names_every_setting_with_its_default() {
        let text = default_config_file();
        assert!(text.contains("# listen = \"0.0.0.0:1935\"\n"), "{text}");
        assert!(text.contains("# shards = (unset by default)\n"), "{text}");
        assert!(text.contains("# no-http = false\n"), "{text}");
        assert!(text.contains("# Address to accept RTMP connections on\n"), "{text}");
        assert!(!text.contains("debug-panic-on-key"), "testing aids stay out of it");
        for line in text.lines() {
            assert!(line.starts_with('#') || line.is_empty(), "all commented: {line}");
        }
    }
}
