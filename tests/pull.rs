//! Static pulls: one rtmp-relay feeds a local stream from another (or from a scripted
//! upstream), always on or on demand; one upstream session per stream whatever the players and
//! shards; players stay through a source restart and resume at a keyframe; refusing, silent,
//! StreamNotFound and garbage upstreams are retried within bounds and counted; a pulled key
//! cannot be published locally.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use rtmp_proto::command::code;
use rtmp_proto::handshake::RANDOM_LEN;
use rtmp_proto::session::{ClientEvent, MediaKind, ServerEvent, ServerSession, SessionConfig};
use rtmp_relay::config::PullEntry;
use rtmp_relay::metrics::{Limit, PullState, PullStats};
use rtmp_relay::ServerHandle;

fn pull_of(name: &str, url: String, mode: &str) -> PullEntry {
    PullEntry {
        app: "live".into(),
        name: name.into(),
        url,
        mode: Some(mode.into()),
        ca_file: None,
        insecure_skip_verify: false,
        pin_sha256: None,
    }
}

fn pulls(server: &ServerHandle) -> Vec<PullStats> {
    server.transport_stats().into_iter().flat_map(|s| s.pulls).collect()
}

fn pull_named(server: &ServerHandle, name: &str) -> PullStats {
    pulls(server).into_iter().find(|p| p.name == name).expect("the pull is reported")
}

/// A loopback port free now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Players connected to `server` (at an upstream: the pulls playing it).
fn players(server: &ServerHandle) -> i64 {
    server.counters().subscribers
}

/// The next `count` audio and video messages as (kind, timestamp, payload).
fn av(player: &mut Client, count: usize) -> Vec<(MediaKind, u32, Vec<u8>)> {
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < count && Instant::now() < deadline {
        for m in player.media(1, Duration::from_millis(200)) {
            if m.kind != MediaKind::Data {
                got.push((m.kind, m.timestamp.0, m.payload.to_vec()));
            }
        }
    }
    got
}

/// Video frames (sequence headers aside) until `count` arrived.
fn video(player: &mut Client, count: usize) -> Vec<rtmp_proto::session::Media> {
    let mut frames = Vec::new();
    let deadline = Instant::now() + WAIT;
    while frames.len() < count && Instant::now() < deadline {
        for m in player.media(1, Duration::from_millis(200)) {
            if m.kind == MediaKind::Video && m.payload.as_ref() != AVC_SEQUENCE_HEADER {
                frames.push(m);
            }
        }
    }
    frames
}

#[test]
fn an_always_on_pull_feeds_players_on_both_shards_byte_exact_from_one_upstream_session() {
    let source = start_server(|_| {});
    let key = fresh_key("origin");
    let mut publisher = Client::connect(source.local_addr(), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    publisher.send_headers();
    let first = video_frame(0, true, 20_000);
    publisher.send(MediaKind::Video, 0, &first);

    let url = format!("rtmp://{}/live/{key}", source.local_addr());
    let edge = start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
        c.pulls = vec![pull_of("pulled", url, "always")];
        c.pull_backoff_min_ms = 100;
    });
    eventually("the pull is live", || pull_named(&edge, "pulled").state == PullState::Live);
    assert!(pull_named(&edge, "pulled").source.ends_with("/live/or***"), "the upstream key masked");

    let mut on_shards: Vec<Client> = (0..2)
        .map(|shard| {
            let mut player = Client::connect(edge.shard_addr(shard).unwrap(), "live");
            player.play("pulled");
            player
        })
        .collect();
    for player in &mut on_shards {
        let joined = av(player, 3);
        assert_eq!(joined.len(), 3);
        assert_eq!(joined[0].2, AAC_SEQUENCE_HEADER);
        assert_eq!(joined[1].2, AVC_SEQUENCE_HEADER);
        assert_eq!(joined[2].2, first, "the cached keyframe first");
    }
    let mut sent = Vec::new();
    for seq in 1..60u32 {
        let frame = video_frame(seq, seq % 20 == 0, 300 + seq as usize * 211);
        publisher.send(MediaKind::Video, seq * 40, &frame);
        sent.push((MediaKind::Video, seq * 40, frame));
        let audio = audio_frame(seq);
        publisher.send(MediaKind::Audio, seq * 40 + 20, &audio);
        sent.push((MediaKind::Audio, seq * 40 + 20, audio));
    }
    for player in &mut on_shards {
        assert_eq!(av(player, sent.len()), sent, "every frame, byte for byte, in order");
    }
    assert_eq!(players(&source), 1, "one upstream session for two shards' players");
    assert_eq!(source.counters().plays, 1, "and it never reconnected");
    let stats = pull_named(&edge, "pulled");
    assert_eq!((stats.connects, stats.failures), (1, 0), "{stats:?}");
    assert!(stats.bytes_in > 60 * 300, "{stats:?}");
    let metrics = Metrics::scrape(edge.http_addr().unwrap());
    assert_eq!(metrics.sum("rtmp_relay_pull_connects_total", &[("stream", "pulled")]), 1.0);
    assert_eq!(metrics.sum("rtmp_relay_pull_state", &[("state", "live")]), 1.0);
    assert!(!metrics
        .label_values("rtmp_relay_pull_state", "source")
        .iter()
        .any(|s| s.contains(&key)));
    let (status, body) = get(edge.http_addr().unwrap(), "/api/relays");
    assert_eq!(status, 200);
    assert!(body.contains("\"pulls\"") && !body.contains(&key), "{body}");

    // The upstream publisher leaves: the edge's players hear it and stay.
    publisher.delete_stream();
    for player in &mut on_shards {
        let events = player.drain(Duration::from_secs(3));
        assert!(
            events.iter().any(|e| Client::status_code(e) == Some(code::PLAY_UNPUBLISH_NOTIFY)),
            "{events:?}"
        );
    }
    edge.shutdown();
    source.shutdown();
}

#[test]
fn an_on_demand_pull_starts_with_its_first_player_and_stops_after_the_linger() {
    let source = start_server(|_| {});
    let key = fresh_key("demand");
    let mut publisher = Client::connect(source.local_addr(), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    publisher.send_headers();
    let url = format!("rtmp://{}/live/{key}", source.local_addr());
    let edge = start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
        c.pulls = vec![pull_of("ondemand", url, "on-demand")];
        c.pull_linger_secs = 1;
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pull_named(&edge, "ondemand").state, PullState::Idle);
    assert_eq!(players(&source), 0, "nobody watches: no upstream session");

    // The first player is on the shard that does not own the key: its mirror's subscription
    // starts the pull on the owner.
    let owner = edge.owner_of("live", "ondemand");
    let mut players_of: Vec<Client> = [1 - owner, owner]
        .iter()
        .map(|&shard| {
            let mut player = Client::connect(edge.shard_addr(shard).unwrap(), "live");
            player.play("ondemand");
            player
        })
        .collect();
    let mut seq = 0u32;
    let mut got = vec![Vec::new(), Vec::new()];
    let deadline = Instant::now() + WAIT;
    while got.iter().any(|g: &Vec<u32>| g.len() < 10) && Instant::now() < deadline {
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq % 10 == 0, 500));
        seq += 1;
        for (player, got) in players_of.iter_mut().zip(&mut got) {
            got.extend(player.media(1, Duration::from_millis(50)).iter().filter_map(seq_of));
        }
    }
    assert!(got.iter().all(|g| g.len() >= 10), "both players fed: {got:?}");
    assert_eq!(players(&source), 1, "one upstream session");

    drop(players_of);
    // Players gone: the pull lingers a second, then stops.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(players(&source), 1, "still lingering");
    eventually("the pull stopped", || {
        players(&source) == 0 && pull_named(&edge, "ondemand").state == PullState::Idle
    });
    // A viewer comes back: started again.
    let mut player = Client::connect(edge.local_addr(), "live");
    player.play("ondemand");
    let mut back = Vec::new();
    let deadline = Instant::now() + WAIT;
    while back.is_empty() && Instant::now() < deadline {
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, true, 500));
        seq += 1;
        back = player.media(1, Duration::from_millis(50));
    }
    assert!(!back.is_empty(), "fed again");
    assert_eq!(pull_named(&edge, "ondemand").connects, 2);
    edge.shutdown();
    source.shutdown();
}

/// A fixed address in front of a source server that restarts on ports of its own (a server's
/// listening port can stay taken for a while after it closed its connections): each connection
/// is forwarded to where the source is now, or closed when it is down.
struct Front {
    addr: SocketAddr,
    to: Arc<std::sync::Mutex<Option<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl Front {
    fn start() -> Front {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let to = Arc::new(std::sync::Mutex::new(None::<SocketAddr>));
        let stop = Arc::new(AtomicBool::new(false));
        let (target, stopped) = (to.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let current = *target.lock().unwrap();
                let Some(Ok(server)) = current.map(TcpStream::connect) else { continue };
                for (mut from, mut to) in
                    [(client.try_clone().unwrap(), server.try_clone().unwrap()), (server, client)]
                {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Front { addr, to, stop }
    }

    fn point_at(&self, to: Option<SocketAddr>) {
        *self.to.lock().unwrap() = to;
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[test]
fn players_stay_through_a_source_restart_and_resume_at_a_keyframe() {
    let front = Front::start();
    let source = start_server(|_| {});
    front.point_at(Some(source.local_addr()));
    let key = fresh_key("restart");
    let start_publisher = |source: &ServerHandle| {
        let mut publisher = Client::connect(source.local_addr(), "live");
        assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
        publisher.send_headers();
        publisher
    };
    let mut publisher = start_publisher(&source);
    let url = format!("rtmp://{}/live/{key}", front.addr);
    let edge = start_server(|c| {
        c.pulls = vec![pull_of("restarted", url, "always")];
        c.pull_backoff_min_ms = 100;
        c.pull_backoff_max_secs = 1;
    });
    let mut player = Client::connect(edge.local_addr(), "live");
    player.play("restarted");
    let mut seq = 0u32;
    let mut send = |publisher: &mut Client, n: u32| {
        for _ in 0..n {
            publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq % 10 == 0, 800));
            seq += 1;
        }
    };
    send(&mut publisher, 10);
    assert!(video(&mut player, 5).len() >= 5, "fed before the restart");

    front.point_at(None);
    source.shutdown();
    drop(publisher);
    eventually("the pull noticed", || pull_named(&edge, "restarted").failures >= 1);
    let events = player.drain(Duration::from_millis(500));
    assert!(
        events.iter().any(|e| Client::status_code(e) == Some(code::PLAY_UNPUBLISH_NOTIFY)),
        "the player saw the unpublish and stayed: {events:?}"
    );

    let source = start_server(|_| {});
    let mut publisher = start_publisher(&source);
    send(&mut publisher, 3);
    front.point_at(Some(source.local_addr()));
    let mut resumed = Vec::new();
    let deadline = Instant::now() + WAIT;
    while resumed.len() < 12 && Instant::now() < deadline {
        send(&mut publisher, 5);
        for event in player.drain(Duration::from_millis(100)) {
            if let ClientEvent::Media(m) = event {
                if m.kind == MediaKind::Video && m.payload.as_ref() != AVC_SEQUENCE_HEADER {
                    resumed.push(m);
                }
            }
        }
    }
    assert!(resumed.len() >= 12, "the stream came back: {} frames", resumed.len());
    assert_eq!(resumed[0].payload[0] >> 4, 1, "it resumes at a keyframe");
    let seqs: Vec<u32> = resumed.iter().filter_map(seq_of).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "then every frame: {seqs:?}");
    let stats = pull_named(&edge, "restarted");
    assert!(stats.connects >= 2 && stats.failures >= 1, "{stats:?}");
    edge.shutdown();
    source.shutdown();
}

#[test]
fn a_local_publish_of_a_pulled_key_is_refused_with_bad_name() {
    let dead = free_port();
    let edge = start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
        c.pull = Some(format!("live/owned=rtmp://127.0.0.1:{dead}/live/x"));
        c.pull_mode = "on-demand".into();
    });
    for shard in 0..2 {
        let mut publisher = Client::connect(edge.shard_addr(shard).unwrap(), "live");
        assert_eq!(publisher.publish("owned"), code::PUBLISH_BAD_NAME, "from shard {shard}");
    }
    // Other keys publish as ever.
    let mut publisher = Client::connect(edge.local_addr(), "live");
    assert_eq!(publisher.publish("free"), code::PUBLISH_START);
    edge.shutdown();
}

/// What a scripted upstream does once asked to play.
#[derive(Clone, Copy)]
enum Scripted {
    /// `NetStream.Play.StreamNotFound`.
    NotFound,
    /// Play.Start, then a chunk header declaring a message far over any limit.
    Garbage,
}

/// A scripted RTMP upstream on rtmp-proto's server session; counts its connections.
struct FakeUpstream {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    fn start(script: Scripted) -> FakeUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((socket, _)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                        let stopped = stopped.clone();
                        std::thread::spawn(move || serve_scripted(socket, script, &stopped));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        FakeUpstream { addr, connections, stop }
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve_scripted(mut socket: TcpStream, script: Scripted, stop: &AtomicBool) {
    socket.set_nonblocking(false).unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut session =
        ServerSession::new(SessionConfig::default(), 0, &[7u8; RANDOM_LEN], Instant::now());
    let mut input = BytesMut::new();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        match socket.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => input.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
            Err(_) => return,
        }
        if session.handle_input(&mut input, Instant::now()).is_err() {
            return;
        }
        let mut garbage = false;
        while let Some(event) = session.poll_event() {
            if let ServerEvent::PlayRequested { stream_id, .. } = event {
                match script {
                    Scripted::NotFound => {
                        session.reject_play(stream_id, code::PLAY_STREAM_NOT_FOUND, "no such")
                    }
                    Scripted::Garbage => {
                        session.accept_play(stream_id, "x");
                        garbage = true;
                    }
                }
            }
        }
        while let Some(out) = session.poll_transmit() {
            if socket.write_all(&out).is_err() {
                return;
            }
        }
        if garbage {
            // fmt 0 on chunk stream 4: a video message of 0xffffff bytes (over any limit).
            let header = [0x04, 0, 0, 0, 0xff, 0xff, 0xff, 9, 1, 0, 0, 0];
            let _ = socket.write_all(&header);
            let _ = socket.write_all(&[0xab; 4096]);
        }
    }
}

#[test]
fn refusing_silent_not_found_and_garbage_upstreams_are_retried_within_bounds_and_counted() {
    let refusing = free_port();
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let not_found = FakeUpstream::start(Scripted::NotFound);
    let garbage = FakeUpstream::start(Scripted::Garbage);
    let edge = start_server(|c| {
        c.pulls = vec![
            pull_of("refusing", format!("rtmp://127.0.0.1:{refusing}/live/x"), "always"),
            pull_of("silent", format!("rtmp://{silent_addr}/live/x"), "always"),
            pull_of("notfound", format!("rtmp://{}/live/x", not_found.addr), "always"),
            pull_of("garbage", format!("rtmp://{}/live/x", garbage.addr), "always"),
        ];
        c.pull_backoff_min_ms = 100;
        c.pull_backoff_max_secs = 1;
        c.pull_connect_timeout_secs = 1;
    });
    let started = Instant::now();
    let expect = [
        ("refusing", "connect"),
        ("silent", "timed out"),
        ("notfound", "NetStream.Play.StreamNotFound"),
        ("garbage", "protocol"),
    ];
    eventually("every pull failed twice, for its own reason", || {
        expect.iter().all(|(name, reason)| {
            let p = pull_named(&edge, name);
            p.failures >= 2 && p.last_error.as_deref().is_some_and(|e| e.contains(reason))
        })
    });
    // The server serves on, untouched.
    assert_round_trip(&edge);
    // Bounded: backoff doubling from 100 ms to 1 s allows no more than a few attempts a second.
    let elapsed = started.elapsed().as_secs_f64();
    for upstream in [&not_found, &garbage] {
        let n = upstream.connections.load(Ordering::Relaxed) as f64;
        assert!(n <= 4.0 + 2.0 * elapsed, "{n} connections in {elapsed:.1} s");
    }
    let metrics = Metrics::scrape(edge.http_addr().unwrap());
    assert!(metrics.sum("rtmp_relay_pull_failures_total", &[]) >= 8.0);
    assert_eq!(metrics.sum("rtmp_relay_pull_state", &[("state", "live")]), 0.0);
    drop(silent);
    edge.shutdown();
}

#[test]
fn pull_attempts_over_their_limits_wait_and_are_counted() {
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let refusing = free_port();
    let edge = start_server(|c| {
        c.shards = Some(1);
        c.pulls = vec![
            pull_of("s1", format!("rtmp://{silent_addr}/live/a"), "always"),
            pull_of("s2", format!("rtmp://{silent_addr}/live/b"), "always"),
            pull_of("r1", format!("rtmp://127.0.0.1:{refusing}/live/c"), "always"),
        ];
        c.pull_attempts_in_flight = 1;
        c.pull_attempts_per_sec = 1;
        c.pull_backoff_min_ms = 50;
        c.pull_backoff_max_secs = 1;
        c.pull_connect_timeout_secs = 1;
    });
    eventually("both limits tripped", || {
        edge.limit_trips(Limit::PullAttemptsInFlight) >= 1
            && edge.limit_trips(Limit::PullAttemptsPerSec) >= 1
    });
    // One attempt a second at most, whatever the backoff would allow. Counted over a window
    // of its own: how long the limits took to trip depends on how busy the machine is.
    let failures = || -> u64 { pulls(&edge).iter().map(|p| p.failures).sum() };
    let before = failures();
    std::thread::sleep(Duration::from_secs(3));
    let attempts = failures() - before;
    assert!(attempts <= 5, "{attempts} attempts in about 3 s with one allowed a second");
    drop(silent);
    edge.shutdown();
}

#[test]
fn pull_configuration_is_checked() {
    let bad = |configure: fn(&mut rtmp_relay::Config)| {
        let mut config = rtmp_relay::Config::default();
        configure(&mut config);
        config.pull_settings().map(|_| ()).unwrap_err().to_string()
    };
    assert!(bad(|c| c.pull = Some("live/x".into())).contains("APP/NAME=URL"));
    assert!(bad(|c| c.pull = Some("live/x=http://h/a/b".into())).contains("rtmp"));
    assert!(bad(|c| {
        c.pull = Some("live/x=rtmp://h/a/b".into());
        c.pull_mode = "sometimes".into();
    })
    .contains("on-demand"));
    assert!(bad(|c| {
        c.pulls = vec![
            pull_of("twice", "rtmp://h/a/b".into(), "always"),
            pull_of("twice", "rtmp://h/a/c".into(), "always"),
        ]
    })
    .contains("one source"));
    let config = rtmp_relay::Config {
        pull: Some("live/cam=rtmps://h:8443/app/{name}".into()),
        ..Default::default()
    };
    let settings = config.pull_settings().unwrap();
    assert_eq!(settings.pulls.len(), 1);
    assert_eq!(settings.linger, Duration::from_secs(10), "the linger's default");
}
