//! Access control with real clients: ffmpeg publishing and playing with tokens in the URL (the
//! stream name's query, which is also what OBS's key field sends, and the tcUrl's), refused
//! without one (exiting non-zero, not hanging); and a secret publish key behind a public name,
//! seen by an ffmpeg player and ffprobe, with nothing secret in the logs, `/metrics`,
//! `/api/streams` or the recording paths.
//!
//! These need `ffmpeg` and `ffprobe` on PATH (`scripts/test.sh` installs them); under CI a
//! missing ffmpeg fails instead of skipping.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use common::*;
use rtmp_relay::auth::token::{self, ActionClaim, MintRequest};
use rtmp_relay::auth::Method;

fn ffmpeg_available() -> bool {
    let found = Command::new("ffmpeg").arg("-version").stdout(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "ffmpeg is required under CI");
        eprintln!("ffmpeg not found: skipping");
    }
    found
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn mint(action: ActionClaim, name: &str) -> String {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    // An asymmetric key here, as an operator with a signing service would use.
    let pem = std::fs::read(fixture("ec-private.pem")).unwrap();
    let signer = token::signer_from_jwks(&jwks, "ec-1", Some(&pem)).unwrap();
    let request = MintRequest {
        kid: "ec-1".into(),
        action,
        app: "live".into(),
        name: name.into(),
        ttl: Duration::from_secs(600),
        not_before: None,
        ip: None,
    };
    token::mint(&signer, &request, token::unix_secs(SystemTime::now())).unwrap()
}

fn publish(url: &str, seconds: u32, extra: &[&str]) -> Reaped {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k"])
        .args(extra)
        .args(["-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg publisher");
    Reaped(Some(child))
}

/// Plays `url` until the stream ends, decoding every frame (framemd5: one line per frame).
fn play(url: &str) -> Reaped {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i", url])
        .args(["-f", "framemd5", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg player");
    Reaped(Some(child))
}

fn frames(output: &Output) -> usize {
    String::from_utf8_lossy(&output.stdout).lines().filter(|l| !l.starts_with('#')).count()
}

fn refused_quickly(what: &str, client: Reaped) {
    let output = client.wait(Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{what}: ffmpeg must fail");
    assert!(stderr.contains("authorization refused"), "{what}: ffmpeg says why: {stderr}");
}

#[test]
fn ffmpeg_publishes_and_plays_with_tokens_and_is_refused_without() {
    if !ffmpeg_available() {
        return;
    }
    let server = start_server(|c| {
        c.shards = Some(2);
        c.publish_auth = Method::Token;
        c.play_auth = Method::Token;
        c.auth_keys = Some(fixture("jwks.json"));
    });
    let base = format!("rtmp://{}/live", server.local_addr());
    refused_quickly("publish without a token", publish(&format!("{base}/cam1"), 2, &[]));
    let forged = format!("{}x", mint(ActionClaim::Publish, "cam1"));
    refused_quickly("forged token", publish(&format!("{base}/cam1?token={forged}"), 2, &[]));

    // The token in the stream name: ffmpeg's URL, and OBS's key field `cam1?token=...`.
    let publisher =
        publish(&format!("{base}/cam1?token={}", mint(ActionClaim::Publish, "cam1")), 8, &[]);
    eventually("ffmpeg is publishing", || server.counters().publishes == 1);
    refused_quickly("play without a token", play(&format!("{base}/cam1")));
    let player = play(&format!("{base}/cam1?token={}", mint(ActionClaim::Play, "cam1")));
    let published = publisher.wait(Duration::from_secs(60));
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let played = player.wait(Duration::from_secs(60));
    assert!(played.status.success(), "{}", String::from_utf8_lossy(&played.stderr));
    assert!(frames(&played) > 100, "the player decoded {} frames", frames(&played));

    // The token in the tcUrl (OBS's server field `rtmp://host/live?token=...`).
    let tc_url = format!("{base}?token={}", mint(ActionClaim::Publish, "cam2"));
    let publisher = publish(&format!("{base}/cam2"), 2, &["-rtmp_tcurl", &tc_url]);
    let published = publisher.wait(Duration::from_secs(60));
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
}

/// The real binary, logging JSON to stdout, with its HTTP control plane on an ephemeral port.
struct Relay {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    rtmp: SocketAddr,
    http: SocketAddr,
}

impl Relay {
    fn start(args: &[&str]) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rtmp-relay"))
            .args(["--log-format", "json", "--log-level", "info", "--shards", "2"])
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rtmp-relay");
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let addr_of = |message: &str| {
            let mut found = None;
            eventually(message, || {
                found = lines.lock().unwrap().iter().find_map(|l| {
                    let log: serde_json::Value = serde_json::from_str(l).ok()?;
                    (log["fields"]["message"] == message)
                        .then(|| log["fields"]["addr"].as_str()?.parse().ok())?
                });
                found.is_some()
            });
            found.unwrap()
        };
        let http = addr_of("http control plane listening");
        let rtmp = addr_of("rtmp-relay listening");
        Relay { child, lines, rtmp, http }
    }

    fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn file_names(dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        out.push(path.display().to_string());
        if path.is_dir() {
            file_names(&path, out);
        }
    }
}

#[test]
fn a_secret_key_is_seen_by_players_and_ffprobe_only_as_its_public_name() {
    if !ffmpeg_available() {
        return;
    }
    const SECRET_KEY: &str = "sk-4f9c2b7e11d0";
    let dir = std::env::temp_dir().join(format!("rtmp-relay-auth-secret-{}", std::process::id()));
    let records = dir.join("records");
    std::fs::create_dir_all(&records).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "publish-auth = \"token\"\nauth-keys = {:?}\nrecord-dir = {:?}\n\n\
             [auth.apps.live.names]\n\"{SECRET_KEY}\" = \"studio\"\n",
            fixture("jwks.json").display().to_string(),
            records.display().to_string(),
        ),
    )
    .unwrap();
    let relay = Relay::start(&["--config", config.to_str().unwrap()]);
    let base = format!("rtmp://{}/live", relay.rtmp);
    let token = mint(ActionClaim::Publish, SECRET_KEY);

    // The public name cannot be published directly, even with a valid token for it.
    let direct = format!("{base}/studio?token={}", mint(ActionClaim::Publish, "studio"));
    refused_quickly("publishing the public name", publish(&direct, 2, &[]));

    let publisher = publish(&format!("{base}/{SECRET_KEY}?token={token}"), 8, &[]);
    eventually("the stream is live", || get(relay.http, "/api/streams").1.contains("\"studio\""));
    assert_eq!(probe_tracks(&format!("{base}/studio")), ["audio", "video"]);
    let player = play(&format!("{base}/studio"));
    refused_quickly("playing the secret key", play(&format!("{base}/{SECRET_KEY}")));
    let (_, metrics) = get(relay.http, "/metrics");
    let (_, streams) = get(relay.http, "/api/streams");
    let published = publisher.wait(Duration::from_secs(60));
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let played = player.wait(Duration::from_secs(60));
    assert!(played.status.success(), "{}", String::from_utf8_lossy(&played.stderr));
    assert!(frames(&played) > 100, "the player decoded {} frames", frames(&played));

    let mut paths = Vec::new();
    eventually("the recording is there", || {
        paths.clear();
        file_names(&records, &mut paths);
        paths.iter().any(|p| p.contains("studio"))
    });
    let signature = token.rsplit('.').next().unwrap();
    let log = relay.log();
    for (place, text) in [
        ("the log", log.as_str()),
        ("/metrics", metrics.as_str()),
        ("/api/streams", streams.as_str()),
        ("the recording paths", &paths.join("\n")),
    ] {
        assert!(!text.contains(SECRET_KEY), "the secret key is in {place}:\n{text}");
        assert!(!text.contains(signature), "the token is in {place}");
    }
    assert!(streams.contains("studio") && log.contains("studio"));
    drop(relay);
    std::fs::remove_dir_all(&dir).ok();
}
