//! Graceful shutdown of the real binary: SIGTERM stops accepting, tells players the stream ended
//! (StreamEOF + UnpublishNotify), closes recordings and exits 0 within the shutdown timeout; a
//! second signal exits at once. And the ungraceful ends: a panic aborts the whole process; running
//! out of file descriptors does not stop the accept loop.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rtmp_proto::session::MediaKind;

#[test]
fn sigterm_tells_players_the_stream_ended_and_exits_cleanly() {
    let mut relay = RelayProcess::start(&["--shutdown-timeout-secs", "10"]);
    let mut publisher = Client::connect(relay.addr, "live");
    publisher.publish("bye");
    let mut player = Client::connect(relay.addr, "live");
    player.play("bye");
    publisher.send_headers();
    for seq in 0..10u32 {
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq == 0, 500));
    }
    publisher.flush();
    player.media(11, WAIT);

    let asked = Instant::now();
    relay.signal(libc::SIGTERM);
    let events = player.expect(
        |e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"),
        "UnpublishNotify on shutdown",
    );
    assert!(events.iter().any(Client::is_stream_eof), "StreamEOF before the notify");
    assert!(player.wait_closed(WAIT), "the server closes the player's connection");
    assert_eq!(relay.exit_code(WAIT), Some(0), "exit code after SIGTERM");
    // Everyone left politely, so the shutdown did not need its whole timeout.
    assert!(asked.elapsed() < Duration::from_secs(10), "took {:?}", asked.elapsed());
    assert!(
        std::net::TcpStream::connect_timeout(&relay.addr, Duration::from_secs(1)).is_err(),
        "no longer accepting"
    );
}

#[test]
fn a_second_signal_exits_at_once() {
    // A player that never reads, with megabytes queued for it, keeps the graceful shutdown
    // waiting (for its queue to drain) up to the whole timeout.
    let mut relay = RelayProcess::start(&["--shutdown-timeout-secs", "60"]);
    let mut publisher = Client::connect(relay.addr, "live");
    publisher.publish("stuck");
    let mut stalled = Client::connect(relay.addr, "live");
    stalled.play("stuck");
    publisher.send_headers();
    for seq in 0..100u32 {
        publisher.send(MediaKind::Video, seq * 10, &video_frame(seq, seq == 0, 240 * 1024));
    }
    publisher.flush();
    publisher.close();

    relay.signal(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(relay.exit_code(Duration::from_millis(200)), None, "still shutting down");
    let asked = Instant::now();
    relay.signal(libc::SIGINT);
    assert_eq!(relay.exit_code(WAIT), Some(130), "exit code after a second signal");
    assert!(asked.elapsed() < Duration::from_secs(10), "took {:?}", asked.elapsed());
    drop(stalled);
}

/// glommio does not contain a panic in a task: it would take its shard down and leave the rest
/// running. The binary aborts instead, with a log line, so a supervisor restarts it whole.
#[test]
fn a_panicking_connection_aborts_the_process_loudly() {
    let mut relay = RelayProcess::start(&["--debug-panic-on-key", "boom"]);
    let mut bystander = Client::connect(relay.addr, "live");
    bystander.publish("fine");
    let mut player = Client::connect(relay.addr, "live");
    player.request_play("boom");
    let log = relay.wait_for("the panic line", |log| log["fields"]["message"] == "panic: exiting");
    assert!(log["fields"]["panic"].as_str().is_some_and(|p| p.contains("on purpose")), "{log}");
    // SIGABRT: no exit code.
    assert_eq!(relay.exit_code(WAIT), Some(-1), "the process aborted");
    assert!(bystander.wait_closed(WAIT), "every connection went with it");
}

/// Connections that exhaust the process's descriptors make accept() fail (EMFILE) until some
/// close; the accept loop logs it, waits and serves again, instead of dying.
#[test]
fn the_accept_loop_survives_running_out_of_descriptors() {
    let relay = RelayProcess::start_with_file_limit(64, &["--shards", "1"]);
    let held: Vec<std::net::TcpStream> = (0..100)
        .filter_map(|_| std::net::TcpStream::connect_timeout(&relay.addr, WAIT).ok())
        .collect();
    let log = relay.wait_for("the accept error", |log| log["fields"]["message"] == "accept failed");
    assert!(log["fields"]["error"].as_str().is_some_and(|e| e.contains("open files")), "{log}");
    drop(held);

    let mut publisher = Client::connect(relay.addr, "live");
    publisher.publish("after-emfile");
    let mut player = Client::connect(relay.addr, "live");
    player.play("after-emfile");
    let frame = video_frame(1, true, 1000);
    publisher.send(MediaKind::Video, 0, &frame);
    publisher.flush();
    let media = player.media(2, WAIT);
    assert!(media.iter().any(|m| m.payload[..] == frame[..]), "a round trip after EMFILE");
}
