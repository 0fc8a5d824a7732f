//! Push relays: one rtmp-relay pushes to another over rtmp and over rtmps (verified against a
//! test CA), byte for byte; the unpublish is passed on; a destination that restarts gets the
//! stream back at a keyframe; dead or stalled destinations never slow the local players; an
//! untrusted certificate is refused unless verification is turned off; a publish answered with
//! an error is retried with backoff.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use common::certs::{self, TempDir};
use common::*;
use rtmp_proto::session::{ClientEvent, MediaKind};
use rtmp_relay::config::PushEntry;
use rtmp_relay::metrics::{PushState, PushStats};
use rtmp_relay::ServerHandle;

fn push_to(url: String) -> PushEntry {
    PushEntry {
        url,
        app: Some("live".into()),
        names: None,
        ca_file: None,
        insecure_skip_verify: false,
        pin_sha256: None,
    }
}

fn pushes(server: &ServerHandle) -> Vec<PushStats> {
    server.transport_stats().into_iter().flat_map(|s| s.pushes).collect()
}

fn destination(dir: &TempDir, listen: SocketAddr, rtmps: SocketAddr) -> ServerHandle {
    let cert = dir.path("leaf.pem");
    let key = dir.path("leaf.key");
    start_server(|c| {
        c.listen = listen;
        c.rtmps_listen = Some(rtmps);
        c.rtmps_cert = Some(cert);
        c.rtmps_key = Some(key);
    })
}

/// A loopback port free now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The next `count` audio and video messages, and the data messages seen meanwhile.
fn av_media(player: &mut Client, count: usize) -> (Vec<rtmp_proto::session::Media>, Vec<Vec<u8>>) {
    let (mut media, mut data) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + WAIT;
    while media.len() < count && Instant::now() < deadline {
        for m in player.media(1, deadline.saturating_duration_since(Instant::now())) {
            match m.kind {
                MediaKind::Data => data.push(m.payload.to_vec()),
                _ => media.push(m),
            }
        }
    }
    (media, data)
}

fn status_seen(events: &[ClientEvent], code: &str) -> bool {
    events.iter().any(|e| Client::status_code(e) == Some(code))
}

#[test]
fn pushes_over_rtmp_and_verified_rtmps_are_byte_exact_and_pass_the_unpublish_on() {
    let dir = TempDir::new("push-exact");
    let (ca, _, _) = certs::ca_and_leaf(&dir);
    let any = "127.0.0.1:0".parse().unwrap();
    let b = destination(&dir, any, any);
    let key = fresh_key("push");
    let mut tls = push_to(format!("rtmps://{}/live/{{name}}-tls", b.rtmps_addr().unwrap()));
    tls.ca_file = Some(ca);
    let plain = push_to(format!("rtmp://{}/live/{{name}}-plain", b.local_addr()));
    let a = start_server(|c| {
        c.pushes = vec![plain, tls];
        c.push_backoff_min_ms = 100;
    });

    let mut publisher = Client::connect(a.local_addr(), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    publisher.send_headers();
    let first = video_frame(0, true, 20_000);
    publisher.send(MediaKind::Video, 0, &first);
    eventually("both pushes live", || {
        let p = pushes(&a);
        p.len() == 2 && p.iter().all(|p| p.state == PushState::Live)
    });
    assert!(pushes(&a).iter().all(|p| p.destination.ends_with("***")), "keys masked");

    let mut players: Vec<Client> = ["plain", "tls"]
        .iter()
        .map(|suffix| {
            let mut player = Client::connect(b.local_addr(), "live");
            player.play(&format!("{key}-{suffix}"));
            player
        })
        .collect();
    // What a late joiner of the destination gets first: headers and the GOP so far.
    for player in &mut players {
        let (joined, data) = av_media(player, 3);
        assert!(
            data.iter().any(|d| d.windows(10).any(|w| w == b"onMetaData")),
            "the metadata went along (as @setDataFrame, so the destination kept it)"
        );
        assert_eq!(joined.len(), 3);
        assert_eq!(joined[0].payload.as_ref(), AAC_SEQUENCE_HEADER);
        assert_eq!(joined[1].payload.as_ref(), AVC_SEQUENCE_HEADER);
        assert_eq!(joined[2].payload.as_ref(), first.as_slice());
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
    for player in &mut players {
        let (got, _) = av_media(player, sent.len());
        let got: Vec<_> = got.iter().map(|m| (m.kind, m.timestamp.0, m.payload.to_vec())).collect();
        assert_eq!(got, sent, "every frame, byte for byte, in order");
    }

    // The publisher leaves: each destination sees its publish end.
    publisher.delete_stream();
    for player in &mut players {
        let events = player.drain(Duration::from_secs(3));
        assert!(
            status_seen(&events, "NetStream.Play.UnpublishNotify"),
            "unpublish passed on: {events:?}"
        );
    }
    eventually("pushes ended", || pushes(&a).is_empty());
    a.shutdown();
    b.shutdown();
}

#[test]
fn a_destination_that_restarts_gets_the_stream_back_at_a_keyframe() {
    let dir = TempDir::new("push-restart");
    let (ca, _, _) = certs::ca_and_leaf(&dir);
    let plain: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let rtmps: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let b = destination(&dir, plain, rtmps);
    let mut entry = push_to(format!("rtmps://{rtmps}/live/{{name}}"));
    entry.ca_file = Some(ca);
    let a = start_server(|c| {
        c.pushes = vec![entry];
        c.push_backoff_min_ms = 100;
        c.push_backoff_max_secs = 1;
    });
    let key = fresh_key("restart");
    let mut publisher = Client::connect(a.local_addr(), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    publisher.send_headers();
    publisher.send(MediaKind::Video, 0, &video_frame(0, true, 5_000));
    eventually("push live", || pushes(&a).iter().any(|p| p.state == PushState::Live));

    b.shutdown();
    let mut seq = 1u32;
    let mut send_some = |publisher: &mut Client, n: u32| {
        for _ in 0..n {
            publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq % 10 == 0, 800));
            seq += 1;
        }
    };
    send_some(&mut publisher, 5);
    eventually("the push noticed", || pushes(&a).iter().any(|p| p.failures >= 1));

    let b = destination(&dir, plain, rtmps);
    let mut player = Client::connect(b.local_addr(), "live");
    player.request_play(&key);
    let deadline = Instant::now() + WAIT;
    let mut video = Vec::new();
    while video.len() < 12 && Instant::now() < deadline {
        send_some(&mut publisher, 5);
        for event in player.drain(Duration::from_millis(100)) {
            if let ClientEvent::Media(m) = event {
                if m.kind == MediaKind::Video && m.payload.as_ref() != AVC_SEQUENCE_HEADER {
                    video.push(m);
                }
            }
        }
    }
    assert!(video.len() >= 12, "the stream came back: {} frames", video.len());
    assert_eq!(video[0].payload[0] >> 4, 1, "it resumes at a keyframe");
    let seqs: Vec<u32> = video.iter().filter_map(seq_of).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "then every frame: {seqs:?}");
    let stats = pushes(&a);
    assert!(stats[0].connects >= 2 && stats[0].failures >= 1, "{stats:?}");
    a.shutdown();
    b.shutdown();
}

#[test]
fn dead_and_stalled_destinations_never_slow_the_local_players() {
    // Nothing listens on one; the other accepts and never answers.
    let dead = free_port();
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_addr = stalled.local_addr().unwrap();
    let a = start_server(|c| {
        c.pushes = vec![
            push_to(format!("rtmp://127.0.0.1:{dead}/live/{{name}}")),
            push_to(format!("rtmp://{stalled_addr}/live/{{name}}")),
        ];
        c.push_backoff_min_ms = 100;
        c.push_connect_timeout_secs = 1;
    });
    let key = fresh_key("dead");
    let mut publisher = Client::connect(a.local_addr(), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    publisher.send_headers();
    let mut player = Client::connect(a.local_addr(), "live");
    player.play(&key);
    let mut worst = Duration::ZERO;
    for seq in 0..100u32 {
        let sent = Instant::now();
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq % 25 == 0, 3_000));
        loop {
            match player.next_event(WAIT) {
                Some(ClientEvent::Media(m)) if seq_of(&m) == Some(seq) => break,
                Some(_) => {}
                None => panic!("frame {seq} never arrived"),
            }
        }
        worst = worst.max(sent.elapsed());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Loopback delivers in well under a millisecond; a push that blocked the shard (a connect
    // or a handshake waited on) would show as seconds.
    assert!(worst < Duration::from_millis(500), "worst frame delay {worst:?}");
    eventually("both destinations failing and retrying", || {
        let p = pushes(&a);
        p.len() == 2 && p.iter().all(|p| p.failures >= 1 && p.state != PushState::Live)
    });
    let errors: Vec<String> = pushes(&a).into_iter().filter_map(|p| p.last_error).collect();
    assert!(errors.iter().any(|e| e.contains("timed out")), "{errors:?}");
    drop(stalled);
    a.shutdown();
}

#[test]
fn an_untrusted_certificate_is_refused_unless_verification_is_off() {
    let dir = TempDir::new("push-untrusted");
    let (cert, key, _) = certs::self_signed(&dir, "self", &["127.0.0.1"]);
    let b = start_server(|c| {
        c.rtmps_listen = Some("127.0.0.1:0".parse().unwrap());
        c.rtmps_cert = Some(cert);
        c.rtmps_key = Some(key);
    });
    let url = format!("rtmps://{}/live/{{name}}", b.rtmps_addr().unwrap());
    let mut insecure = push_to(url.replace("{name}", "{name}-insecure"));
    insecure.insecure_skip_verify = true;
    let a = start_server(|c| {
        c.pushes = vec![push_to(url.clone()), insecure];
        c.push_backoff_min_ms = 100;
    });
    let name = fresh_key("untrusted");
    let mut publisher = Client::connect(a.local_addr(), "live");
    assert_eq!(publisher.publish(&name), "NetStream.Publish.Start");
    eventually("verified push refused, opted-out push live", || {
        let p = pushes(&a);
        p.len() == 2
            && p.iter().any(|p| {
                p.failures >= 1
                    && p.last_error.as_deref().is_some_and(|e| e.contains("certificate_untrusted"))
            })
            && p.iter().any(|p| p.state == PushState::Live)
    });
    a.shutdown();
    b.shutdown();
}

/// A destination that answers every publish with `NetStream.Publish.BadName`, on rtmp-proto's
/// server session; counts its connections.
fn refusing_destination() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            count.fetch_add(1, Ordering::Relaxed);
            std::thread::spawn(move || {
                let random = [9u8; rtmp_proto::handshake::RANDOM_LEN];
                let config = rtmp_proto::session::SessionConfig::default();
                let mut session =
                    rtmp_proto::session::ServerSession::new(config, 0, &random, Instant::now());
                let mut input = bytes::BytesMut::new();
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = socket.read(&mut buf) {
                    input.extend_from_slice(&buf[..n]);
                    if session.handle_input(&mut input, Instant::now()).is_err() {
                        return;
                    }
                    while let Some(event) = session.poll_event() {
                        if let rtmp_proto::session::ServerEvent::PublishRequested {
                            stream_id,
                            ..
                        } = event
                        {
                            session.reject_publish(
                                stream_id,
                                rtmp_proto::command::code::PUBLISH_BAD_NAME,
                                "not here",
                            );
                        }
                    }
                    while let Some(out) = session.poll_transmit() {
                        if socket.write_all(&out).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, connections)
}

#[test]
fn a_destination_that_answers_publish_with_an_error_is_retried_with_backoff() {
    let (addr, connections) = refusing_destination();
    let a = start_server(|c| {
        c.pushes = vec![push_to(format!("rtmp://{addr}/live/{{name}}"))];
        c.push_backoff_min_ms = 100;
        c.push_backoff_max_secs = 1;
    });
    let key = fresh_key("refused");
    let mut publisher = Client::connect(a.local_addr(), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    publisher.send_headers();
    let started = Instant::now();
    eventually("the refusal seen and retried", || {
        pushes(&a).iter().any(|p| {
            p.failures >= 3
                && p.connects == 0
                && p.last_error.as_deref().is_some_and(|e| e.contains("NetStream.Publish.BadName"))
        })
    });
    // Doubling from 100 ms: a handful of attempts, not a flood.
    let n = connections.load(std::sync::atomic::Ordering::Relaxed) as f64;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(n <= 4.0 + 2.0 * elapsed, "{n} connections in {elapsed:.1} s");
    // The local stream is untouched.
    let mut player = Client::connect(a.local_addr(), "live");
    player.play(&key);
    publisher.send(MediaKind::Video, 40, &video_frame(1, true, 1_000));
    // RtmpSampleAccess, metadata and the two sequence headers first, then the frame.
    let got = player.media(5, WAIT);
    assert!(got.iter().any(|m| seq_of(m) == Some(1)), "{got:?}");
    a.shutdown();
}
