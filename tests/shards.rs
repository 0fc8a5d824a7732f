//! Cross-shard relay: every path a stream can take between shards, placed deterministically
//! with the per-shard test listeners, checked byte for byte and through the shard counters.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use rtmp_proto::session::{ClientEvent, Media, MediaKind};
use rtmp_relay::runtime::ShardSnapshot;
use rtmp_relay::ServerHandle;

fn two_shards() -> ServerHandle {
    start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
    })
}

/// A key owned by `shard`.
fn key_owned_by(server: &ServerHandle, shard: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| server.owner_of("live", k) == shard)
        .expect("some key hashes to every shard")
}

fn addr(server: &ServerHandle, shard: usize) -> SocketAddr {
    server.shard_addr(shard).expect("debug shard listeners are on")
}

fn snapshots(server: &ServerHandle) -> Vec<ShardSnapshot> {
    let snapshots = server.shard_snapshots();
    assert_eq!(snapshots.len(), 2);
    snapshots
}

fn send_stream(
    publisher: &mut Client,
    first_seq: u32,
    count: u32,
) -> Vec<(MediaKind, u32, Vec<u8>)> {
    (first_seq..first_seq + count)
        .map(|seq| {
            let (kind, payload) = if seq % 2 == 0 {
                (
                    MediaKind::Video,
                    video_frame(seq, (seq - first_seq) % 20 == 0, 3000 + (seq as usize % 5) * 2000),
                )
            } else {
                (MediaKind::Audio, audio_frame(seq))
            };
            publisher.send(kind, seq * 20, &payload);
            (kind, seq * 20, payload)
        })
        .collect()
}

fn assert_live(media: &[Media], sent: &[(MediaKind, u32, Vec<u8>)]) {
    let live: Vec<&Media> = media.iter().filter(|m| m.kind != MediaKind::Data).collect();
    assert_eq!(live.len(), sent.len(), "message count");
    for (got, (kind, ts, payload)) in live.iter().zip(sent) {
        assert_eq!((got.kind, got.timestamp.0), (*kind, *ts));
        assert_eq!(&got.payload[..], &payload[..]);
    }
}

/// A player answered on a mirror gets everything published after its Play.Start, even a burst
/// sent at once that replaces the owner's cached GOP before the mirror's subscription could
/// reach the owner: the mirror answers the play only once the owner's snapshot is in. Repeated
/// on fresh keys, since without that wait the loss depends on timing.
#[test]
fn a_mirror_player_gets_everything_published_after_its_play_start() {
    let server = two_shards();
    for round in 0..20 {
        let key = key_owned_by(&server, 0, &format!("burst{round}-"));
        let mut publisher = Client::connect(addr(&server, 0), "live");
        publisher.publish(&key);
        let mut player = Client::connect(addr(&server, 1), "live");
        player.play(&key);
        // No waiting for the mirror: three GOPs right after Play.Start.
        let sent = send_stream(&mut publisher, 0, 60);
        publisher.flush();
        assert_live(&player.media(61, WAIT), &sent);
        publisher.close();
        player.close();
    }
}

#[test]
fn publish_on_the_owner_and_play_on_another_shard() {
    let server = two_shards();
    let key = key_owned_by(&server, 0, "own");
    let mut publisher = Client::connect(addr(&server, 0), "live");
    publisher.publish(&key);
    let mut player = Client::connect(addr(&server, 1), "live");
    player.play(&key);
    eventually("shard 1 mirrors the stream", || snapshots(&server)[1].counters.mirrors == 1);
    let sent = send_stream(&mut publisher, 0, 100);
    assert_live(&player.media(101, WAIT), &sent);

    let s = snapshots(&server);
    assert_eq!(s[0].counters.streams, 1, "shard 0 owns the stream");
    assert_eq!(s[1].counters.streams, 0);
    assert!(s[0].mesh[1].0 >= 100, "owner sent every frame to shard 1 once: {:?}", s[0].mesh);
    assert!(s[1].mesh[0].1 >= 100, "shard 1 received them: {:?}", s[1].mesh);
}

#[test]
fn publish_on_a_non_owner_reaches_players_on_every_shard() {
    let server = two_shards();
    let key = key_owned_by(&server, 0, "remote-pub");
    let mut on_owner = Client::connect(addr(&server, 0), "live");
    on_owner.play(&key);
    let mut on_publisher_shard = Client::connect(addr(&server, 1), "live");
    on_publisher_shard.play(&key);
    let mut publisher = Client::connect(addr(&server, 1), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let sent = send_stream(&mut publisher, 0, 100);
    for player in [&mut on_owner, &mut on_publisher_shard] {
        let media = player.media(120, Duration::from_secs(3));
        let live: Vec<Media> =
            media.into_iter().filter(|m| seq_of(m).is_some() && m.payload.len() > 6).collect();
        assert_live(&live, &sent);
    }
    let s = snapshots(&server);
    assert_eq!(s[0].counters.publishes, 1, "the owner accepted the publish");
    assert_eq!(s[1].counters.messages_in, 100, "the publisher's shard read the messages once");
    assert_eq!(s[0].counters.messages_in, 0);
}

#[test]
fn a_late_joiner_on_a_mirror_shard_starts_from_the_mirror_cache() {
    let server = two_shards();
    let key = key_owned_by(&server, 0, "late");
    let mut publisher = Client::connect(addr(&server, 0), "live");
    publisher.publish(&key);
    let mut first = Client::connect(addr(&server, 1), "live");
    first.play(&key);
    eventually("mirror", || snapshots(&server)[1].counters.mirrors == 1);
    publisher.send_headers();
    send_stream(&mut publisher, 0, 30); // keyframes at 0 and 20
    first.media(33, WAIT);
    let asked_before = snapshots(&server)[0].mesh[1].1;

    let mut late = Client::connect(addr(&server, 1), "live");
    late.play(&key);
    let events = late.drain(Duration::from_millis(500));
    let media: Vec<&Media> = events
        .iter()
        .filter_map(|e| if let ClientEvent::Media(m) = e { Some(m) } else { None })
        .collect();
    assert_eq!(&media[2].payload[..], AAC_SEQUENCE_HEADER);
    assert_eq!(&media[3].payload[..], AVC_SEQUENCE_HEADER);
    let gop: Vec<u32> = media[4..].iter().filter_map(|m| seq_of(m)).collect();
    assert_eq!(gop, (20..30).collect::<Vec<_>>());
    assert_eq!(
        snapshots(&server)[0].mesh[1].1,
        asked_before,
        "the late joiner did not ask the owner"
    );
}

#[test]
fn unpublish_and_republish_reach_remote_players() {
    let server = two_shards();
    let key = key_owned_by(&server, 1, "again");
    let mut publisher = Client::connect(addr(&server, 1), "live");
    publisher.publish(&key);
    let mut player = Client::connect(addr(&server, 0), "live");
    player.play(&key);
    eventually("mirror", || snapshots(&server)[0].counters.mirrors == 1);
    send_stream(&mut publisher, 0, 10);
    player.media(11, WAIT);
    publisher.close();
    let events = player.expect(
        |e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"),
        "UnpublishNotify",
    );
    assert!(events.iter().any(Client::is_stream_eof));

    // Republish from the player's shard (not the owner) this time.
    let mut publisher = Client::connect(addr(&server, 0), "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    player.expect(
        |e| Client::status_code(e) == Some("NetStream.Play.PublishNotify"),
        "PublishNotify",
    );
    let sent = send_stream(&mut publisher, 100, 20);
    assert_live(&player.media(20, WAIT), &sent);
}

#[test]
fn a_second_publisher_on_another_shard_is_refused_by_the_owner() {
    let server = two_shards();
    let key = key_owned_by(&server, 0, "dup");
    let mut first = Client::connect(addr(&server, 0), "live");
    first.publish(&key);
    let mut second = Client::connect(addr(&server, 1), "live");
    assert_eq!(second.publish(&key), "NetStream.Publish.BadName");
    assert!(second.wait_closed(WAIT));
    let mut player = Client::connect(addr(&server, 1), "live");
    player.play(&key);
    eventually("mirror", || snapshots(&server)[1].counters.mirrors == 1);
    let sent = send_stream(&mut first, 0, 20);
    assert_live(&player.media(21, WAIT), &sent);
}

/// The owner cannot see a holder on another shard: it asks that shard whether the holder's
/// connection is still there, and a live one keeps the key.
#[test]
fn a_second_publisher_on_the_owner_is_refused_while_the_holder_on_another_shard_lives() {
    let server = two_shards();
    let key = key_owned_by(&server, 0, "dup-remote");
    let mut first = Client::connect(addr(&server, 1), "live");
    assert_eq!(first.publish(&key), "NetStream.Publish.Start");
    let mut player = Client::connect(addr(&server, 0), "live");
    player.play(&key);
    for shard in [0, 1] {
        let mut second = Client::connect(addr(&server, shard), "live");
        assert_eq!(second.publish(&key), "NetStream.Publish.BadName", "second on shard {shard}");
        assert!(second.wait_closed(WAIT));
    }
    let sent = send_stream(&mut first, 0, 20);
    assert_live(&player.media(21, WAIT), &sent);
    assert_eq!(server.counters().publishes_rejected, 2);
}

/// A publisher on a shard that does not own its key resets its connection and publishes again
/// at once on the owner: the owner finds the key still held (the release may not have crossed
/// the mesh yet), asks the holder's shard, hears that the holder is gone and grants the key.
#[test]
fn a_publisher_reset_on_another_shard_gets_its_key_back_on_the_owner_at_once() {
    let server = two_shards();
    let key = key_owned_by(&server, 0, "back");
    let mut player = Client::connect(addr(&server, 0), "live");
    player.play(&key);
    for round in 0..10 {
        let mut first = Client::connect(addr(&server, 1), "live");
        assert_eq!(first.publish(&key), "NetStream.Publish.Start", "round {round}");
        send_stream(&mut first, 0, 10);
        first.reset();
        let mut second = Client::connect(addr(&server, 0), "live");
        assert_eq!(second.publish(&key), "NetStream.Publish.Start", "round {round}");
        let sent = send_stream(&mut second, 1000, 20);
        let media = player.media(200, Duration::from_millis(500));
        let tail: Vec<Media> = media
            .into_iter()
            .filter(|m| seq_of(m).is_some_and(|seq| seq >= 1000) && m.payload.len() > 6)
            .collect();
        assert_live(&tail, &sent);
        second.close();
    }
    assert_eq!(server.counters().publishes_rejected, 0);
}

#[test]
fn fifty_streams_five_players_each_across_shards_byte_identical_then_all_released() {
    let server = two_shards();
    let mut streams = Vec::new();
    for i in 0..50 {
        let key = format!("many{i}");
        let mut publisher = Client::connect(addr(&server, i % 2), "live");
        publisher.publish(&key);
        let players: Vec<Client> = (0..5)
            .map(|p| {
                let mut player = Client::connect(addr(&server, (i + p) % 2), "live");
                player.play(&key);
                player
            })
            .collect();
        streams.push((publisher, players));
    }
    eventually("every remote shard mirrors its streams", || {
        snapshots(&server).iter().map(|s| s.counters.mirrors).sum::<i64>() == 50
    });
    let mut sent = Vec::new();
    for (i, (publisher, _)) in streams.iter_mut().enumerate() {
        sent.push(send_stream(publisher, i as u32 * 1000, 20));
    }
    for ((_, players), sent) in streams.iter_mut().zip(&sent) {
        for player in players {
            assert_live(&player.media(21, WAIT), sent);
        }
    }
    let s = snapshots(&server);
    assert!(s.iter().all(|s| s.counters.streams > 0), "both shards own streams: {s:?}");
    for (publisher, players) in streams {
        publisher.close();
        for player in players {
            player.close();
        }
    }
    eventually("every shard back to zero", || {
        snapshots(&server).iter().all(|s| {
            let c = &s.counters;
            c.streams == 0
                && c.mirrors == 0
                && c.subscribers == 0
                && c.publishers == 0
                && c.connections_open == 0
        })
    });
}
