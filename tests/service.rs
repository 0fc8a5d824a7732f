//! The binary as a service: systemd's notifications on a NOTIFY_SOCKET the test binds
//! (readiness, status, watchdog, stopping, reloading), the watchdog withheld while a shard is
//! stalled, and live reload on SIGHUP and `POST /reload` with a stream playing through it
//! byte for byte.

mod common;

use std::collections::VecDeque;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use rtmp_proto::session::{ClientEvent, MediaKind};

/// A unix datagram socket standing in for systemd's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    fn bind() -> NotifySocket {
        let path = temp_path("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket { socket, path }
    }

    fn env(&self) -> String {
        self.path.display().to_string()
    }

    /// The next notification (its lines), waiting up to `timeout`.
    fn next(&self, timeout: Duration) -> Option<Vec<String>> {
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).ok()?;
        let mut buf = [0u8; 4096];
        let n = self.socket.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).lines().map(str::to_owned).collect())
    }

    /// Waits up to [`WAIT`] for a notification with a line that `matches`; every line seen
    /// on the way (that one included).
    fn expect(&self, what: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while let Some(lines) = self.next(deadline.saturating_duration_since(Instant::now())) {
            let found = lines.iter().any(|l| matches(l));
            seen.extend(lines);
            if found {
                return seen;
            }
        }
        panic!("no notification {what}; saw {seen:?}");
    }

    /// Every notification line that arrives within `duration`.
    fn during(&self, duration: Duration) -> Vec<String> {
        let deadline = Instant::now() + duration;
        let mut seen = Vec::new();
        while let Some(lines) = self.next(deadline.saturating_duration_since(Instant::now())) {
            seen.extend(lines);
        }
        seen
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rtmp-relay-{}-{}", std::process::id(), fresh_key(name)))
}

/// A publisher and a player of one key, and every message sent that the player must still
/// receive, byte for byte and in order.
struct Playing {
    publisher: Client,
    player: Client,
    next_seq: u32,
}

impl Playing {
    fn start(addr: std::net::SocketAddr, key: &str) -> Playing {
        let mut publisher = Client::connect(addr, "live");
        assert_eq!(publisher.publish(key), "NetStream.Publish.Start");
        let mut player = Client::connect(addr, "live");
        player.play(key);
        publisher.send_headers();
        let mut playing = Playing { publisher, player, next_seq: 0 };
        playing.relay(10);
        playing
    }

    /// Publishes `count` video frames (a keyframe every 10) with audio between, and checks
    /// the player receives exactly those, in order, byte for byte.
    fn relay(&mut self, count: u32) {
        let mut expected = VecDeque::new();
        for seq in self.next_seq..self.next_seq + count {
            let video = video_frame(seq, seq % 10 == 0, 300 + (seq as usize % 7) * 50);
            self.publisher.send(MediaKind::Video, seq * 40, &video);
            self.publisher.send(MediaKind::Audio, seq * 40 + 20, &audio_frame(seq));
            expected.push_back((MediaKind::Video, seq * 40, video));
            expected.push_back((MediaKind::Audio, seq * 40 + 20, audio_frame(seq)));
        }
        self.next_seq += count;
        let deadline = Instant::now() + WAIT;
        while let Some((kind, timestamp, payload)) = expected.pop_front() {
            let got = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match self.player.next_event(left) {
                    Some(ClientEvent::Media(m)) if m.kind == MediaKind::Data => {}
                    Some(ClientEvent::Media(m))
                        if m.payload[..] == *AAC_SEQUENCE_HEADER
                            || m.payload[..] == *AVC_SEQUENCE_HEADER => {}
                    Some(ClientEvent::Media(m)) => break m,
                    Some(other) => panic!("the player saw {other:?} while playing"),
                    None => panic!("the player stopped receiving before {kind:?} at {timestamp}"),
                }
            };
            assert_eq!((got.kind, got.timestamp.0), (kind, timestamp), "order");
            assert!(got.payload[..] == payload[..], "{kind:?} at {timestamp} byte for byte");
        }
    }
}

/// A config file the test rewrites between reloads.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn new(text: &str) -> ConfigFile {
        let file = ConfigFile(temp_path("relay.toml"));
        file.write(text);
        file
    }

    fn write(&self, text: &str) {
        std::fs::write(&self.0, text).expect("write the config file");
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const BASE: &str = "listen = \"127.0.0.1:0\"\nshards = 1\nno-http = true\nlog-level = \"info\"\n";

fn message(log: &serde_json::Value) -> &str {
    log["fields"]["message"].as_str().unwrap_or("")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(files_under(&path));
            } else {
                found.push(path);
            }
        }
    }
    found
}

#[test]
fn readiness_status_reload_and_stopping_reach_systemd() {
    let notify = NotifySocket::bind();
    let mut relay = RelayProcess::launch(
        &["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--shards", "2"],
        &[("NOTIFY_SOCKET", &notify.env()), ("WATCHDOG_USEC", "1500000")],
    );
    notify.expect("READY=1", |l| l == "READY=1");
    // What READY=1 promises: RTMP on every shard and the control plane both answer.
    let http = relay.http.expect("the control plane runs");
    assert_eq!(get(http, "/healthz").0, 200, "/healthz once ready");
    assert_round_trip_process(relay.addr);

    let seen = notify.expect("a watchdog ping", |l| l == "WATCHDOG=1");
    assert!(seen.iter().any(|l| l.starts_with("STATUS=0 streams")), "{seen:?}");
    let _playing = Playing::start(relay.addr, &fresh_key("status"));
    notify.expect("the status with the stream", |l| {
        l == "STATUS=1 streams, 1 publishers, 1 players, 2 connections"
    });

    relay.signal(libc::SIGHUP);
    let seen = notify.expect("READY=1 after the reload", |l| l == "READY=1");
    let reloading = seen.iter().position(|l| l == "RELOADING=1").expect("RELOADING=1 first");
    assert!(seen[reloading + 1..].iter().any(|l| l.starts_with("MONOTONIC_USEC=")), "{seen:?}");

    relay.signal(libc::SIGTERM);
    notify.expect("STOPPING=1", |l| l == "STOPPING=1");
    assert_eq!(relay.exit_code(WAIT), Some(0), "a clean exit after STOPPING=1");
}

/// A publish -> play round trip against the real binary.
fn assert_round_trip_process(addr: std::net::SocketAddr) {
    let key = fresh_key("ready");
    let mut playing = Playing::start(addr, &key);
    playing.relay(5);
    playing.publisher.close();
    playing.player.close();
}

#[test]
fn no_watchdog_ping_while_a_shard_is_stalled() {
    let notify = NotifySocket::bind();
    let relay = RelayProcess::launch(
        &["--listen", "127.0.0.1:0", "--no-http", "--shards", "2"]
            .into_iter()
            .chain(["--debug-stall-on-key", "stall", "--debug-stall-secs", "5"])
            .collect::<Vec<_>>(),
        &[("NOTIFY_SOCKET", &notify.env()), ("WATCHDOG_USEC", "900000")],
    );
    notify.expect("a first watchdog ping", |l| l == "WATCHDOG=1");

    let mut client = Client::connect(relay.addr, "live");
    client.request_play("stall");
    relay.wait_for("the stall", |log| message(log) == "--debug-stall-on-key: blocking the shard");
    let stalled = Instant::now();
    // A ping already under way when the shard stalled may still arrive: one tick (300 ms)
    // and its deadline (300 ms) later, none may.
    let settle = notify.during(Duration::from_millis(800));
    let silent = notify.during(Duration::from_secs(3));
    assert!(stalled.elapsed() < Duration::from_secs(5), "the stall outlasted the check");
    assert!(
        !silent.iter().any(|l| l == "WATCHDOG=1"),
        "WATCHDOG=1 while a shard was stalled: {silent:?} (after {settle:?})"
    );
    assert!(silent.iter().any(|l| l.starts_with("STATUS=shards not answering")), "{silent:?}");
    relay.wait_for("the watchdog's warning", |log| {
        message(log) == "shards do not answer: watchdog withheld"
    });

    // The stall ends after 5 s: the shard answers again and so does the watchdog.
    notify.expect("the watchdog back", |l| l == "WATCHDOG=1");
    relay.wait_for("the recovery line", |log| {
        message(log) == "every shard answers again: watchdog resumed"
    });
}

#[test]
fn sighup_applies_live_settings_with_a_stream_playing_through() {
    let file = ConfigFile::new(BASE);
    let record_dir = temp_path("rec");
    let relay = RelayProcess::launch(&["--config", file.path()], &[]);
    let key = fresh_key("live");
    let mut playing = Playing::start(relay.addr, &key);
    playing.relay(20);
    let mut second = Client::connect(relay.addr, "live");
    second.play(&key);
    second.close();

    file.write(&format!(
        "listen = \"127.0.0.1:0\"\nshards = 1\nno-http = true\nlog-level = \"warn\"\n\
         max-players-per-stream = 1\nplayer-soft-lag-ms = 9000\nrecord-dir = {:?}\n",
        record_dir.display().to_string()
    ));
    relay.signal(libc::SIGHUP);
    let reloaded = relay.wait_for("the reload", |log| message(log) == "config reloaded");
    let applied = reloaded["fields"]["applied"].as_str().expect("applied").to_owned();
    for key in ["log-level", "max-players-per-stream", "player-soft-lag-ms", "record-dir"] {
        assert!(applied.contains(key), "{key} applied: {reloaded}");
    }
    assert_eq!(reloaded["fields"]["restart_required"], "[]", "{reloaded}");
    relay.take_lines();

    // The stream went on through the reload, byte for byte.
    playing.relay(30);

    // The limit applies at once: one player of the stream is there, a second is refused.
    let mut refused = Client::connect(relay.addr, "live");
    refused.request_play(&key);
    let events = refused.expect(|e| Client::status_code(e).is_some(), "the play's answer");
    assert_eq!(events.last().and_then(Client::status_code), Some("NetStream.Play.Failed"));
    relay.wait_for("the refusal", |log| message(log) == "play refused");
    // ... and the log level too: the refused player's "connection opened" (info) is gone.
    let info: Vec<_> = relay.take_lines().into_iter().filter(|l| l["level"] == "INFO").collect();
    assert!(info.is_empty(), "info lines after the reload to warn: {info:?}");

    // Recording applies to streams that start from now on.
    let recorded_key = fresh_key("recorded");
    let mut publisher = Client::connect(relay.addr, "live");
    assert_eq!(publisher.publish(&recorded_key), "NetStream.Publish.Start");
    publisher.send_headers();
    for seq in 0..30u32 {
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq % 10 == 0, 500));
    }
    eventually("a recording of the stream published after the reload", || {
        files_under(&record_dir).iter().any(|p| p.display().to_string().contains(&recorded_key))
    });
    playing.relay(10);
    let files = files_under(&record_dir);
    assert!(!files.iter().any(|p| p.display().to_string().contains(&key)), "{files:?}");
    publisher.close();
    drop(relay);
    let _ = std::fs::remove_dir_all(&record_dir);
}

#[test]
fn sighup_reports_settings_that_need_a_restart_and_keeps_them() {
    let file = ConfigFile::new(BASE);
    let relay = RelayProcess::launch(&["--config", file.path()], &[]);
    let key = fresh_key("restart");
    let mut playing = Playing::start(relay.addr, &key);

    file.write(
        "listen = \"127.0.0.1:1\"\nshards = 2\nno-http = true\nlog-level = \"info\"\n\
         out-chunk-size = 128\n",
    );
    relay.signal(libc::SIGHUP);
    let reloaded = relay.wait_for("the reload", |log| message(log) == "config reloaded");
    let restart = reloaded["fields"]["restart_required"].as_str().expect("restart_required");
    for key in ["listen", "shards", "out-chunk-size"] {
        assert!(restart.contains(key), "{key} needs a restart: {reloaded}");
    }
    assert_eq!(reloaded["fields"]["applied"], "[]", "{reloaded}");
    relay.wait_for("the restart warning", |log| {
        message(log) == "these settings changed but need a restart: running with the old values"
    });

    // Still on the old address, with the old chunk size, and the stream goes on.
    playing.relay(30);
    let mut late = Client::connect(relay.addr, "live");
    late.play(&key);
    playing.relay(10);
    let media = late.media(4, WAIT);
    assert!(!media.is_empty(), "a new player on the old address gets the stream");
}

#[test]
fn an_invalid_file_is_refused_whole_and_the_running_config_kept() {
    let file = ConfigFile::new(BASE);
    let relay = RelayProcess::launch(&["--config", file.path()], &[]);
    let key = fresh_key("invalid");
    let mut playing = Playing::start(relay.addr, &key);

    // A valid change beside an invalid one: neither is applied.
    file.write(&format!("{BASE}max-players-per-stream = 1\nplayer-soft-lag-ms = 10\n"));
    relay.signal(libc::SIGHUP);
    let refused = relay.wait_for("the refusal", |log| {
        message(log) == "config reload refused: the running config is kept"
    });
    let error = refused["fields"]["error"].as_str().expect("error");
    assert!(error.contains("--player-soft-lag-ms"), "names the key: {error}");
    playing.relay(20);
    let mut second = Client::connect(relay.addr, "live");
    second.play(&key);
    playing.relay(5);
    assert!(!second.media(4, WAIT).is_empty(), "the old player limit still holds");

    // Not TOML at all; then an unknown key.
    for (text, needle) in [("shards = \n", "config file"), ("lissen = 1\n", "lissen")] {
        file.write(&format!("{BASE}{text}"));
        relay.signal(libc::SIGHUP);
        let refused = relay.wait_for("the refusal", |log| {
            message(log) == "config reload refused: the running config is kept"
        });
        let error = refused["fields"]["error"].as_str().expect("error");
        assert!(error.contains(needle), "{needle}: {error}");
        playing.relay(5);
    }

    // Mended, it applies.
    file.write(&format!("{BASE}max-players-per-stream = 7\n"));
    relay.signal(libc::SIGHUP);
    let reloaded = relay.wait_for("the reload", |log| message(log) == "config reloaded");
    assert!(reloaded["fields"]["applied"].as_str().is_some_and(|a| a.contains("max-players")));
    playing.relay(10);
}

#[test]
fn post_reload_on_the_control_plane() {
    let base = "listen = \"127.0.0.1:0\"\nshards = 2\nhttp = \"127.0.0.1:0\"\n";
    let file = ConfigFile::new(base);
    let relay = RelayProcess::launch(&["--config", file.path()], &[]);
    let http = relay.http.expect("the control plane runs");
    let key = fresh_key("http");
    let mut playing = Playing::start(relay.addr, &key);

    let (status, body) = request(http, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("a JSON report");
    assert_eq!(report["applied"], serde_json::json!([]), "nothing changed: {report}");

    file.write(&format!("{base}player-stall-secs = 20\nshards = 3\n").replace("shards = 2\n", ""));
    let (status, body) = request(http, "POST", "/reload");
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("a JSON report");
    assert_eq!(report["applied"], serde_json::json!(["player-stall-secs"]), "{report}");
    assert_eq!(report["restart_required"], serde_json::json!(["shards"]), "{report}");
    playing.relay(20);

    file.write(&format!("{base}max-message-bytes = 0\n"));
    let (status, body) = request(http, "POST", "/reload");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--max-message-bytes"), "{body}");
    assert_eq!(request(http, "GET", "/reload").0, 405, "GET does not reload");
    playing.relay(10);
}
