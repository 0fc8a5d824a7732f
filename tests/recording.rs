//! FLV recording, end to end on real media: ffmpeg encodes a short H.264 + AAC clip to FLV, the
//! test replays its tags as relayed frames into a `Recorder` running on a glommio executor, and
//! ffprobe/ffmpeg judge the file that comes out.
//!
//! Covered: ffprobe reads both streams with the right codecs and duration; the recorded packets
//! are the published ones (ffmpeg framemd5 with `-c copy`); segments start on keyframes and
//! together hold every packet; hostile keys are refused and nothing is written outside the
//! record dir; an unwritable dir, a full disk (RLIMIT_FSIZE) and a disk that does not keep up
//! stop the recording, counted, without stopping the caller; `kill -9` leaves a readable file;
//! a republish gets a new file.
//!
//! These need `ffmpeg` and `ffprobe` on PATH. `.ci/run` installs them; under CI a missing
//! ffmpeg fails the tests instead of skipping them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use glommio::{LocalExecutorBuilder, Placement};
use rtmp_proto::amf0::{Amf0Value, AmfLimits};
use rtmp_proto::chunk::ChunkEncoder;
use rtmp_proto::session::MediaKind;
use rtmp_proto::time::RtmpTimestamp;
use rtmp_relay::record::{
    flv, RecordConfig, RecordCounters, RecordError, Recorder, RecordingSummary,
};
use rtmp_relay::stream::{Frame, FrameClass};

/// Seconds of media in the test clip, and its keyframe interval (frames at 25 fps).
const CLIP_SECS: u32 = 4;
const GOP: u32 = 25;
/// Set in the environment of a re-executed test binary to run one of the child halves.
const CHILD_ENV: &str = "RTMP_RELAY_RECORDING_CHILD";

fn ffmpeg_available() -> bool {
    let found = ["ffmpeg", "ffprobe"].iter().all(|tool| {
        Command::new(tool)
            .arg("-version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "ffmpeg and ffprobe are required under CI (install them: apt-get install ffmpeg)"
        );
        eprintln!("ffmpeg/ffprobe not found: skipping recording test (CI installs them)");
    }
    found
}

fn init_logs() {
    let filter = std::env::var("RTMP_RELAY_TEST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

/// A fresh directory under Cargo's per-target test tmpdir, removed when dropped.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> TestDir {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("recording-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("create test dir");
        TestDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("RTMP_RELAY_KEEP_RECORDINGS").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The ffmpeg-encoded source clip (made once per test process): 320x240 testsrc at 25 fps,
/// H.264 with a keyframe every second, and a 440 Hz sine in AAC.
fn source_clip() -> &'static Path {
    static CLIP: OnceLock<PathBuf> = OnceLock::new();
    CLIP.get_or_init(|| {
        if let Some(path) = std::env::var_os("RTMP_RELAY_RECORDING_SOURCE") {
            return PathBuf::from(path);
        }
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = tmp.join("recording-source.flv");
        if path.exists() {
            return path;
        }
        // Made under a name of our own and renamed, so concurrent test runs never see half.
        let partial = tmp.join(format!("recording-source-{}.flv", std::process::id()));
        let output = Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
            .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
            .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100"])
            .args(["-t", &CLIP_SECS.to_string()])
            .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", &GOP.to_string()])
            .args(["-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv"])
            .arg(&partial)
            .output()
            .expect("run ffmpeg");
        assert!(
            output.status.success(),
            "ffmpeg could not make the source clip: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        std::fs::rename(&partial, &path).expect("move the source clip into place");
        path
    })
}

/// One FLV tag: type (8, 9, 18), timestamp, body.
#[derive(Debug, Clone, PartialEq)]
struct Tag {
    tag_type: u8,
    timestamp: u32,
    body: Bytes,
}

/// Parses an FLV file strictly: the header, and every tag with the `PreviousTagSize` that must
/// follow it. Returns the tags and whether the file ended exactly after a tag.
fn parse_flv(data: &[u8]) -> (Vec<Tag>, bool) {
    assert!(data.len() >= 13, "FLV shorter than its header");
    assert_eq!(&data[..4], b"FLV\x01", "FLV signature");
    assert_eq!(&data[5..13], &[0, 0, 0, 9, 0, 0, 0, 0], "header size and PreviousTagSize0");
    let data = Bytes::copy_from_slice(data);
    let mut tags = Vec::new();
    let mut at = 13;
    while at + 11 <= data.len() {
        let header: [u8; 11] = data[at..at + 11].try_into().expect("11 bytes");
        let len = flv::tag_data_len(&header);
        if at + 11 + len + 4 > data.len() {
            return (tags, false);
        }
        let prev = u32::from_be_bytes(data[at + 11 + len..at + 15 + len].try_into().expect("4"));
        assert_eq!(prev as usize, 11 + len, "PreviousTagSize of the tag at byte {at}");
        assert_eq!(&header[8..11], &[0, 0, 0], "stream id of the tag at byte {at}");
        tags.push(Tag {
            tag_type: header[0],
            timestamp: flv::tag_timestamp(&header),
            body: data.slice(at + 11..at + 11 + len),
        });
        at += 15 + len;
    }
    (tags, at == data.len())
}

fn read_flv(path: &Path) -> Vec<Tag> {
    let data = std::fs::read(path).expect("read FLV");
    let (tags, complete) = parse_flv(&data);
    assert!(complete, "{} ends inside a tag", path.display());
    tags
}

/// The clip's tags as the relay would carry them: `onMetaData` (as `@setDataFrame` unwrapped)
/// is metadata, the rest audio and video.
fn source_frames() -> Vec<Frame> {
    let encoder = ChunkEncoder::new(4096);
    read_flv(source_clip())
        .into_iter()
        .map(|tag| {
            let kind = match tag.tag_type {
                8 => MediaKind::Audio,
                9 => MediaKind::Video,
                _ => MediaKind::Data,
            };
            let metadata = kind == MediaKind::Data;
            Frame::new(kind, RtmpTimestamp(tag.timestamp), tag.body, metadata, &encoder)
        })
        .collect()
}

/// Runs `body` on a fresh glommio executor with a small `io_memory`, like a shard's.
fn on_executor<T, F, Fut>(body: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    init_logs();
    LocalExecutorBuilder::new(Placement::Unbound)
        .io_memory(64 * 1024)
        .spawn(move || async move { body().await })
        .expect("start executor")
        .join()
        .expect("executor thread")
}

fn config(dir: &Path) -> RecordConfig {
    let config =
        RecordConfig { flush_interval: Duration::from_millis(100), ..RecordConfig::new(dir) };
    config.validate().expect("valid record config");
    config
}

/// Records `frames` as the stream live/`key` and returns the summary and the counters.
fn record(
    config: RecordConfig,
    key: &'static str,
    frames: Vec<Frame>,
) -> (Result<RecordingSummary, RecordError>, rtmp_relay::record::RecordCountersSnapshot) {
    on_executor(move || async move {
        let counters = Rc::new(RecordCounters::default());
        let mut recorder =
            Recorder::start(Rc::new(config), counters.clone(), "live", key, SystemTime::now())
                .expect("recorder starts");
        for (i, frame) in frames.iter().enumerate() {
            recorder.write(frame);
            if i % 16 == 0 {
                // Let the writer run now and then, as a shard between publisher reads would.
                glommio::yield_if_needed().await;
                glommio::executor().yield_task_queue_now().await;
            }
        }
        let result = recorder.finish().await;
        (result, counters.snapshot())
    })
}

/// `ffprobe -of flat` entries of `path` as (key, value) pairs. ffprobe must succeed, and say
/// nothing on stderr unless `tolerate_warnings` (a file cut by `kill -9` may end mid-tag).
fn ffprobe_with(
    path: &Path,
    entries: &str,
    extra: &[&str],
    tolerate_warnings: bool,
) -> Vec<(String, String)> {
    let output = Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", entries, "-of", "flat"])
        .args(extra)
        .arg(path)
        .output()
        .expect("run ffprobe");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "ffprobe {}: {stderr}", path.display());
    assert!(
        tolerate_warnings || stderr.trim().is_empty(),
        "ffprobe complained about {}: {stderr}",
        path.display()
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            Some((key.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect()
}

fn ffprobe(path: &Path, entries: &str, extra: &[&str]) -> Vec<(String, String)> {
    ffprobe_with(path, entries, extra, false)
}

/// (codec_type, codec_name) of each stream, and the container duration in seconds.
fn probe_streams(path: &Path) -> (Vec<(String, String)>, f64) {
    probe_streams_with(path, false)
}

fn probe_streams_with(path: &Path, tolerate_warnings: bool) -> (Vec<(String, String)>, f64) {
    let entries =
        ffprobe_with(path, "stream=codec_type,codec_name:format=duration", &[], tolerate_warnings);
    let mut streams: Vec<(String, String)> = Vec::new();
    let mut duration = 0.0;
    for (key, value) in &entries {
        if let Some(rest) = key.strip_prefix("streams.stream.") {
            let (index, field) = rest.split_once('.').expect("stream field");
            let index: usize = index.parse().expect("stream index");
            if streams.len() <= index {
                streams.resize(index + 1, Default::default());
            }
            match field {
                "codec_type" => streams[index].0 = value.clone(),
                "codec_name" => streams[index].1 = value.clone(),
                _ => {}
            }
        } else if key == "format.duration" {
            duration = value.parse().expect("duration");
        }
    }
    streams.sort();
    (streams, duration)
}

/// `ffmpeg -c copy -f framemd5` of `path`: one line per packet (stream, dts, pts, duration,
/// size, md5 of the packet bytes).
fn packet_hashes(path: &Path) -> Vec<String> {
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i"])
        .arg(path)
        .args(["-map", "0", "-c", "copy", "-f", "framemd5", "-"])
        .output()
        .expect("run ffmpeg");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "framemd5 of {}: {stderr}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

/// The `duration` (s) and `filesize` our `onMetaData` says.
fn metadata_numbers(tags: &[Tag]) -> (f64, f64) {
    let first = &tags[0];
    assert_eq!(first.tag_type, 18, "the first tag is onMetaData");
    let props = flv::metadata_properties(&first.body, &AmfLimits::default()).expect("onMetaData");
    let number = |name: &str| match props.iter().find(|(k, _)| k == name) {
        Some((_, Amf0Value::Number(n))) => *n,
        other => panic!("onMetaData {name}: {other:?}"),
    };
    (number("duration"), number("filesize"))
}

#[test]
fn recording_is_a_valid_flv_that_ffprobe_reads_with_both_streams() {
    if !ffmpeg_available() {
        return;
    }
    let dir = TestDir::new("valid");
    let frames = source_frames();
    let published_ms = frames.iter().map(|f| f.timestamp.value()).max().expect("frames");
    let (result, counters) = record(config(dir.path()), "cam1", frames);
    let summary = result.expect("recording finishes cleanly");
    assert_eq!(summary.paths.len(), 1);
    let path = &summary.paths[0];
    assert!(path.starts_with(dir.path().join("live")), "{}", path.display());
    let name = path.file_name().and_then(|n| n.to_str()).expect("file name");
    assert!(name.starts_with("cam1-") && name.ends_with("-000.flv"), "{name}");

    // Our own strict parse: header, PreviousTagSizes, head of the file, time line.
    let tags = read_flv(path);
    let data_len = std::fs::metadata(path).expect("stat").len();
    assert_eq!(summary.bytes, data_len);
    assert_eq!(counters.recording_bytes, data_len);
    assert_eq!(std::fs::read(path).expect("read")[4], 0x05, "header flags: audio and video");
    let kinds: Vec<u8> = tags.iter().take(3).map(|t| t.tag_type).collect();
    assert_eq!(kinds, [18, 9, 8], "onMetaData, then the video and audio sequence headers");
    assert!(tags.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "monotonic timestamps");
    assert_eq!(tags[0].timestamp, 0);
    let (duration, filesize) = metadata_numbers(&tags);
    assert_eq!(filesize as u64, data_len, "onMetaData filesize fixed up on close");
    assert!(
        (duration * 1000.0 - f64::from(published_ms)).abs() < 1.0,
        "onMetaData duration {duration} s for {published_ms} ms published"
    );
    assert_eq!(summary.duration_ms, published_ms);

    let (streams, probed) = probe_streams(path);
    assert_eq!(
        streams,
        [("audio".to_owned(), "aac".to_owned()), ("video".to_owned(), "h264".to_owned())]
    );
    let (_, source_duration) = probe_streams(source_clip());
    assert!(
        (probed - source_duration).abs() <= source_duration * 0.05,
        "ffprobe duration {probed} s vs {source_duration} s published"
    );
    assert_eq!(counters.recordings_started, 1);
    assert_eq!(counters.recordings_finished, 1);
    assert_eq!(counters.files_opened, 1);
    assert_eq!(counters.recording_errors, 0);
    assert_eq!(counters.recordings_active, 0);
}

#[test]
fn recorded_packets_equal_the_published_packets() {
    if !ffmpeg_available() {
        return;
    }
    let dir = TestDir::new("framemd5");
    let (result, _) = record(config(dir.path()), "md5", source_frames());
    let summary = result.expect("recording finishes cleanly");
    let published = packet_hashes(source_clip());
    let recorded = packet_hashes(&summary.paths[0]);
    assert!(published.len() > 250, "{} packets published", published.len());
    assert_eq!(recorded.len(), published.len(), "packet count");
    for (i, (r, p)) in recorded.iter().zip(&published).enumerate() {
        assert_eq!(r, p, "packet {i}");
    }
}

/// Video packets of `path` as (pts in s, is keyframe), in order.
fn video_packets(path: &Path) -> Vec<(f64, bool)> {
    let entries = ffprobe(path, "packet=pts_time,flags", &["-select_streams", "v"]);
    let mut packets: Vec<(f64, bool)> = Vec::new();
    for (key, value) in entries {
        let Some(rest) = key.strip_prefix("packets.packet.") else { continue };
        let (index, field) = rest.split_once('.').expect("packet field");
        let index: usize = index.parse().expect("packet index");
        if packets.len() <= index {
            packets.resize(index + 1, (0.0, false));
        }
        match field {
            "pts_time" => packets[index].0 = value.parse().unwrap_or(-1.0),
            "flags" => packets[index].1 = value.starts_with('K'),
            _ => {}
        }
    }
    packets
}

#[test]
fn segments_start_on_keyframes_and_hold_every_packet() {
    if !ffmpeg_available() {
        return;
    }
    let source_video_start = video_packets(source_clip())[0].0;
    // The clip is about 120 KB in four 1 s GOPs: 1 s segments give four files, 64 KiB ones two.
    for (name, segment_secs, segment_bytes, at_least) in
        [("time", Some(1), None, 4), ("size", None, Some(64 * 1024), 2)]
    {
        let dir = TestDir::new(&format!("segments-{name}"));
        let config = RecordConfig { segment_secs, segment_bytes, ..config(dir.path()) };
        config.validate().expect("valid");
        let (result, counters) = record(config, "seg", source_frames());
        let summary = result.expect("recording finishes cleanly");
        assert!(summary.paths.len() >= at_least, "{name}: {} segments", summary.paths.len());
        assert_eq!(counters.files_opened as usize, summary.paths.len());
        let mut video = 0;
        let mut audio = 0;
        for (index, path) in summary.paths.iter().enumerate() {
            let file = path.file_name().and_then(|n| n.to_str()).expect("name");
            assert!(file.ends_with(&format!("-{index:03}.flv")), "{file}");
            let tags = read_flv(path);
            assert_eq!(tags[0].tag_type, 18, "{file}: starts with onMetaData");
            let (duration, filesize) = metadata_numbers(&tags);
            assert_eq!(filesize as u64, std::fs::metadata(path).expect("stat").len());
            assert!(duration > 0.0, "{file}: duration fixed up");
            let packets = video_packets(path);
            assert!(packets[0].1, "{file}: first video packet is a keyframe");
            // The first file starts where the publisher did (its audio may lead the video);
            // later ones start at their cut keyframe.
            let start = if index == 0 { source_video_start } else { 0.0 };
            assert!(
                (packets[0].0 - start).abs() < 0.001,
                "{file}: video starts at {}, not {start}",
                packets[0].0
            );
            let (streams, _) = probe_streams(path);
            assert_eq!(streams.len(), 2, "{file}: both streams in every segment");
            video += tags.iter().filter(|t| t.tag_type == 9 && t.body.get(1) == Some(&1)).count();
            audio += tags.iter().filter(|t| t.tag_type == 8 && t.body.get(1) == Some(&1)).count();
        }
        let source = read_flv(source_clip());
        let source_video =
            source.iter().filter(|t| t.tag_type == 9 && t.body.get(1) == Some(&1)).count();
        let source_audio =
            source.iter().filter(|t| t.tag_type == 8 && t.body.get(1) == Some(&1)).count();
        assert_eq!((video, audio), (source_video, source_audio), "{name}: every frame, once");
    }
}

#[test]
fn hostile_keys_are_refused_and_nothing_leaves_the_record_dir() {
    let outer = TestDir::new("traversal");
    let dir = outer.path().join("records");
    let config = config(&dir);
    let frames = synthetic_frames(20);
    let outcomes = on_executor(move || async move {
        let counters = Rc::new(RecordCounters::default());
        let config = Rc::new(config);
        let long = "k".repeat(300);
        let mut refused = Vec::new();
        for key in [
            "../escape",
            "../../etc/cron.d/x",
            "a/b",
            "/abs",
            "..",
            ".",
            ".hidden",
            "nul\0byte",
            "new\nline",
            "back\\slash",
            "",
            long.as_str(),
        ] {
            match Recorder::start(config.clone(), counters.clone(), "live", key, SystemTime::now())
            {
                Err(RecordError::UnsafeKey(_)) => refused.push(key.len()),
                Err(e) => panic!("{key:?}: unexpected error {e}"),
                Ok(_) => panic!("{key:?} was accepted"),
            }
        }
        for app in ["..", "a/b"] {
            let started =
                Recorder::start(config.clone(), counters.clone(), app, "k", SystemTime::now());
            assert!(matches!(started, Err(RecordError::UnsafeKey(_))), "app {app:?}");
        }
        // Odd but harmless: made safe and recorded.
        let mut recorder = Recorder::start(
            config.clone(),
            counters.clone(),
            "live",
            "my key?é",
            SystemTime::now(),
        )
        .expect("made safe");
        for frame in &frames {
            recorder.write(frame);
        }
        let summary = recorder.finish().await.expect("recorded");
        (refused.len(), counters.snapshot(), summary)
    });
    let (refused, counters, summary) = outcomes;
    assert_eq!(refused, 12);
    assert_eq!(counters.unsafe_keys_refused, 14);
    assert_eq!(counters.recordings_started, 1);
    assert_eq!(summary.paths.len(), 1);
    let name = summary.paths[0].file_name().and_then(|n| n.to_str()).expect("name");
    assert!(name.starts_with("my_key__-"), "{name}");
    // The only thing under the outer dir is the record dir, holding only live/<that file>.
    let outer_entries: Vec<_> = std::fs::read_dir(outer.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(outer_entries, [std::ffi::OsString::from("records")]);
    let apps: Vec<_> =
        std::fs::read_dir(&dir).expect("list").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(apps, [std::ffi::OsString::from("live")]);
    let files: Vec<_> = std::fs::read_dir(dir.join("live"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files, summary.paths);
}

/// Small synthetic H.264/AAC-shaped frames: `n` video frames at 25 fps (a keyframe every 25)
/// with audio between them, behind sequence headers. Enough for paths and error handling.
fn synthetic_frames(n: u32) -> Vec<Frame> {
    synthetic_frames_sized(n, 600)
}

fn synthetic_frames_sized(n: u32, video_bytes: usize) -> Vec<Frame> {
    let encoder = ChunkEncoder::new(4096);
    let frame = |kind, ts, body: Vec<u8>| {
        Frame::new(kind, RtmpTimestamp(ts), Bytes::from(body), false, &encoder)
    };
    let mut frames = vec![
        frame(MediaKind::Video, 0, vec![0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff]),
        frame(MediaKind::Audio, 0, vec![0xaf, 0, 0x12, 0x10]),
    ];
    for i in 0..n {
        let ts = i * 40;
        let mut video = vec![if i % GOP == 0 { 0x17 } else { 0x27 }, 1, 0, 0, 0];
        video.resize(video_bytes, i as u8);
        frames.push(frame(MediaKind::Video, ts, video));
        frames.push(frame(MediaKind::Audio, ts + 20, vec![0xaf, 1, i as u8, 0x21]));
    }
    frames
}

#[test]
fn an_unwritable_record_dir_stops_the_recording_not_the_caller() {
    let dir = TestDir::new("unwritable");
    // A regular file where the record dir should be: fails for root too.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"x").expect("create file");
    let frames = synthetic_frames(100);
    let (result, counters) = record(config(&not_a_dir), "k", frames.clone());
    match result {
        Err(RecordError::Io(e)) => {
            assert!(e.to_string().contains("file"), "the error names the path: {e}")
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(counters.recording_errors, 1);
    assert_eq!(counters.recordings_finished, 0);
    assert_eq!(counters.recordings_active, 0);

    // Permissions only stop non-root users.
    if unsafe_geteuid() != 0 {
        use std::os::unix::fs::PermissionsExt;
        let read_only = dir.path().join("read-only");
        std::fs::create_dir(&read_only).expect("mkdir");
        std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o500))
            .expect("chmod");
        let (result, counters) = record(config(&read_only), "k", frames);
        assert!(matches!(result, Err(RecordError::Io(_))), "{result:?}");
        assert_eq!(counters.recording_errors, 1);
        let _ = std::fs::set_permissions(&read_only, std::fs::Permissions::from_mode(0o700));
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

#[test]
fn a_disk_that_cannot_keep_up_stops_the_recording_not_the_caller() {
    let dir = TestDir::new("overflow");
    let config = RecordConfig { buffer_bytes: 256 * 1024, ..config(dir.path()) };
    // 2 MiB of frames handed over without yielding: the writer cannot drain in between, as
    // with a disk that stalls.
    let frames = synthetic_frames_sized(200, 10_000);
    let (result, counters, writes_after) = on_executor(move || async move {
        let counters = Rc::new(RecordCounters::default());
        let mut recorder =
            Recorder::start(Rc::new(config), counters.clone(), "live", "slow", SystemTime::now())
                .expect("starts");
        let started = Instant::now();
        for frame in &frames {
            recorder.write(frame);
        }
        assert!(recorder.has_failed());
        let elapsed = started.elapsed();
        (recorder.finish().await, counters.snapshot(), elapsed)
    });
    assert!(
        matches!(result, Err(RecordError::Overflow { limit: 262_144, .. })),
        "expected an overflow, got {result:?}"
    );
    assert_eq!(counters.recording_errors, 1);
    assert!(writes_after < Duration::from_secs(1), "writes stayed cheap: {writes_after:?}");
    // What was written before the overflow is a readable file (nothing at all here, since the
    // writer never ran: the file is opened on the writer's first turn).
    for entry in std::fs::read_dir(dir.path().join("live")).into_iter().flatten() {
        let path = entry.expect("entry").path();
        parse_flv(&std::fs::read(&path).expect("read"));
    }
}

#[test]
fn a_republish_on_the_same_key_gets_a_new_file() {
    let dir = TestDir::new("republish");
    let config = config(dir.path());
    let frames = synthetic_frames(30);
    let started = SystemTime::now();
    let summaries = on_executor(move || async move {
        let counters = Rc::new(RecordCounters::default());
        let config = Rc::new(config);
        let mut summaries = Vec::new();
        // The same second, so the same rendered name: the second must not overwrite the first.
        for _ in 0..2 {
            let mut recorder =
                Recorder::start(config.clone(), counters.clone(), "live", "again", started)
                    .expect("starts");
            for frame in &frames {
                recorder.write(frame);
            }
            summaries.push(recorder.finish().await.expect("finishes"));
        }
        summaries
    });
    let first = &summaries[0].paths[0];
    let second = &summaries[1].paths[0];
    assert_ne!(first, second);
    let second_name = second.file_name().and_then(|n| n.to_str()).expect("name");
    assert!(second_name.ends_with("-000-1.flv"), "{second_name}");
    for path in [first, second] {
        let tags = read_flv(path);
        assert_eq!(tags.iter().filter(|t| t.tag_type == 9).count(), 31, "{}", path.display());
    }
}

#[test]
fn a_recorder_dropped_without_finish_still_closes_its_file() {
    let dir = TestDir::new("dropped");
    let config = config(dir.path());
    let frames = synthetic_frames(50);
    let counters = on_executor(move || async move {
        let counters = Rc::new(RecordCounters::default());
        let mut recorder =
            Recorder::start(Rc::new(config), counters.clone(), "live", "gone", SystemTime::now())
                .expect("starts");
        for frame in &frames {
            recorder.write(frame);
        }
        drop(recorder);
        // The detached writer finishes on its own.
        let deadline = Instant::now() + Duration::from_secs(10);
        while counters.recordings_active.get() != 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        counters.snapshot()
    });
    assert_eq!(counters.recordings_finished, 1);
    let files: Vec<_> = std::fs::read_dir(dir.path().join("live"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1);
    let tags = read_flv(&files[0]);
    let (duration, filesize) = metadata_numbers(&tags);
    assert_eq!(filesize as u64, std::fs::metadata(&files[0]).expect("stat").len());
    assert!((duration - 1.98).abs() < 0.001, "duration {duration}");
}

// ------------------------------------------------------------------------------------------
// Tests that need a process of their own: the test binary runs itself again with CHILD_ENV
// set, and the `#[ignore]`d child test does the part that must not touch this process
// (a file size limit, a SIGKILL).
// ------------------------------------------------------------------------------------------

fn run_child(test: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args([test, "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env("RTMP_RELAY_RECORDING_SOURCE", source_clip())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test")
}

/// The file size limit (bytes) the disk-full child runs under.
const FSIZE_LIMIT: u64 = 96 * 1024;

#[test]
fn a_full_disk_stops_the_recording_and_leaves_a_readable_file() {
    if !ffmpeg_available() {
        return;
    }
    let dir = TestDir::new("disk-full");
    let output = run_child("disk_full_child", dir.path()).wait_with_output().expect("child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "the child test ran:\n{stdout}");
    let files: Vec<_> = std::fs::read_dir(dir.path().join("live"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1);
    let size = std::fs::metadata(&files[0]).expect("stat").len();
    assert!(size <= FSIZE_LIMIT, "{size} bytes");
    // Cut back to whole tags, with metadata saying so, and readable.
    let tags = read_flv(&files[0]);
    assert!(tags.len() > 10, "{} tags", tags.len());
    let (_, filesize) = metadata_numbers(&tags);
    assert_eq!(filesize as u64, size);
    let (streams, _) = probe_streams(&files[0]);
    assert_eq!(streams.len(), 2, "{streams:?}");
}

#[test]
#[ignore = "child half of a_full_disk_stops_the_recording_and_leaves_a_readable_file"]
fn disk_full_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    // Writes past FSIZE_LIMIT fail with EFBIG, as writes to a full disk fail with ENOSPC. Only
    // the soft limit, and only while recording: this process writes files of its own at exit
    // (a coverage build its profile, which the limit would cut to FSIZE_LIMIT bytes).
    let mut before = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain libc calls on values we own; SIG_IGN keeps SIGXFSZ from killing us.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut before), 0, "getrlimit");
        let limit = libc::rlimit { rlim_cur: FSIZE_LIMIT, rlim_max: before.rlim_max };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0, "setrlimit");
    }
    let config = config(Path::new(&dir));
    let (result, counters) = record(config, "full", source_frames());
    // SAFETY: as above; raising the soft limit back to where it was is always allowed.
    unsafe {
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &before), 0, "restore the limit");
    }
    match result {
        Err(RecordError::Io(e)) => eprintln!("recording stopped as expected: {e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
    assert_eq!(counters.recording_errors, 1);
    assert_eq!(counters.recordings_active, 0);
}

#[test]
fn kill_9_leaves_a_readable_file() {
    if !ffmpeg_available() {
        return;
    }
    let dir = TestDir::new("kill9");
    let mut child = run_child("kill_9_child", dir.path());
    // Let it record about 3 s of real-time media (flush interval 200 ms), then SIGKILL it.
    let live = dir.path().join("live");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut file = None;
    while Instant::now() < deadline {
        if let Some(path) = std::fs::read_dir(&live)
            .ok()
            .and_then(|mut entries| entries.next())
            .and_then(|e| e.ok())
            .map(|e| e.path())
        {
            file = Some(path);
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("child exited early: {status}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let file = file.expect("the child started a recording");
    std::thread::sleep(Duration::from_secs(3));
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert!(!status.success(), "killed, not exited: {status}");

    let data = std::fs::read(&file).expect("read");
    let (tags, _) = parse_flv(&data);
    let last = tags.iter().map(|t| t.timestamp).max().unwrap_or(0);
    // About 3 s were fed; all but the last flush interval (and scheduling slack) must be there.
    assert!(last >= 2_000, "only {last} ms survived");
    let (duration, filesize) = metadata_numbers(&tags);
    assert!(duration >= 1.5, "metadata duration {duration} refreshed while recording");
    assert!(filesize >= 10_000.0 && filesize <= data.len() as f64, "filesize {filesize}");
    let (streams, probed) = probe_streams_with(&file, true);
    assert_eq!(
        streams,
        [("audio".to_owned(), "aac".to_owned()), ("video".to_owned(), "h264".to_owned())]
    );
    assert!(probed >= 1.5, "ffprobe duration {probed}");
}

#[test]
#[ignore = "child half of kill_9_leaves_a_readable_file"]
fn kill_9_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let config = RecordConfig {
        flush_interval: Duration::from_millis(200),
        ..RecordConfig::new(Path::new(&dir))
    };
    let frames = source_frames();
    on_executor(move || async move {
        let encoder = ChunkEncoder::new(4096);
        let counters = Rc::new(RecordCounters::default());
        let mut recorder =
            Recorder::start(Rc::new(config), counters, "live", "killed", SystemTime::now())
                .expect("starts");
        // Publish in real time, looping the clip, until the parent kills us.
        let started = Instant::now();
        let mut offset = 0u32;
        loop {
            for frame in &frames {
                let coded = matches!(
                    frame.class,
                    FrameClass::Keyframe | FrameClass::InterFrame | FrameClass::Audio
                );
                if offset > 0 && !coded {
                    continue;
                }
                let ts = frame.timestamp.value() + offset;
                let due = started + Duration::from_millis(u64::from(ts));
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    glommio::timer::sleep(wait).await;
                }
                recorder.write(&frame.restamped(RtmpTimestamp(ts), &encoder));
            }
            offset += CLIP_SECS * 1000 + 40;
        }
    })
}

// --- The server records what it relays ---------------------------------------------------------

mod common;

/// Every `.flv` file under `dir`, sorted.
fn flv_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read record dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "flv") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The packets of `path` without their timestamps: (stream, size, md5) per packet. A publish
/// through RTMP may shift every timestamp by a constant; the bytes must not change.
fn packet_bodies(path: &Path) -> Vec<String> {
    packet_hashes(path)
        .iter()
        .map(|line| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            format!("{},{},{}", fields[0], fields[fields.len() - 2], fields[fields.len() - 1])
        })
        .collect()
}

/// ffmpeg publishes the clip (`-re -c copy`) through the shard that does not own the key, to a
/// server started with a record dir, while an ffmpeg player on the owner decodes it. The
/// recording holds exactly the published packets, with the right codecs and duration, and the
/// player is unaffected.
#[test]
fn the_server_records_a_publish_while_a_player_watches() {
    if !ffmpeg_available() {
        return;
    }
    let dir = TestDir::new("server");
    let server = common::start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
        c.record_dir = Some(dir.path().to_owned());
        c.record_flush_ms = 100;
    });
    let owner = server.owner_of("live", "recorded");
    let url_on = |shard: usize| {
        format!("rtmp://{}/live/recorded", server.shard_addr(shard).expect("shard listener"))
    };
    let publisher = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-re", "-i"])
        .arg(source_clip())
        .args(["-c", "copy", "-f", "flv", &url_on(1 - owner)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg publisher");
    common::eventually("ffmpeg is publishing", || server.counters().publishes == 1);
    let player = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i", &url_on(owner)])
        .args(["-f", "framemd5", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg player");

    let published = common::wait_output(publisher, "the publisher", Duration::from_secs(60));
    assert!(published.status.success(), "{}", String::from_utf8_lossy(&published.stderr));
    let played = common::wait_output(player, "the player", Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&played.stderr);
    assert!(played.status.success() && stderr.trim().is_empty(), "player: {stderr}");
    let decoded =
        String::from_utf8_lossy(&played.stdout).lines().filter(|l| !l.starts_with('#')).count();
    // 4 s at 25 fps plus ~43 AAC frames a second; the player joins a moment after the start.
    assert!(decoded > 200, "the player decoded {decoded} frames");

    // The publisher left: its recording is finished in the background, with the server live.
    let http = server.http_addr().expect("control plane runs");
    common::eventually("the recording is closed after the publisher left", || {
        let metrics = common::Metrics::scrape(http);
        metrics.sum("rtmp_relay_recordings_started_total", &[]) == 1.0
            && metrics.sum("rtmp_relay_recordings_active", &[]) == 0.0
    });
    let metrics = common::Metrics::scrape(http);
    assert_eq!(metrics.sum("rtmp_relay_recording_errors_total", &[]), 0.0);
    let files = flv_files(dir.path());
    let recorded = std::fs::metadata(&files[0]).expect("recording").len() as f64;
    assert_eq!(metrics.sum("rtmp_relay_recording_bytes_total", &[]), recorded);
    server.shutdown();
    let files = flv_files(dir.path());
    assert_eq!(files.len(), 1, "one publish, one file: {files:?}");
    assert!(files[0].starts_with(dir.path().join("live")), "{files:?}");
    let (streams, duration) = probe_streams(&files[0]);
    assert_eq!(
        streams,
        [("audio".to_owned(), "aac".to_owned()), ("video".to_owned(), "h264".to_owned())]
    );
    let (_, expected) = probe_streams(source_clip());
    assert!((duration - expected).abs() <= expected * 0.05, "{duration} s for {expected} s");
    assert_eq!(packet_bodies(&files[0]), packet_bodies(source_clip()), "recorded packets");
}

/// A shutdown while a publisher is live closes its recording cleanly: the file ends exactly after
/// a tag and its `onMetaData` carries the final duration and size.
#[test]
fn a_shutdown_mid_publish_closes_the_recording() {
    let dir = TestDir::new("shutdown");
    let server = common::start_server(|c| {
        c.shards = Some(1);
        c.record_dir = Some(dir.path().to_owned());
    });
    let mut publisher = common::Client::connect(server.local_addr(), "live");
    publisher.publish("cut");
    publisher.send_metadata();
    publisher.send_headers();
    for seq in 0..50u32 {
        let timestamp = seq * 40;
        publisher.send(MediaKind::Video, timestamp, &common::video_frame(seq, seq % 25 == 0, 2000));
        publisher.send(MediaKind::Audio, timestamp, &common::audio_frame(seq));
    }
    publisher.flush();
    common::eventually("the frames arrived", || server.counters().messages_in >= 100);
    server.shutdown();

    let files = flv_files(dir.path());
    assert_eq!(files.len(), 1, "{files:?}");
    let data = std::fs::read(&files[0]).expect("read recording");
    let (tags, complete) = parse_flv(&data);
    assert!(complete, "the file ends exactly after a tag");
    assert_eq!(tags.iter().filter(|t| t.tag_type == 9).count(), 51, "video tags (header + 50)");
    let (duration, filesize) = metadata_numbers(&tags);
    assert!((duration - 1.96).abs() < 0.05, "onMetaData duration {duration}");
    assert_eq!(filesize, data.len() as f64, "onMetaData filesize");
    publisher.close();
}
