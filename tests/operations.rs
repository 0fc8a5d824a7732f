//! What an operator runs besides the server: `check-config` (every validation error names its
//! key), the packaged default config (generated from the flags, so it must match them), the
//! systemd unit (`systemd-analyze verify`), the Debian package's sources, and the Grafana
//! dashboard (every metric it queries exists in `/metrics` of a server with a stream).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rtmp_proto::session::MediaKind;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "rtmp-relay-{}-{}.toml",
        std::process::id(),
        fresh_key(name)
    ));
    std::fs::write(&path, text).expect("write a temp file");
    path
}

/// `rtmp-relay ARGS`: (exit code, stdout, stderr).
fn relay(args: &[&str]) -> (Option<i32>, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_rtmp-relay"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rtmp-relay");
    let output = wait_output(child, "rtmp-relay", Duration::from_secs(60));
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (output.status.code(), text(&output.stdout), text(&output.stderr))
}

/// `check-config` on a file holding `text`: it must fail with exit code 1 and one message
/// that contains every one of `needles` (the key and the problem).
fn refused(text: &str, needles: &[&str]) {
    let path = temp_file("check", text);
    let (code, stdout, stderr) = relay(&["check-config", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(1), "check-config of {text:?} exits 1; stderr: {stderr}");
    assert!(stdout.is_empty(), "nothing on stdout for a refused file: {stdout}");
    for needle in needles {
        assert!(stderr.contains(needle), "{text:?}: the message names {needle:?}: {stderr}");
    }
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
}

macro_rules! refused {
    ($($name:ident: $text:expr => [$($needle:expr),+];)+) => {$(
        #[test]
        fn $name() {
            refused($text, &[$($needle),+]);
        }
    )+};
}

refused! {
    check_config_refuses_an_unknown_key: "lissen = \"0.0.0.0:1935\"\n" => ["lissen"];
    check_config_refuses_a_value_of_the_wrong_type: "shards = \"many\"\n" => ["--shards", "many"];
    check_config_refuses_a_value_out_of_range: "shards = 0\n" => ["--shards", "0"];
    check_config_refuses_a_bad_address: "listen = \"1935\"\n" => ["--listen", "1935"];
    check_config_refuses_what_is_not_toml: "listen = \n" => ["config file"];
    check_config_refuses_a_nested_config: "config = \"/etc/other.toml\"\n" => ["another config file"];
    check_config_refuses_a_table_value: "[listen]\nport = 1\n" => ["listen", "unsupported value"];
    check_config_refuses_a_soft_lag_below_the_cached_gop:
        "player-soft-lag-ms = 1000\ngop-cache-max-ms = 2000\n" => ["--player-soft-lag-ms", "--gop-cache-max-ms"];
    check_config_refuses_a_message_size_beyond_the_header:
        "max-message-bytes = 16777216\n" => ["--max-message-bytes", "16777215"];
    check_config_refuses_an_empty_message_size: "max-message-bytes = 0\n" => ["--max-message-bytes"];
    check_config_refuses_a_bad_log_filter: "log-level = \"info,[\"\n" => ["--log-level", "info,["];
    check_config_refuses_segments_without_a_segment_placeholder:
        "record-dir = \"/tmp/rec\"\nrecord-segment-secs = 10\nrecord-template = \"{app}/{key}.flv\"\n"
        => ["--record-template", "{segment}"];
    check_config_refuses_an_unknown_placeholder:
        "record-dir = \"/tmp/rec\"\nrecord-template = \"{app}/{nope}.flv\"\n" => ["--record-template", "nope"];
    check_config_refuses_zero_second_segments:
        "record-dir = \"/tmp/rec\"\nrecord-segment-secs = 0\nrecord-template = \"{key}-{segment}.flv\"\n"
        => ["--record-segment-secs", "at least 1"];
    check_config_refuses_tiny_segments:
        "record-dir = \"/tmp/rec\"\nrecord-segment-bytes = 10\nrecord-template = \"{key}-{segment}.flv\"\n"
        => ["--record-segment-bytes", "at least"];
    check_config_refuses_a_flush_interval_out_of_range:
        "record-dir = \"/tmp/rec\"\nrecord-flush-ms = 0\n" => ["--record-flush-ms", "flush interval"];
    check_config_refuses_a_record_buffer_out_of_range:
        "record-dir = \"/tmp/rec\"\nrecord-buffer-bytes = 1\n" => ["--record-buffer-bytes", "within"];
    check_config_refuses_an_empty_record_dir: "record-dir = \"\"\n" => ["--record-dir"];
}

#[test]
fn check_config_of_a_missing_file_names_it() {
    let (code, _, stderr) = relay(&["check-config", "/nonexistent/rtmp-relay.toml"]);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot read config file /nonexistent/rtmp-relay.toml"), "{stderr}");
    let (code, _, stderr) = relay(&["check-config"]);
    assert_eq!(code, Some(2), "usage: {stderr}");
}

#[test]
fn check_config_prints_the_effective_config_of_a_good_file() {
    let path = temp_file("good", "listen = \"127.0.0.1:1936\"\nrecord-apps = [\"live\"]\n");
    let (code, stdout, stderr) = relay(&["check-config", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("configuration ok"), "{stderr}");
    for line in [
        "listen = \"127.0.0.1:1936\"",
        "record-apps = [\"live\"]",
        "max-connections = 20000",
        "# shards is unset",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} in:\n{stdout}");
    }
    // What it prints is itself a config file that checks.
    let printed = temp_file("printed", &stdout);
    let (code, again, stderr) = relay(&["check-config", printed.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(&printed);
    assert_eq!((code, again), (Some(0), stdout), "{stderr}");
}

#[test]
fn the_packaged_default_config_matches_the_flags() {
    let packaged = std::fs::read_to_string(repo("packaging/rtmp-relay.toml")).expect("file");
    let (code, generated, _) = relay(&["default-config"]);
    assert_eq!(code, Some(0));
    assert!(
        packaged == generated,
        "packaging/rtmp-relay.toml is out of date: regenerate it with \
         `cargo run -- default-config > packaging/rtmp-relay.toml`"
    );
    // Every setting is there, commented out at its default, and the file checks as it is.
    let (code, _, stderr) =
        relay(&["check-config", repo("packaging/rtmp-relay.toml").to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{stderr}");
    let (_, help, _) = relay(&["--help"]);
    for flag in help.split_whitespace().filter_map(|w| w.strip_prefix("--")) {
        let key = flag.trim_end_matches(|c: char| !c.is_alphanumeric());
        if ["help", "version", "config"].contains(&key) || key.is_empty() {
            continue;
        }
        assert!(packaged.contains(&format!("\n# {key} = ")), "{key} missing from the file");
    }
}

#[test]
fn the_systemd_unit_verifies() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        // scripts/test.sh installs systemd; a machine without it cannot run this check.
        eprintln!("systemd-analyze not installed: the unit is not verified here");
        return;
    };
    assert!(version.status.success());
    let unit = std::fs::read_to_string(repo("packaging/rtmp-relay.service")).expect("unit");
    for line in [
        "Type=notify",
        "WatchdogSec=30s",
        "Restart=always",
        "User=rtmp-relay",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ProtectSystem=strict",
        "StateDirectory=rtmp-relay",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit has {line}");
    }
    for limit in ["LimitNOFILE=", "LimitMEMLOCK="] {
        assert!(unit.lines().any(|l| l.starts_with(limit)), "the unit sets {limit}");
    }
    // verify checks that the commands exist: point them at the binary under test.
    let dir = std::env::temp_dir().join(format!("rtmp-relay-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("rtmp-relay.service");
    std::fs::write(&path, unit.replace("/usr/bin/rtmp-relay", env!("CARGO_BIN_EXE_rtmp-relay")))
        .expect("write the unit");
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze verify");
    let _ = std::fs::remove_dir_all(&dir);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "systemd-analyze verify: {stderr}");
    // Settings systemd cannot parse are warnings ("ignoring"), not failures: none allowed.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify warns: {stderr}");
}

#[test]
fn the_debian_package_sources_exist() {
    let manifest = std::fs::read_to_string(repo("Cargo.toml")).expect("manifest");
    let deb = manifest.split("[package.metadata.deb]").nth(1).expect("cargo-deb metadata");
    let deb = deb.split("\n[").next().unwrap_or(deb);
    let mut sources = 0;
    for line in deb.lines().filter(|l| l.trim_start().starts_with("[\"")) {
        let source = line.trim_start().trim_start_matches("[\"").split('"').next().expect("src");
        if source.starts_with("target/") {
            continue; // built by scripts/package.sh
        }
        assert!(repo(source).exists(), "the package ships {source}, which is missing");
        sources += 1;
    }
    assert!(sources >= 3, "the unit's config, docs and dashboard are packaged: {deb}");
    let postinst = std::fs::read_to_string(repo("packaging/debian/postinst")).expect("postinst");
    assert!(postinst.contains("#DEBHELPER#"), "cargo-deb inserts the unit's scripts there");
}

/// Every `rtmp_relay_*` name in the dashboard: the metrics it queries.
fn dashboard_metrics(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("rtmp_relay_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

#[test]
fn every_metric_of_the_dashboard_exists() {
    let text = std::fs::read_to_string(repo("packaging/grafana-dashboard.json")).expect("file");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard worth the name");
    for panel in panels {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{} queries something", panel["title"]);
        for target in targets {
            assert!(target["expr"].as_str().is_some_and(|e| e.contains("rtmp_relay_")));
        }
    }
    let queried = dashboard_metrics(&text);
    assert!(queried.len() >= 20, "{queried:?}");

    let server = start_server(|c| c.shards = Some(2));
    let addr = server.local_addr();
    let mut publisher = Client::connect(addr, "live");
    publisher.publish("dashboard");
    let mut player = Client::connect(addr, "live");
    player.play("dashboard");
    publisher.send_headers();
    for seq in 0..20u32 {
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq % 10 == 0, 800));
        publisher.send(MediaKind::Audio, seq * 40 + 20, &audio_frame(seq));
    }
    assert_eq!(player.media(43, WAIT).len(), 43, "the stream plays");
    // A protocol error, so that its family has a sample too: HTTP spoken to the RTMP port.
    let mut stray = std::net::TcpStream::connect(addr).expect("connect");
    let _ = std::io::Write::write_all(
        &mut stray,
        &[b"GET / HTTP/1.1\r\n\r\n".as_slice(), &[0; 1600]].concat(),
    );
    eventually("the handshake error counted", || server.protocol_errors_of("handshake") == 1);
    std::thread::sleep(Duration::from_millis(1200)); // a bitrate sample

    let (status, body) = get(server.http_addr().expect("http"), "/metrics");
    assert_eq!(status, 200);
    let samples: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> =
        queried.iter().filter(|name| !samples.contains(name.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard queries metrics /metrics lacks: {missing:?}");
    publisher.close();
    player.close();
}
