//! Interop with GStreamer: `flvmux ! rtmp2sink` publishes H.264 + AAC (rtmp2sink re-sends
//! onMetaData mid-stream without the `@setDataFrame` wrapper), and players see exactly its
//! tracks and decode them.
//!
//! These need `gst-launch-1.0` with the good, bad and ugly plugin sets, and ffmpeg, on PATH.
//! `.ci/run` installs them; under CI a missing one fails the test instead of skipping it.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

fn tools_available() -> bool {
    let found =
        [("gst-launch-1.0", "--version"), ("ffprobe", "-version")].iter().all(|(tool, flag)| {
            Command::new(tool).arg(flag).output().is_ok_and(|o| o.status.success())
        });
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "GStreamer and ffmpeg are required under CI (scripts/test.sh installs them)"
        );
        eprintln!("gst-launch-1.0 or ffprobe not found: skipping (CI installs them)");
    }
    found
}

/// A live 25 fps H.264 + AAC stream from GStreamer for `seconds`.
fn gstreamer_publish(url: &str, seconds: u32) -> Reaped {
    let buffers = (seconds * 25).to_string();
    let audio_buffers = (seconds * 43).to_string();
    let pipeline = format!(
        "videotestsrc is-live=true num-buffers={buffers} \
         ! video/x-raw,width=320,height=240,framerate=25/1 \
         ! x264enc tune=zerolatency key-int-max=50 speed-preset=ultrafast ! h264parse \
         ! flvmux name=mux streamable=true ! rtmp2sink location={url} \
         audiotestsrc is-live=true num-buffers={audio_buffers} ! voaacenc ! aacparse ! mux."
    );
    let child = Command::new("gst-launch-1.0")
        .arg("-q")
        .args(pipeline.split_whitespace())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gst-launch-1.0");
    Reaped(Some(child))
}

#[test]
fn ffprobe_sees_only_the_tracks_gstreamer_published() {
    if !tools_available() {
        return;
    }
    let server = start_server(|_| {});
    let url = format!("rtmp://{}/live/gst", server.local_addr());
    let publisher = gstreamer_publish(&url, 10);
    eventually("GStreamer is publishing", || server.counters().publishes == 1);
    // Past the first GOP and past rtmp2sink's mid-stream metadata.
    std::thread::sleep(Duration::from_secs(3));
    for _ in 0..2 {
        assert_eq!(probe_tracks(&url), ["audio", "video"]);
    }
    drop(publisher);
}
