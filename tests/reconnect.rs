//! An encoder that drops its connection and reconnects at once gets its key back (issue 17).
//!
//! The old connection's release and the new connection's publish race: the owner shard may see
//! the new publish before the old connection's end (read by whichever shard accepted it, and
//! sent over the mesh when that is not the owner). The owner has the holder's shard check the
//! holder's socket before refusing, so a publisher whose previous connection is gone is never
//! refused, while a live holder still keeps its key (tests/shards.rs, tests/relay.rs).
//!
//! The publisher's connections spread over both shards by source port (SO_REUSEPORT); the
//! race needs no placement. Without the check, each of 8 runs of the 400 cycles below was
//! refused 11 to 21 times (after RSTs and FINs alike).

mod common;

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::*;
use rtmp_proto::session::{ClientEvent, MediaKind};

/// Reconnect cycles: half end with an RST, half with a FIN.
const CYCLES: usize = 400;
/// Media a publisher sends right before its connection drops: the server is still reading it
/// when the next connection arrives, as from an encoder cut off mid-stream.
const BURST_FRAMES: u32 = 8;
const BURST_FRAME_BYTES: usize = 64 * 1024;

/// Ends `client`'s connection with a FIN, once all it sent has reached the server's kernel: the
/// FIN then goes out at once. (Closed earlier, the FIN would wait in this side's send queue
/// behind media the server has not made room for yet: until the server reads its way there,
/// that connection is not closed for it, and no check of its socket can tell it from a live
/// publisher's.)
fn finish(client: Client) {
    let fd = client.socket().as_raw_fd();
    let deadline = Instant::now() + WAIT;
    loop {
        let mut unacknowledged: libc::c_int = 0;
        // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int, the bytes the peer has not acknowledged.
        let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unacknowledged) };
        assert_eq!(rc, 0, "SIOCOUTQ");
        if unacknowledged == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the server never took the last media");
        std::thread::sleep(Duration::from_millis(1));
    }
    client.close();
}

/// Connects and publishes `key`, then sends what an encoder sends first; the status code.
fn publish(addr: std::net::SocketAddr, key: &str) -> (Client, String) {
    let mut client = Client::connect(addr, "live");
    let code = client.publish(key);
    if code == "NetStream.Publish.Start" {
        client.send_headers();
        client.send(MediaKind::Video, 0, &video_frame(0, true, 2000));
    }
    (client, code)
}

#[test]
fn a_publisher_that_reconnects_at_once_always_gets_its_key_back() {
    let server = start_server(|c| c.shards = Some(2));
    let addr = server.local_addr();
    let key = fresh_key("reconnect");
    let started = Instant::now();
    let (mut publisher, code) = publish(addr, &key);
    assert_eq!(code, "NetStream.Publish.Start");
    let mut refused = [0usize; 2]; // after an RST, after a FIN
    for cycle in 0..CYCLES {
        let rst = cycle % 2 == 0;
        for seq in 1..=BURST_FRAMES {
            publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, false, BURST_FRAME_BYTES));
        }
        if rst {
            publisher.reset();
        } else {
            finish(publisher);
        }
        // At once: no waiting for the server to notice.
        let (next, code) = publish(addr, &key);
        publisher = next;
        if code != "NetStream.Publish.Start" {
            assert_eq!(code, "NetStream.Publish.BadName", "cycle {cycle}");
            refused[usize::from(!rst)] += 1;
            // Carry on once the key is free again, so each cycle counts.
            let deadline = Instant::now() + WAIT;
            publisher = loop {
                assert!(Instant::now() < deadline, "the key never came free");
                std::thread::sleep(Duration::from_millis(5));
                let (next, code) = publish(addr, &key);
                if code == "NetStream.Publish.Start" {
                    break next;
                }
            };
        }
    }
    publisher.close();
    let elapsed = started.elapsed();
    let accepted: Vec<u64> =
        server.shard_snapshots().iter().map(|s| s.counters.connections_accepted).collect();
    eprintln!(
        "{CYCLES} reconnects in {elapsed:?}: refused after RST {}, after FIN {}; \
         connections accepted per shard {accepted:?}",
        refused[0], refused[1]
    );
    assert!(
        accepted.iter().all(|&n| n > 0),
        "the publisher's connections reached both shards: {accepted:?}"
    );
    assert_eq!(
        refused,
        [0, 0],
        "reconnecting publishers refused (after RST, after FIN) although their previous \
         connection was closed"
    );
    assert_all_released(&server);
}

/// A publisher released because its connection was found gone may still have media queued in
/// the server, read after the new publisher took over: none of it may reach the stream. A
/// player watches every cycle. Each publisher's frames carry its cycle in their sequence
/// numbers, and each publish tells the player `PublishNotify`, so after the n-th notify every
/// frame must be from the n-th publisher.
#[test]
fn media_of_a_released_publisher_never_reaches_its_successors_stream() {
    const CYCLES: usize = 200;
    let server = start_server(|c| c.shards = Some(2));
    let addr = server.local_addr();
    let key = fresh_key("leftovers");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    let watcher = std::thread::spawn(move || {
        let mut notifies = 0u32;
        let mut frames = 0usize;
        let mut leftovers = Vec::new();
        // Until the publishers are done and the stream is quiet.
        while let Some(event) = player.next_event(Duration::from_secs(3)) {
            match event {
                ClientEvent::Status { code, .. } if code == "NetStream.Play.PublishNotify" => {
                    notifies += 1
                }
                // The bursts' frames only (not the headers and first keyframe each sends).
                ClientEvent::Media(media)
                    if media.kind == MediaKind::Video
                        && media.payload.len() == 9 + BURST_FRAME_BYTES =>
                {
                    frames += 1;
                    let cycle = seq_of(&media).expect("a sequence number") / 1000;
                    if cycle + 1 != notifies {
                        leftovers.push((notifies, cycle));
                    }
                }
                _ => {}
            }
        }
        (notifies, frames, leftovers)
    });
    for cycle in 0..CYCLES as u32 {
        let (mut publisher, code) = publish(addr, &key);
        assert_eq!(code, "NetStream.Publish.Start", "cycle {cycle}");
        // Keyframes: a player that skips to the next keyframe after a republish skips none.
        for i in 1..=BURST_FRAMES {
            let frame = video_frame(cycle * 1000 + i, true, BURST_FRAME_BYTES);
            publisher.send(MediaKind::Video, i * 40, &frame);
        }
        if cycle % 2 == 0 {
            publisher.reset();
        } else {
            finish(publisher);
        }
    }
    let (notifies, frames, leftovers) = watcher.join().expect("the player's thread");
    eprintln!("{notifies} publishes watched, {frames} frames, {} leftovers", leftovers.len());
    assert_eq!(notifies, CYCLES as u32, "the player heard every publish");
    assert!(frames > CYCLES, "the player saw the publishers' media: {frames} frames");
    assert!(
        leftovers.is_empty(),
        "(publish notifications seen, cycle of the frame) for frames of an earlier publisher: \
         {leftovers:?}"
    );
}
