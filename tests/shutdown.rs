//! Graceful shutdown of the real binary: SIGTERM stops accepting, tells players the stream ended
//! (StreamEOF + UnpublishNotify), closes recordings and exits 0 within the shutdown timeout; a
//! second signal exits at once.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rtmp_proto::session::MediaKind;

/// The binary, killed if the test ends before it does.
struct Relay {
    child: Child,
    addr: SocketAddr,
}

impl Relay {
    fn start(extra: &[&str]) -> Relay {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rtmp-relay"))
            .args(["--listen", "127.0.0.1:0", "--no-http", "--shards", "2"])
            .args(["--log-format", "json", "--log-level", "info"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start rtmp-relay");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        // The JSON log line that says where it listens: {"fields":{"addr":"127.0.0.1:PORT",...
        let addr = loop {
            let line = lines.next().expect("rtmp-relay exited before listening").expect("log");
            let log: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
            if log["fields"]["message"] == "rtmp-relay listening" {
                let addr = log["fields"]["addr"].as_str().expect("addr field");
                break addr.parse().expect("socket address");
            }
        };
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Relay { child, addr }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits at most `limit` for the process to exit; its exit code.
    fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return Some(status.code().unwrap_or(-1));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sigterm_tells_players_the_stream_ended_and_exits_cleanly() {
    let mut relay = Relay::start(&["--shutdown-timeout-secs", "10"]);
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
    let mut relay = Relay::start(&["--shutdown-timeout-secs", "60"]);
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
