//! End-to-end relay behaviour against an in-process server, with the project's own client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rtmp_proto::message::UserControlEvent;
use rtmp_proto::session::{ClientEvent, Media, MediaKind};

/// Publishes `count` frames (even: video, a keyframe every 30th from the first; odd: audio), returning what was
/// sent as (kind, timestamp, payload).
fn publish_frames(
    publisher: &mut Client,
    first_seq: u32,
    count: u32,
) -> Vec<(MediaKind, u32, Vec<u8>)> {
    let mut sent = Vec::new();
    for seq in first_seq..first_seq + count {
        let ts = seq * 20;
        let (kind, payload) = if seq % 2 == 0 {
            (
                MediaKind::Video,
                video_frame(seq, (seq - first_seq) % 30 == 0, 200 + (seq as usize % 7) * 900),
            )
        } else {
            (MediaKind::Audio, audio_frame(seq))
        };
        publisher.send(kind, ts, &payload);
        sent.push((kind, ts, payload));
    }
    sent
}

fn assert_same(received: &[Media], sent: &[(MediaKind, u32, Vec<u8>)]) {
    assert_eq!(received.len(), sent.len(), "message count");
    for (got, (kind, ts, payload)) in received.iter().zip(sent) {
        assert_eq!(got.kind, *kind);
        assert_eq!(got.timestamp.0, *ts);
        assert_eq!(&got.payload[..], &payload[..], "payload of seq {:?}", seq_of(got));
    }
}

/// Skips the late-join preamble (|RtmpSampleAccess and the cached headers).
fn live_only(media: Vec<Media>) -> Vec<Media> {
    media.into_iter().filter(|m| seq_of(m).is_some() && m.payload.len() > 6).collect()
}

#[test]
fn relays_one_publisher_to_one_player() {
    let server = start_server(|_| {});
    let mut publisher = Client::connect(server.local_addr(), "live");
    assert_eq!(publisher.publish("one"), "NetStream.Publish.Start");
    let mut player = Client::connect(server.local_addr(), "live");
    player.play("one");
    let sent = publish_frames(&mut publisher, 0, 60);
    // |RtmpSampleAccess first, then the live frames.
    let media = player.media(61, WAIT);
    assert_eq!(media[0].kind, MediaKind::Data);
    assert_same(&media[1..], &sent);
}

#[test]
fn every_subscriber_gets_every_message_byte_identical_and_in_order() {
    let server = start_server(|_| {});
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("fan");
    let mut players: Vec<Client> = (0..3)
        .map(|_| {
            let mut p = Client::connect(server.local_addr(), "live");
            p.play("fan");
            p
        })
        .collect();
    publisher.send_headers();
    let mut sent = vec![
        (MediaKind::Audio, 0, AAC_SEQUENCE_HEADER.to_vec()),
        (MediaKind::Video, 0, AVC_SEQUENCE_HEADER.to_vec()),
    ];
    // Large frames too: several chunks each at the 4096-byte chunk size.
    sent.extend(publish_frames(&mut publisher, 0, 300));
    for player in &mut players {
        let media = player.media(2 + sent.len(), WAIT);
        // Drop |RtmpSampleAccess and the metadata (data messages).
        let media: Vec<Media> = media.into_iter().filter(|m| m.kind != MediaKind::Data).collect();
        assert_same(&media, &sent);
    }
    let counters = server.counters();
    assert_eq!(counters.messages_in, 303);
    assert_eq!(counters.messages_relayed, 3 * 303);
    assert_eq!(counters.messages_dropped, 0);
}

#[test]
fn late_joiner_gets_metadata_headers_and_gop_before_live_frames() {
    let server = start_server(|_| {});
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("late");
    publisher.send_headers();
    // Two GOPs (keyframes at 0 and 30); the cache must hold the second from its keyframe.
    publish_frames(&mut publisher, 0, 45);
    // The publisher's messages are processed before the player's play (one shard, in order
    // of arrival), but give the server a moment anyway.
    std::thread::sleep(Duration::from_millis(200));

    let mut player = Client::connect(server.local_addr(), "live");
    // play() returns at Play.Start; everything after it arrives within the drain.
    player.play("late");
    let session_events = player.drain(Duration::from_millis(500));
    let media: Vec<&Media> = session_events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Media(m) => Some(m),
            _ => None,
        })
        .collect();
    // In the order design.md gives: |RtmpSampleAccess, onMetaData, AAC header, AVC header,
    // then the GOP from its keyframe (seq 30).
    let name = |m: &Media| {
        rtmp_proto::command::data_name(18, &m.payload, &Default::default()).unwrap_or_default()
    };
    assert_eq!(name(media[0]), "|RtmpSampleAccess");
    assert_eq!(name(media[1]), "onMetaData");
    assert_eq!(&media[2].payload[..], AAC_SEQUENCE_HEADER);
    assert_eq!(&media[3].payload[..], AVC_SEQUENCE_HEADER);
    let gop: Vec<u32> = media[4..].iter().filter_map(|m| seq_of(m)).collect();
    assert_eq!(gop, (30..45).collect::<Vec<_>>(), "GOP from its keyframe, in order");
    assert_eq!(media[4].payload[0], 0x17, "starts on a keyframe");
    // Headers are re-stamped onto the GOP's time base; metadata is not on the clock: it goes
    // out at 0, the only time FFmpeg's FLV demuxer takes it as metadata.
    assert_eq!(media[1].timestamp.0, 0);
    for header in &media[2..4] {
        assert_eq!(header.timestamp.0, 30 * 20);
    }

    // Then live frames follow.
    let sent = publish_frames(&mut publisher, 45, 10);
    let live = player.media(10, WAIT);
    assert_same(&live, &sent);
}

#[test]
fn publisher_leaving_notifies_players_who_resume_on_republish() {
    let server = start_server(|_| {});
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("comeback");
    let mut player = Client::connect(server.local_addr(), "live");
    player.play("comeback");
    publisher.send_headers();
    publish_frames(&mut publisher, 0, 10);
    player.media(14, WAIT);

    publisher.close();
    let events = player.expect(
        |e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"),
        "UnpublishNotify",
    );
    let eof = events.iter().position(Client::is_stream_eof).expect("StreamEOF before the notify");
    assert!(eof < events.len() - 1);

    let mut publisher = Client::connect(server.local_addr(), "live");
    assert_eq!(publisher.publish("comeback"), "NetStream.Publish.Start");
    let events = player.expect(
        |e| Client::status_code(e) == Some("NetStream.Play.PublishNotify"),
        "PublishNotify",
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, ClientEvent::UserControl(UserControlEvent::StreamBegin(_)))));
    publisher.send_headers();
    let sent = publish_frames(&mut publisher, 0, 20);
    let media = player.media(23, WAIT);
    let media: Vec<Media> = media.into_iter().filter(|m| m.kind != MediaKind::Data).collect();
    assert_eq!(&media[0].payload[..], AAC_SEQUENCE_HEADER, "fresh headers after republish");
    assert_eq!(&media[1].payload[..], AVC_SEQUENCE_HEADER);
    assert_same(&media[2..], &sent);
}

#[test]
fn second_publisher_is_refused_and_the_first_is_untouched() {
    let server = start_server(|_| {});
    let mut first = Client::connect(server.local_addr(), "live");
    first.publish("taken");
    let mut player = Client::connect(server.local_addr(), "live");
    player.play("taken");

    let mut second = Client::connect(server.local_addr(), "live");
    assert_eq!(second.publish("taken"), "NetStream.Publish.BadName");
    assert!(second.wait_closed(WAIT), "the refused publisher is disconnected");

    let sent = publish_frames(&mut first, 0, 30);
    let media = live_only(player.media(31, WAIT));
    assert_same(&media, &sent);
    assert_eq!(server.counters().publishes_rejected, 1);
}

#[test]
fn ten_concurrent_streams_never_mix() {
    let server = start_server(|_| {});
    let mut pairs: Vec<(Client, Client)> = (0..10)
        .map(|i| {
            let mut publisher = Client::connect(server.local_addr(), "live");
            publisher.publish(&format!("s{i}"));
            let mut player = Client::connect(server.local_addr(), "live");
            player.play(&format!("s{i}"));
            (publisher, player)
        })
        .collect();
    let mut sent = Vec::new();
    for (i, (publisher, _)) in pairs.iter_mut().enumerate() {
        // Each stream's sequence numbers live in their own range.
        sent.push(publish_frames(publisher, i as u32 * 1000, 40));
    }
    for ((_, player), sent) in pairs.iter_mut().zip(&sent) {
        let media = live_only(player.media(41, WAIT));
        assert_same(&media, sent);
    }
}

#[test]
fn the_same_key_in_two_apps_is_two_streams() {
    let server = start_server(|_| {});
    let mut live = Client::connect(server.local_addr(), "live");
    assert_eq!(live.publish("cam"), "NetStream.Publish.Start");
    // Not a duplicate publisher: another app is another namespace.
    let mut backup = Client::connect(server.local_addr(), "backup");
    assert_eq!(backup.publish("cam"), "NetStream.Publish.Start");
    let mut live_player = Client::connect(server.local_addr(), "live");
    live_player.play("cam");
    let mut backup_player = Client::connect(server.local_addr(), "backup");
    backup_player.play("cam");
    let live_sent = publish_frames(&mut live, 0, 20);
    let backup_sent = publish_frames(&mut backup, 5000, 20);
    assert_same(&live_only(live_player.media(21, WAIT)), &live_sent);
    assert_same(&live_only(backup_player.media(21, WAIT)), &backup_sent);
}

#[test]
fn a_clean_unpublish_notifies_players_like_a_disconnect() {
    let server = start_server(|_| {});
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("clean");
    let mut player = Client::connect(server.local_addr(), "live");
    player.play("clean");
    publisher.send_headers();
    publish_frames(&mut publisher, 0, 5);
    player.media(7, WAIT);

    // deleteStream with the connection still open, as ffmpeg and OBS do when they stop.
    publisher.delete_stream();
    let events = player.expect(
        |e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"),
        "UnpublishNotify",
    );
    assert!(events.iter().any(Client::is_stream_eof), "StreamEOF before the notify");
    eventually("the publisher is gone", || server.counters().publishers == 0);
    // The key is free again: the same connection may publish anew.
    assert_eq!(publisher.publish("clean"), "NetStream.Publish.Start");
}

#[test]
fn a_player_that_stops_reading_does_not_delay_the_others() {
    // A small hard limit so the stalled player is cut off quickly and memory stays bounded.
    let server = start_server(|c| {
        c.player_hard_limit_bytes = 4 * 1024 * 1024;
        c.player_stall_secs = 60;
    });
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("slow");
    let mut stalled = Client::connect(server.local_addr(), "live");
    stalled.play("slow");
    let mut healthy: Vec<Client> = (0..2)
        .map(|_| {
            let mut p = Client::connect(server.local_addr(), "live");
            p.play("slow");
            p
        })
        .collect();
    // Drain the healthy players from their own threads while the publisher pushes 40 MB.
    let readers: Vec<_> = healthy
        .drain(..)
        .map(|mut player| {
            std::thread::spawn(move || {
                let mut gaps = Duration::ZERO;
                let mut last = Instant::now();
                let mut count = 0;
                while count < 400 {
                    match player.next_event(WAIT) {
                        Some(ClientEvent::Media(m)) if seq_of(&m).is_some() => {
                            count += 1;
                            gaps = gaps.max(last.elapsed());
                            last = Instant::now();
                        }
                        Some(_) => {}
                        None => break,
                    }
                }
                (count, gaps)
            })
        })
        .collect();
    for seq in 0..400u32 {
        publisher.send(MediaKind::Video, seq * 33, &video_frame(seq, seq % 30 == 0, 100_000));
    }
    for reader in readers {
        let (count, max_gap) = reader.join().expect("reader thread");
        assert_eq!(count, 400, "healthy players get every frame");
        assert!(max_gap < Duration::from_secs(5), "max gap {max_gap:?}");
    }
    eventually("the stalled player is disconnected", || {
        server.counters().slow_subscriber_disconnects >= 1
    });
    assert!(stalled.wait_closed(WAIT));
}

#[test]
fn players_waiting_on_an_absent_publisher_are_stopped_after_the_wait() {
    let server = start_server(|c| c.republish_wait_secs = 1);
    let mut player = Client::connect(server.local_addr(), "live");
    player.play("nobody");
    let events =
        player.expect(|e| Client::status_code(e) == Some("NetStream.Play.Stop"), "Play.Stop");
    assert!(events.iter().any(Client::is_stream_eof));
    assert!(player.wait_closed(WAIT));
    eventually("the stream is forgotten", || {
        let c = server.counters();
        c.streams == 0 && c.subscribers == 0 && c.republish_wait_expired == 1
    });
}

#[test]
fn counts_return_to_zero_when_everyone_leaves() {
    let server = start_server(|_| {});
    let mut publisher = Client::connect(server.local_addr(), "live");
    publisher.publish("gone");
    let players: Vec<Client> = (0..3)
        .map(|_| {
            let mut p = Client::connect(server.local_addr(), "live");
            p.play("gone");
            p
        })
        .collect();
    publish_frames(&mut publisher, 0, 10);
    eventually("3 subscribers", || server.counters().subscribers == 3);
    for player in players {
        player.close();
    }
    publisher.close();
    eventually("everything released", || {
        let c = server.counters();
        c.streams == 0 && c.subscribers == 0 && c.publishers == 0 && c.connections_open == 0
    });
}
