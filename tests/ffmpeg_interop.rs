//! Interop with real ffmpeg: ffmpeg publishes a generated H.264 + AAC stream, ffmpeg players
//! (one from the start, one joining late) decode it with no decoder errors, across shards.
//!
//! These need `ffmpeg` on PATH. `.ci/run` installs it; under CI a missing ffmpeg fails the
//! test instead of skipping it.

mod common;

use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use common::*;

fn ffmpeg_available() -> bool {
    let found = Command::new("ffmpeg").arg("-version").stdout(Stdio::null()).status().is_ok();
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "ffmpeg is required under CI (install it: apt-get install ffmpeg)"
        );
        eprintln!("ffmpeg not found: skipping interop test (CI installs it)");
    }
    found
}

/// Kills the child if it outlives the test.
struct Reaped(Option<Child>);

impl Reaped {
    fn wait(mut self, limit: Duration) -> Output {
        wait_output(self.0.take().expect("child"), "ffmpeg", limit)
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn publish(url: &str, seconds: u32) -> Reaped {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg publisher");
    Reaped(Some(child))
}

/// Plays `url` until the publisher leaves, decoding every frame; framemd5 prints one line per
/// decoded frame, prefixed by the stream index.
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

/// (video frames, audio frames) decoded, from framemd5 output.
fn decoded_frames(output: &Output) -> (usize, usize) {
    let text = String::from_utf8_lossy(&output.stdout);
    let streams: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let count = |index: &str| streams.iter().filter(|l| l.split(',').next() == Some(index)).count();
    // ffmpeg numbers streams in the order it finds them; video is the larger count at 25 fps
    // versus ~43 AAC frames a second, so report both in that order.
    let (a, b) = (count("0"), count("1"));
    let header = text.lines().find(|l| l.starts_with("#media_type 0"));
    match header {
        Some(l) if l.contains("audio") => (b, a),
        _ => (a, b),
    }
}

#[test]
fn ffmpeg_publishes_and_ffmpeg_players_decode_including_a_late_joiner() {
    if !ffmpeg_available() {
        return;
    }
    // Two shards, placed so that every cross-shard path is taken: ffmpeg publishes through the
    // shard that does not own the key, the early player is on the owner, the late one on the
    // publisher's shard (a mirror).
    let server = start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
    });
    let owner = server.owner_of("live", "interop");
    let url_on = |shard: usize| {
        format!("rtmp://{}/live/interop", server.shard_addr(shard).expect("shard listener"))
    };
    let publisher = publish(&url_on(1 - owner), 8);
    eventually("ffmpeg is publishing", || server.counters().publishes == 1);
    let early = play(&url_on(owner));
    std::thread::sleep(Duration::from_secs(3));
    let late = play(&url_on(1 - owner));

    let published = publisher.wait(Duration::from_secs(60));
    assert!(
        published.status.success(),
        "publisher: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    for (name, player) in [("early", early), ("late", late)] {
        let output = player.wait(Duration::from_secs(60));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{name} player failed: {stderr}");
        assert!(stderr.trim().is_empty(), "{name} player reported errors: {stderr}");
        let (video, audio) = decoded_frames(&output);
        eprintln!("{name} player decoded {video} video and {audio} audio frames");
        // 8 s at 25 fps is 200 video frames; the late player joins about 3 s in, and with the
        // GOP cache starts at the last keyframe (at most 2 s earlier).
        let min_video = if name == "early" { 150 } else { 90 };
        assert!(video >= min_video, "{name}: {video} video frames decoded");
        assert!(audio >= min_video, "{name}: {audio} audio frames decoded");
    }
    let counters = server.counters();
    assert_eq!(counters.protocol_errors, 0);
    assert_eq!(counters.messages_dropped, 0);
}
