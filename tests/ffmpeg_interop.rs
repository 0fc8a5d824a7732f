//! Interop with real ffmpeg: ffmpeg publishes a generated H.264 + AAC stream, ffmpeg players
//! (one from the start, one joining late) decode it with no decoder errors, across shards.
//!
//! These need `ffmpeg` on PATH. `.ci/run` installs it; under CI a missing ffmpeg fails the
//! test instead of skipping it.

mod common;

use std::process::{Command, Output, Stdio};
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

fn publish(url: &str, seconds: u32) -> Reaped {
    publish_from(url, seconds, 0.0)
}

/// Publishes with every timestamp `offset_secs` on: what an encoder that stamps running or
/// wall-clock time sends. ffmpeg's FLV muxer still stamps the sequence headers 0.
fn publish_from(url: &str, seconds: u32, offset_secs: f64) -> Reaped {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-re"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k"])
        .args(["-output_ts_offset", &offset_secs.to_string(), "-f", "flv", url])
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

/// Waiting players and late joiners of streams that do not start at zero: ffmpeg stamps
/// `-output_ts_offset` on, with the sequence headers still at 0. Before the fix a player that
/// waited for the publish lost the first GOP (its lag was measured against the headers' 0).
/// One offset starts 100 s in, the other 2 s before the 24-bit extended-timestamp boundary.
#[test]
fn ffmpeg_players_decode_streams_on_any_time_base() {
    if !ffmpeg_available() {
        return;
    }
    let server = start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
    });
    for (key, offset) in [("offset100s", 100.0), ("extended", f64::from(0xff_ffff - 2000) / 1000.0)]
    {
        let owner = server.owner_of("live", key);
        let url_on = |shard: usize| {
            format!("rtmp://{}/live/{key}", server.shard_addr(shard).expect("shard"))
        };
        let before = server.counters().publishes;
        // Waiting before the publish, on the owner and on the other shard (a mirror).
        let waiting = [play(&url_on(owner)), play(&url_on(1 - owner))];
        std::thread::sleep(Duration::from_millis(500));
        let publisher = publish_from(&url_on(1 - owner), 6, offset);
        eventually("ffmpeg is publishing", || server.counters().publishes == before + 1);
        std::thread::sleep(Duration::from_secs(3));
        let late = play(&url_on(owner));
        let published = publisher.wait(Duration::from_secs(60));
        assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
        let [first, second] = waiting;
        for (name, player) in [("waiting", first), ("waiting on a mirror", second), ("late", late)]
        {
            let output = player.wait(Duration::from_secs(60));
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "{key}: {name} player failed: {stderr}");
            assert!(stderr.trim().is_empty(), "{key}: {name} player reported errors: {stderr}");
            let (video, audio) = decoded_frames(&output);
            eprintln!("{key}: {name} player decoded {video} video and {audio} audio frames");
            // 6 s at 25 fps is 150 video frames: a waiting player gets every one; losing the
            // first GOP (2 s) would leave 100. The late player starts at the last keyframe, ~3 s
            // in (fewer on a loaded machine, where ffmpeg itself starts late).
            let min_video = if name == "late" { 40 } else { 150 };
            assert!(video >= min_video, "{key}: {name}: {video} video frames decoded");
            assert!(audio >= min_video, "{key}: {name}: {audio} audio frames decoded");
        }
    }
    let counters = server.counters();
    assert_eq!((counters.messages_dropped, counters.skip_to_keyframe), (0, 0));
}

/// A player's demuxer sees exactly the publisher's tracks. Before the fix, a late joiner got
/// onMetaData re-stamped to the cached GOP's time, and FFmpeg's FLV demuxer made it a `text`
/// subtitle track (it skips onMetaData only at timestamp 0).
#[test]
fn ffprobe_sees_only_the_tracks_ffmpeg_published() {
    if !ffmpeg_available() {
        return;
    }
    let server = start_server(|_| {});
    let url = format!("rtmp://{}/live/tracks", server.local_addr());
    let waiting = Command::new("ffprobe")
        .args(["-hide_banner", "-v", "error", "-show_entries", "stream=codec_type"])
        .args(["-of", "csv=p=0", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffprobe");
    let waiting = Reaped(Some(waiting));
    std::thread::sleep(Duration::from_millis(500));
    let publisher = publish_from(&url, 7, 100.0);
    eventually("ffmpeg is publishing", || server.counters().publishes == 1);
    // Past the first GOP (2 s), so the late joiners start from a cached GOP stamped > 0.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..2 {
        assert_eq!(probe_tracks(&url), ["audio", "video"], "late joiner");
    }
    let output = waiting.wait(Duration::from_secs(60));
    let mut tracks: Vec<String> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| l.trim().to_string()).collect();
    tracks.sort();
    assert_eq!(tracks, ["audio", "video"], "player waiting before the publish");
    drop(publisher);
}

/// FLV tags of a short H.264 + AAC file made by ffmpeg: (tag type, timestamp, body).
fn flv_tags(seconds: u32) -> Vec<(u8, u32, Vec<u8>)> {
    let path = std::env::temp_dir().join(format!("rtmp-relay-tags-{}.flv", std::process::id()));
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
        .args(["-t", &seconds.to_string()])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg");
    let output = wait_output(child, "ffmpeg", Duration::from_secs(60));
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let file = std::fs::read(&path).expect("FLV file");
    let _ = std::fs::remove_file(&path);
    let mut tags = Vec::new();
    let mut at = 9 + 4;
    while at + 11 <= file.len() {
        let size = u32::from_be_bytes([0, file[at + 1], file[at + 2], file[at + 3]]) as usize;
        let ts = u32::from_be_bytes([file[at + 7], file[at + 4], file[at + 5], file[at + 6]]);
        let body = file[at + 11..at + 11 + size].to_vec();
        tags.push((file[at], ts, body));
        at += 11 + size + 4;
    }
    tags
}

/// The same with a hand-made publisher that stamps everything, onMetaData included, on a clock
/// 100 s in (the relay passes metadata on at 0): players see only its audio and video.
#[test]
fn ffprobe_sees_only_the_tracks_a_hand_made_publisher_sent() {
    if !ffmpeg_available() {
        return;
    }
    use rtmp_proto::session::MediaKind;
    let tags = flv_tags(8);
    let server = start_server(|_| {});
    let addr = server.local_addr();
    let publishing = std::thread::spawn(move || {
        let mut publisher = Client::connect(addr, "live");
        assert_eq!(publisher.publish("handmade"), "NetStream.Publish.Start");
        let base = 100_000;
        let stream_id = publisher.stream_id;
        publisher.session().send_metadata_at(stream_id, base, &metadata());
        let started = std::time::Instant::now();
        for (kind, ts, body) in &tags {
            let kind = match kind {
                8 => MediaKind::Audio,
                9 => MediaKind::Video,
                _ => continue, // ffmpeg's own onMetaData: ours was sent above
            };
            // Real time, as an encoder sends.
            let due = Duration::from_millis(u64::from(*ts));
            std::thread::sleep(due.saturating_sub(started.elapsed()));
            publisher.send(kind, base + ts, body);
        }
        publisher.close();
    });
    eventually("publishing", || server.counters().publishes == 1);
    std::thread::sleep(Duration::from_secs(3));
    let url = format!("rtmp://{addr}/live/handmade");
    assert_eq!(probe_tracks(&url), ["audio", "video"]);
    publishing.join().expect("publisher thread");
}
