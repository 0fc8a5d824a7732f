//! Access control end to end, with the protocol client of `common` and an in-process HTTP
//! callback backend (tiny_http) that answers as each test scripts it: tokens, address rules,
//! secret keys behind public names, callbacks and their bounds, key reloads.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use rtmp_proto::session::{ClientEvent, MediaKind};
use rtmp_relay::auth::token::{self, ActionClaim, MintRequest, Signer};
use rtmp_relay::auth::Method;
use rtmp_relay::config::AppSection;
use rtmp_relay::{Config, ServerHandle};

const DENIED_PUBLISH: &str = "NetStream.Publish.Denied";
const DENIED_PLAY: &str = "NetStream.Play.Denied";
const SECRET: &str = "test-callback-secret-0123456789";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/auth").join(name)
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rtmp-relay-auth-{}-{name}", std::process::id()))
}

fn now_secs() -> u64 {
    token::unix_secs(SystemTime::now())
}

/// A token from the fixture keys (`hs-1` unless `kid` names another).
fn mint_token(
    kid: &str,
    action: ActionClaim,
    name: &str,
    edit: impl FnOnce(&mut MintRequest),
) -> String {
    let jwks = std::fs::read_to_string(fixture("jwks.json")).unwrap();
    let signer = token::signer_from_jwks(&jwks, kid, None).expect("HS256 kid");
    mint_with(&signer, kid, action, name, edit)
}

fn mint_with(
    signer: &Signer,
    kid: &str,
    action: ActionClaim,
    name: &str,
    edit: impl FnOnce(&mut MintRequest),
) -> String {
    let mut request = MintRequest {
        kid: kid.into(),
        action,
        app: "live".into(),
        name: name.into(),
        ttl: Duration::from_secs(600),
        not_before: None,
        ip: None,
    };
    edit(&mut request);
    token::mint(signer, &request, now_secs()).expect("mint")
}

fn token_server(configure: impl FnOnce(&mut Config)) -> ServerHandle {
    start_server(|c| {
        c.publish_auth = Method::Token;
        c.auth_keys = Some(fixture("jwks.json"));
        configure(c);
    })
}

/// Publishes `name` on a fresh connection to `app`; the status code.
fn try_publish(addr: SocketAddr, app: &str, name: &str) -> (String, Client) {
    let mut client = Client::connect(addr, app);
    let code = client.publish(name);
    (code, client)
}

/// The value of one series in `text` (Prometheus exposition), 0 if absent.
fn series(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn refused_for(server: &ServerHandle, reason: &str) -> f64 {
    series(
        &server.auth_metrics(),
        &format!("rtmp_relay_auth_tokens_refused_total{{reason=\"{reason}\"}}"),
    )
}

#[test]
fn tokens_admit_publishers_and_every_bad_token_is_refused() {
    let server = token_server(|c| {
        // Large enough that a 1 MB name reaches access control (the token limit trips, not
        // the AMF string limit).
        c.max_amf_string_bytes = 2 << 20;
    });
    let addr = server.local_addr();
    let good = mint_token("hs-1", ActionClaim::Publish, "cam1", |_| {});

    let (code, mut refused) = try_publish(addr, "live", "cam1");
    assert_eq!(code, DENIED_PUBLISH, "no token");
    assert!(refused.wait_closed(WAIT), "a refused publisher is closed");

    let (code, mut publisher) = try_publish(addr, "live", &format!("cam1?token={good}"));
    assert_eq!(code, "NetStream.Publish.Start", "token in the stream name");
    publisher.delete_stream();

    // OBS-style: the token in the server URL, i.e. in the tcUrl and the app.
    let (code, _p) = try_publish(addr, &format!("live?token={good}"), "cam1");
    assert_eq!(code, "NetStream.Publish.Start", "token in the tcUrl");

    let other =
        mint_token("hs-1", ActionClaim::Publish, "cam1", |r| r.ttl = Duration::from_secs(900));
    let cases: Vec<(&str, String, String)> = vec![
        ("forged signature", "cam1".into(), {
            let (signed, _) = good.rsplit_once('.').unwrap();
            format!("{signed}.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        }),
        ("wrong name", "cam2".into(), good.clone()),
        (
            "not yet valid",
            "cam1".into(),
            mint_token("hs-1", ActionClaim::Publish, "cam1", |r| {
                r.not_before = Some(now_secs() + 600)
            }),
        ),
        ("wrong action", "cam1".into(), mint_token("hs-1", ActionClaim::Play, "cam1", |_| {})),
        (
            "wrong app",
            "cam1".into(),
            mint_token("hs-1", ActionClaim::Publish, "cam1", |r| r.app = "vod".into()),
        ),
        (
            "address not in the claim",
            "cam1".into(),
            mint_token("hs-1", ActionClaim::Publish, "cam1", |r| {
                r.ip = Some("192.0.2.0/24".into())
            }),
        ),
        ("1 MB token", "cam1".into(), "a".repeat(1 << 20)),
    ];
    // Expiry and replay: `an_expired_token_replayed_is_refused`; the rest of the bad tokens
    // (alg none, algorithm confusion, unknown kid) also in `auth::token` unit tests.
    for (what, name, token) in &cases {
        let (code, mut client) = try_publish(addr, "live", &format!("{name}?token={token}"));
        assert_eq!(code, DENIED_PUBLISH, "{what}");
        assert!(client.wait_closed(WAIT), "{what}: closed");
    }
    // Two tokens that disagree (stream name and tcUrl).
    let (code, _c) =
        try_publish(addr, &format!("live?token={other}"), &format!("cam1?token={good}"));
    assert_eq!(code, DENIED_PUBLISH, "conflicting tokens");

    assert_eq!(refused_for(&server, "missing"), 1.0);
    assert_eq!(refused_for(&server, "bad_signature"), 1.0);
    assert_eq!(refused_for(&server, "wrong_name"), 1.0);
    assert_eq!(refused_for(&server, "not_yet_valid"), 1.0);
    assert_eq!(refused_for(&server, "wrong_action"), 1.0);
    assert_eq!(refused_for(&server, "wrong_app"), 1.0);
    assert_eq!(refused_for(&server, "wrong_address"), 1.0);
    assert_eq!(refused_for(&server, "too_large"), 1.0);
    assert_eq!(refused_for(&server, "conflicting"), 1.0);
    assert_eq!(
        server.limit_trips(rtmp_relay::metrics::Limit::AuthMaxTokenBytes),
        1,
        "the token limit is counted"
    );
    let metrics = server.auth_metrics();
    assert_eq!(
        series(&metrics, "rtmp_relay_auth_decisions_total{app=\"_default\",action=\"publish\",method=\"token\",result=\"allow\"}"),
        2.0,
        "{metrics}"
    );
    assert!(!metrics.contains(&good[good.len() - 20..]), "no token in metrics");
}

#[test]
fn an_expired_token_replayed_is_refused() {
    let server = token_server(|c| c.auth_leeway_secs = 0);
    let addr = server.local_addr();
    let short =
        mint_token("hs-1", ActionClaim::Publish, "cam1", |r| r.ttl = Duration::from_secs(1));
    let (code, mut first) = try_publish(addr, "live", &format!("cam1?token={short}"));
    assert_eq!(code, "NetStream.Publish.Start");
    first.delete_stream();
    drop(first);
    std::thread::sleep(Duration::from_millis(2100));
    let (code, _) = try_publish(addr, "live", &format!("cam1?token={short}"));
    assert_eq!(code, DENIED_PUBLISH, "the same token after its expiry");
    assert_eq!(refused_for(&server, "expired"), 1.0);
}

#[test]
fn address_rules_refuse_players_and_deny_wins() {
    let server = start_server(|c| {
        c.play_allow = vec!["127.0.0.0/8".parse().unwrap()];
        c.play_deny = vec!["127.0.0.3".parse().unwrap()];
    });
    let addr = server.local_addr();
    let mut player = Client::connect(addr, "live");
    player.play("open");
    // A client from 127.0.0.3 (inside the allow list, but denied).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&"127.0.0.3:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    socket.connect(&addr.into()).unwrap();
    let mut denied = Client::connect_over(socket.into(), addr, "live");
    denied.request_play("open");
    let events = denied.expect(|e| Client::status_code(e).is_some(), "play status");
    assert_eq!(events.last().and_then(Client::status_code), Some(DENIED_PLAY));
    assert!(denied.wait_closed(WAIT));
    let metrics = server.auth_metrics();
    assert_eq!(
        series(&metrics, "rtmp_relay_auth_decisions_total{app=\"_default\",action=\"play\",method=\"address\",result=\"deny\"}"),
        1.0,
        "{metrics}"
    );
}

/// A scripted HTTP callback backend on 127.0.0.1: records each request (JSON body and
/// signature header) and answers what `script` says, after a delay. Stops when dropped.
struct Backend {
    server: Arc<tiny_http::Server>,
    url: String,
    seen: Arc<Mutex<Vec<(serde_json::Value, String)>>>,
    stop: Arc<AtomicBool>,
}

/// (status, body, delay); a delay of `None` never answers.
type Reply = (u16, Vec<u8>, Option<Duration>);

impl Backend {
    fn start(script: impl Fn(&serde_json::Value) -> Reply + Send + Sync + 'static) -> Backend {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("backend"));
        let url = format!("http://{}/hooks", server.server_addr().to_ip().expect("ip"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        {
            let (server, seen, stop) = (server.clone(), seen.clone(), stop.clone());
            std::thread::spawn(move || {
                for mut request in server.incoming_requests() {
                    let (seen, stop, script) = (seen.clone(), stop.clone(), script.clone());
                    std::thread::spawn(move || {
                        let mut raw = Vec::new();
                        let _ = std::io::Read::read_to_end(request.as_reader(), &mut raw);
                        let signature = request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv("x-rtmp-relay-signature"))
                            .map(|h| h.value.to_string())
                            .unwrap_or_default();
                        let expected = rtmp_relay::auth::callback::sign(SECRET.as_bytes(), &raw);
                        let body: serde_json::Value =
                            serde_json::from_slice(&raw).unwrap_or(serde_json::Value::Null);
                        let verdict = if signature == expected { "signed" } else { "FORGED" };
                        seen.lock().unwrap().push((body.clone(), verdict.to_owned()));
                        let (status, answer, delay) = script(&body);
                        let until = Instant::now() + delay.unwrap_or(Duration::from_secs(30));
                        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        if delay.is_some() {
                            let _ = request.respond(
                                tiny_http::Response::from_data(answer).with_status_code(status),
                            );
                        }
                    });
                }
            });
        }
        Backend { server, url, seen, stop }
    }

    fn events(&self, event: &str) -> Vec<serde_json::Value> {
        let seen = self.seen.lock().unwrap();
        assert!(seen.iter().all(|(_, v)| v == "signed"), "every request is signed");
        seen.iter().filter(|(b, _)| b["event"] == event).map(|(b, _)| b.clone()).collect()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.server.unblock();
    }
}

fn secret_file() -> PathBuf {
    let path = temp_path("callback.secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    path
}

fn callback_server(backend: &Backend, configure: impl FnOnce(&mut Config)) -> ServerHandle {
    start_server(|c| {
        c.publish_auth = Method::Callback;
        c.auth_callback = Some(backend.url.clone());
        c.auth_callback_secret_file = Some(secret_file());
        c.auth_callback_timeout_ms = 700;
        c.auth_callback_cache_secs = 0;
        configure(c);
    })
}

fn failures(server: &ServerHandle, kind: &str) -> f64 {
    series(
        &server.auth_metrics(),
        &format!("rtmp_relay_auth_callback_failures_total{{kind=\"{kind}\"}}"),
    )
}

#[test]
fn callback_answers_decide_as_scripted_and_failures_follow_the_fail_policy() {
    let backend = Backend::start(|body| {
        let name = body["name"].as_str().unwrap_or("");
        match name {
            "allow" => (200, b"{}".to_vec(), Some(Duration::ZERO)),
            "empty" => (204, Vec::new(), Some(Duration::ZERO)),
            "deny" => (403, br#"{"reason":"not on the list"}"#.to_vec(), Some(Duration::ZERO)),
            "error" => (500, b"oops".to_vec(), Some(Duration::ZERO)),
            "garbage" => (200, b"<html>hello</html>".to_vec(), Some(Duration::ZERO)),
            "huge" => (200, vec![b' '; 10 << 20], Some(Duration::ZERO)),
            "never" => (200, Vec::new(), None),
            _ => (404, Vec::new(), Some(Duration::ZERO)),
        }
    });
    let server = callback_server(&backend, |_| {});
    let addr = server.local_addr();
    for (name, expected) in [
        ("allow", "NetStream.Publish.Start"),
        ("empty", "NetStream.Publish.Start"),
        ("deny", DENIED_PUBLISH),
        ("error", DENIED_PUBLISH),
        ("garbage", DENIED_PUBLISH),
        ("huge", DENIED_PUBLISH),
        ("never", DENIED_PUBLISH),
    ] {
        let started = Instant::now();
        let (code, _client) = try_publish(addr, "live", &format!("{name}?token=abc&x=1"));
        assert_eq!(code, expected, "{name}");
        assert!(started.elapsed() < Duration::from_secs(10), "{name}: answered in time");
    }
    assert_eq!(failures(&server, "status"), 1.0);
    assert_eq!(failures(&server, "bad_body"), 1.0);
    assert_eq!(failures(&server, "too_large"), 1.0);
    assert_eq!(failures(&server, "timeout"), 1.0);
    let asked = backend.events("on_publish");
    assert_eq!(asked.len(), 7);
    let first = &asked[0];
    assert_eq!(first["action"], "publish");
    assert_eq!(first["app"], "live");
    assert_eq!(first["query"], "x=1", "the token is not forwarded");
    assert_eq!(first["client_addr"], "127.0.0.1");
    assert!(first["client_port"].as_u64().is_some() && first["conn_id"].as_u64().is_some());
    assert!(first["node_id"].as_str().is_some() && first["shard"].as_u64().is_some());
    assert!(!first["tc_url"].as_str().unwrap_or("").contains("token"));
    drop(server);

    // The backend down: connection refused. Default: deny; with the fail policy allow: allow.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down = |fail: rtmp_relay::auth::FailPolicy| {
        start_server(|c| {
            c.publish_auth = Method::Callback;
            c.auth_callback = Some(format!("http://127.0.0.1:{port}/hooks"));
            c.auth_callback_secret_file = Some(secret_file());
            c.auth_fail_publish = fail;
        })
    };
    let server = down(rtmp_relay::auth::FailPolicy::Deny);
    assert_eq!(try_publish(server.local_addr(), "live", "x").0, DENIED_PUBLISH);
    assert_eq!(failures(&server, "connect"), 1.0);
    drop(server);
    let server = down(rtmp_relay::auth::FailPolicy::Allow);
    assert_eq!(try_publish(server.local_addr(), "live", "x").0, "NetStream.Publish.Start");
}

#[test]
fn a_callback_names_the_stream_and_bounds_its_life_and_done_events_follow() {
    let backend = Backend::start(|body| match body["event"].as_str() {
        Some("on_publish") => {
            (200, br#"{"name":"public1","lifetime_secs":2}"#.to_vec(), Some(Duration::ZERO))
        }
        _ => (200, Vec::new(), Some(Duration::ZERO)),
    });
    let server = callback_server(&backend, |c| c.play_auth = Method::Open);
    let addr = server.local_addr();
    let (code, mut publisher) = try_publish(addr, "live", "secret-key-7f3a");
    assert_eq!(code, "NetStream.Publish.Start");
    publisher.send_headers();
    let mut player = Client::connect(addr, "live");
    player.play("public1");
    publisher.send(MediaKind::Video, 40, &video_frame(1, true, 100));
    assert_eq!(player.media(1, WAIT).len(), 1, "the player gets the stream by its public name");
    // The lifetime ends the publisher; its player gets the usual UnpublishNotify.
    player.expect(
        |e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"),
        "UnpublishNotify at the end of the lifetime",
    );
    assert!(publisher.wait_closed(WAIT));
    eventually("the done event", || backend.events("on_publish_done").len() == 1);
    let done = &backend.events("on_publish_done")[0];
    assert_eq!(done["name"], "secret-key-7f3a", "the backend knows its own secret");
    assert_eq!(done["public_name"], "public1");
    assert!(done["bytes"].as_u64().unwrap() > 100, "{done}");
    assert!(done["duration_ms"].as_u64().unwrap() >= 1500, "{done}");
    assert_eq!(series(&server.auth_metrics(), "rtmp_relay_auth_lifetimes_expired_total"), 1.0);
    // Nothing of the secret in the stats API.
    let (_, streams) = get(server.http_addr().unwrap(), "/api/streams");
    assert!(!streams.contains("secret-key"), "{streams}");
}

#[test]
fn callbacks_are_bounded_in_flight_and_answers_are_cached() {
    let backend = Backend::start(|body| match body["name"].as_str() {
        Some("slow") => (200, Vec::new(), Some(Duration::from_millis(3000))),
        _ => (200, Vec::new(), Some(Duration::ZERO)),
    });
    let server = callback_server(&backend, |c| {
        c.auth_callback_max_in_flight = 1;
        c.auth_callback_timeout_ms = 5000;
        c.auth_callback_cache_secs = 60;
    });
    let addr = server.local_addr();
    let slow = std::thread::spawn(move || try_publish(addr, "live", "slow").0);
    eventually("the slow call is in flight", || {
        series(&server.auth_metrics(), "rtmp_relay_auth_callbacks_in_flight") == 1.0
    });
    let started = Instant::now();
    assert_eq!(try_publish(addr, "live", "fast").0, DENIED_PUBLISH, "over the in-flight cap");
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not queued");
    assert_eq!(failures(&server, "over_capacity"), 1.0);
    assert_eq!(slow.join().unwrap(), "NetStream.Publish.Start");
    // The same request twice: one call, one cache hit.
    let (code, mut first) = try_publish(addr, "live", "cached");
    assert_eq!(code, "NetStream.Publish.Start");
    first.delete_stream();
    drop(first);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(try_publish(addr, "live", "cached").0, "NetStream.Publish.Start");
    let calls = backend.events("on_publish").iter().filter(|b| b["name"] == "cached").count();
    assert_eq!(calls, 1, "the second answer came from the cache");
    assert_eq!(series(&server.auth_metrics(), "rtmp_relay_auth_callback_cache_hits_total"), 1.0);
}

#[test]
fn a_slow_callback_delays_only_the_connections_that_asked() {
    let backend = Backend::start(|_| (200, Vec::new(), Some(Duration::from_secs(3))));
    let server = callback_server(&backend, |c| {
        c.shards = Some(2);
        // Far above the backend's 3 s: on a loaded CI machine 30 backend threads may take a
        // while, and this test is about the open stream, not the callback's deadline.
        c.auth_callback_timeout_ms = 30_000;
        c.auth_file.apps.insert(
            "open".into(),
            AppSection { publish: Some(Method::Open), ..AppSection::default() },
        );
    });
    let addr = server.local_addr();
    let mut publisher = Client::connect(addr, "open");
    assert_eq!(publisher.publish("live1"), "NetStream.Publish.Start");
    publisher.send_headers();
    let mut player = Client::connect(addr, "open");
    player.play("live1");
    // 30 publishers wait on the callback (each on its own connection and thread).
    let waiting: Vec<_> = (0..30)
        .map(|i| std::thread::spawn(move || try_publish(addr, "gated", &format!("s{i}")).0))
        .collect();
    eventually("the callbacks are in flight", || {
        series(&server.auth_metrics(), "rtmp_relay_auth_callbacks_in_flight") >= 20.0
    });
    // Meanwhile the open stream relays at once: every frame in well under the callback's 3 s.
    for seq in 1..=10u32 {
        let sent = Instant::now();
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq == 1, 200));
        assert_eq!(player.media(1, WAIT).len(), 1);
        assert!(sent.elapsed() < Duration::from_secs(1), "frame {seq} took {:?}", sent.elapsed());
    }
    for w in waiting {
        assert_eq!(w.join().unwrap(), "NetStream.Publish.Start");
    }
}

fn write_keys(path: &PathBuf, kids: &[&str]) {
    let all: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("jwks.json")).unwrap()).unwrap();
    let mut keys: Vec<serde_json::Value> = Vec::new();
    for kid in kids {
        if let Some(key) = all["keys"].as_array().unwrap().iter().find(|k| k["kid"] == *kid) {
            keys.push(key.clone());
        } else {
            // A second HS256 key, for rotation.
            keys.push(serde_json::json!({"kty": "oct", "kid": kid, "alg": "HS256",
                "k": "cm90YXRpb24tc2VjcmV0LXJvdGF0aW9uLXNlY3JldC0wMQ"}));
        }
    }
    let text = serde_json::json!({ "keys": keys }).to_string();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rotated_signer() -> Signer {
    use base64::Engine;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode("cm90YXRpb24tc2VjcmV0LXJvdGF0aW9uLXNlY3JldC0wMQ")
        .unwrap();
    Signer::Hmac(secret)
}

fn key_rotation(revoke: bool) {
    let path = temp_path(&format!("rotation-{revoke}.json"));
    write_keys(&path, &["hs-1"]);
    let server = start_server(|c| {
        c.publish_auth = Method::Token;
        c.auth_keys = Some(path.clone());
        c.auth_keys_poll_ms = 0; // reloads only when asked, as on SIGHUP
        c.auth_revoke_on_key_removal = revoke;
    });
    let addr = server.local_addr();
    let old = mint_token("hs-1", ActionClaim::Publish, "cam1", |_| {});
    let (code, mut publisher) = try_publish(addr, "live", &format!("cam1?token={old}"));
    assert_eq!(code, "NetStream.Publish.Start");
    publisher.send_headers();
    let mut player = Client::connect(addr, "live");
    player.play("cam1");

    // Rotate: add hs-2, remove hs-1.
    write_keys(&path, &["hs-2"]);
    assert_eq!(server.reload_auth_keys(), Ok(1));
    let new = mint_with(&rotated_signer(), "hs-2", ActionClaim::Publish, "cam2", |_| {});
    assert_eq!(
        try_publish(addr, "live", &format!("cam2?token={new}")).0,
        "NetStream.Publish.Start"
    );
    let stale = mint_token("hs-1", ActionClaim::Publish, "cam3", |_| {});
    assert_eq!(try_publish(addr, "live", &format!("cam3?token={stale}")).0, DENIED_PUBLISH);
    assert_eq!(refused_for(&server, "unknown_kid"), 1.0);

    if revoke {
        assert!(publisher.wait_closed(WAIT), "the session of a removed key is ended");
        assert_eq!(series(&server.auth_metrics(), "rtmp_relay_auth_sessions_revoked_total"), 1.0);
    } else {
        // The admitted session goes on.
        std::thread::sleep(Duration::from_millis(1500));
        publisher.send(MediaKind::Video, 40, &video_frame(1, true, 100));
        assert_eq!(player.media(1, WAIT).len(), 1, "the admitted session is not cut");
    }
    // A broken file keeps the keys in force.
    std::fs::write(&path, "{ not json").unwrap();
    assert!(server.reload_auth_keys().is_err());
    assert_eq!(
        try_publish(addr, "live", &format!("cam2?token={new}")).0,
        "NetStream.Publish.Start"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn a_reload_adds_and_removes_keys_without_cutting_admitted_sessions() {
    key_rotation(false);
}

#[test]
fn a_reload_can_end_sessions_whose_key_was_removed() {
    key_rotation(true);
}

#[test]
fn the_keys_file_is_reloaded_when_it_changes() {
    let path = temp_path("watched.json");
    write_keys(&path, &["hs-1"]);
    let server = start_server(|c| {
        c.publish_auth = Method::Token;
        c.auth_keys = Some(path.clone());
        c.auth_keys_poll_ms = 100;
    });
    let new = mint_with(&rotated_signer(), "hs-2", ActionClaim::Publish, "cam2", |_| {});
    assert_eq!(
        try_publish(server.local_addr(), "live", &format!("cam2?token={new}")).0,
        DENIED_PUBLISH
    );
    // Another length, so the change shows even within one mtime tick.
    write_keys(&path, &["hs-1", "hs-2"]);
    eventually("the watcher reloads", || {
        series(&server.auth_metrics(), "rtmp_relay_auth_key_reloads_total") >= 1.0
    });
    assert_eq!(
        try_publish(server.local_addr(), "live", &format!("cam2?token={new}")).0,
        "NetStream.Publish.Start"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn sighup_reloads_the_keys_of_the_binary() {
    let path = temp_path("sighup.json");
    write_keys(&path, &["hs-1"]);
    let relay = RelayProcess::start(&[
        "--publish-auth",
        "token",
        "--auth-keys",
        path.to_str().unwrap(),
        "--auth-keys-poll-ms",
        "0",
    ]);
    write_keys(&path, &["hs-1", "hs-2", "ec-1"]);
    relay.signal(libc::SIGHUP);
    let line = relay.wait_for("the reload line", |log| {
        log["fields"]["message"] == "SIGHUP: auth keys reloaded"
    });
    assert_eq!(line["fields"]["keys"], 3);
    let new = mint_with(&rotated_signer(), "hs-2", ActionClaim::Publish, "cam2", |_| {});
    assert_eq!(
        try_publish(relay.addr, "live", &format!("cam2?token={new}")).0,
        "NetStream.Publish.Start"
    );
    std::fs::remove_file(&path).ok();
}

#[test]
fn refusals_name_authorization_and_nothing_else() {
    let server = token_server(|_| {});
    let mut client = Client::connect(server.local_addr(), "live");
    let stream_id = client.create_stream();
    client.session().publish(stream_id, "cam1?token=junk");
    client.flush();
    let events = client.expect(|e| matches!(e, ClientEvent::Status { .. }), "status");
    match events.last() {
        Some(ClientEvent::Status { code, description, .. }) => {
            assert_eq!(code, DENIED_PUBLISH);
            assert_eq!(description, "authorization refused", "no hint of which claim failed");
        }
        other => panic!("{other:?}"),
    }
}
