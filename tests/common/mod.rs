//! Test support: an in-process server on 127.0.0.1:0 and a blocking RTMP client built on
//! rtmp-proto's `ClientSession`, plus synthetic FLV payloads that carry a sequence number so
//! every relayed byte can be checked.
#![allow(dead_code)]

pub mod certs;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtmp_proto::amf0::Amf0Value;
use rtmp_proto::message::UserControlEvent;
use rtmp_proto::session::{ClientEvent, ClientSession, Media, MediaKind, SessionConfig};
use rtmp_proto::time::RtmpTimestamp;
use rtmp_relay::{Config, ServerHandle};

/// Generous: CI runs on two busy cores.
pub const WAIT: Duration = Duration::from_secs(20);

/// A real H.264 High 1280x720 AVC sequence header tag body (from ffmpeg/libx264).
pub const AVC_SEQUENCE_HEADER: &[u8] =
    include_bytes!("../../proto/tests/data/media_h264_high_720p_aac_video_seq.bin");
/// A real AAC-LC AudioSpecificConfig tag body.
pub const AAC_SEQUENCE_HEADER: &[u8] =
    include_bytes!("../../proto/tests/data/media_h264_high_720p_aac_audio_seq.bin");

/// Starts a server on an ephemeral loopback port with test-friendly settings.
pub fn start_server(configure: impl FnOnce(&mut Config)) -> ServerHandle {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("loopback address"),
        log_level: std::env::var("RTMP_RELAY_TEST_LOG").unwrap_or_else(|_| "warn".into()),
        http: "127.0.0.1:0".parse().expect("loopback address"),
        ..Config::default()
    };
    configure(&mut config);
    rtmp_relay::telemetry::init(&config.log_level, false);
    rtmp_relay::start(&config).expect("server starts")
}

/// An AVC video tag body: keyframe or inter frame, with `seq` and `len` filler bytes so that
/// content, order and size can all be checked at the receiver.
pub fn video_frame(seq: u32, keyframe: bool, len: usize) -> Vec<u8> {
    let mut body = vec![if keyframe { 0x17 } else { 0x27 }, 1, 0, 0, 0];
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend((0..len).map(|i| (i as u32).wrapping_add(seq) as u8));
    body
}

/// An AAC raw frame tag body carrying `seq`.
pub fn audio_frame(seq: u32) -> Vec<u8> {
    let mut body = vec![0xaf, 1];
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(&[0x21, 0x10, 0x04, 0x60, 0x8c, 0x1c]);
    body
}

/// The sequence number a synthetic frame carries.
pub fn seq_of(media: &Media) -> Option<u32> {
    let offset = match media.kind {
        MediaKind::Video => 5,
        MediaKind::Audio => 2,
        MediaKind::Data => return None,
    };
    let bytes = media.payload.get(offset..offset + 4)?;
    Some(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

pub fn metadata() -> Amf0Value {
    Amf0Value::EcmaArray(vec![
        ("width".into(), Amf0Value::Number(1280.0)),
        ("height".into(), Amf0Value::Number(720.0)),
        ("framerate".into(), Amf0Value::Number(30.0)),
        ("videocodecid".into(), Amf0Value::Number(7.0)),
        ("audiocodecid".into(), Amf0Value::Number(10.0)),
    ])
}

/// A blocking RTMP client for tests.
pub struct Client {
    socket: TcpStream,
    session: ClientSession,
    input: BytesMut,
    events: VecDeque<ClientEvent>,
    pub stream_id: u32,
    closed: bool,
}

impl Client {
    /// TCP connect + handshake + `connect(app)`.
    pub fn connect(addr: SocketAddr, app: &str) -> Client {
        let socket = TcpStream::connect(addr).expect("tcp connect");
        Client::connect_over(socket, addr, app)
    }

    /// Handshake + `connect(app)` over a socket the caller connected to `addr` (bound to a
    /// chosen source address, or with a small receive buffer).
    pub fn connect_over(socket: TcpStream, addr: SocketAddr, app: &str) -> Client {
        let mut client = Client::handshake_over(socket);
        client.session.set_chunk_size(4096);
        client.session.connect(app, &format!("rtmp://{addr}/{app}"));
        client.flush();
        client.expect(|e| matches!(e, ClientEvent::Connected), "connect result");
        client
    }

    /// Only the handshake: nothing of the chunk stream is sent yet, and both sides still use
    /// the default chunk size (128). Hostile tests write what follows by hand.
    pub fn handshake_over(socket: TcpStream) -> Client {
        socket.set_nodelay(true).expect("nodelay");
        let random: Vec<u8> = (0..3072u32).map(|i| (i * 7 + 3) as u8).collect();
        let session = ClientSession::new(SessionConfig::default(), 0, &random, true);
        let mut client = Client {
            socket,
            session,
            input: BytesMut::with_capacity(64 * 1024),
            events: VecDeque::new(),
            stream_id: 0,
            closed: false,
        };
        client.flush();
        client.expect(|e| matches!(e, ClientEvent::HandshakeDone), "handshake");
        client
    }

    /// This client's end of the connection: the peer address the server sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket.local_addr().expect("local address")
    }

    /// The protocol state, to send through it what the helpers here do not.
    pub fn session(&mut self) -> &mut ClientSession {
        &mut self.session
    }

    pub fn socket(&self) -> &TcpStream {
        &self.socket
    }

    pub fn flush(&mut self) {
        self.try_flush().expect("write to server");
    }

    /// Writes what the session has queued; an error (the server closed on us) is returned.
    pub fn try_flush(&mut self) -> std::io::Result<()> {
        while let Some(bytes) = self.session.poll_transmit() {
            self.socket.write_all(&bytes)?;
        }
        Ok(())
    }

    /// Writes `bytes` as they are, bypassing the session (hand-made chunks). Errors are
    /// returned: the server may well have closed the connection on the bytes before.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.try_flush()?;
        self.socket.write_all(bytes)
    }

    /// Reads once (up to `timeout`) and turns what arrived into events. False on timeout or EOF.
    fn pump(&mut self, timeout: Duration) -> bool {
        if self.closed {
            return false;
        }
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).expect("timeout");
        let mut buf = [0u8; 64 * 1024];
        match self.socket.read(&mut buf) {
            Ok(0) => {
                self.closed = true;
                false
            }
            Ok(n) => {
                self.input.extend_from_slice(&buf[..n]);
                self.session.handle_input(&mut self.input).expect("server speaks valid RTMP");
                while let Some(event) = self.session.poll_event() {
                    self.events.push_back(event);
                }
                // Acknowledgements and ping responses; a server that closed meanwhile is
                // seen on the next read.
                let _ = self.try_flush();
                true
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                false
            }
            Err(_) => {
                self.closed = true;
                false
            }
        }
    }

    /// The next event, waiting up to `timeout`.
    pub fn next_event(&mut self, timeout: Duration) -> Option<ClientEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(event);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || (!self.pump(left) && self.closed) {
                return self.events.pop_front();
            }
        }
    }

    /// Events up to and including the first that matches; panics after [`WAIT`].
    pub fn expect(
        &mut self,
        matches: impl Fn(&ClientEvent) -> bool,
        what: &str,
    ) -> Vec<ClientEvent> {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            if let Some(event) = self.next_event(deadline.saturating_duration_since(Instant::now()))
            {
                let done = matches(&event);
                seen.push(event);
                if done {
                    return seen;
                }
            } else if self.closed {
                break;
            }
        }
        panic!("timed out or closed waiting for {what}; saw {seen:?}");
    }

    /// True once the server closed the connection (waits up to `timeout`).
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.closed && Instant::now() < deadline {
            self.pump(Duration::from_millis(100));
            self.events.clear();
        }
        self.closed
    }

    pub fn create_stream(&mut self) -> u32 {
        self.session.create_stream();
        self.flush();
        let events =
            self.expect(|e| matches!(e, ClientEvent::StreamCreated { .. }), "createStream");
        match events.last() {
            Some(ClientEvent::StreamCreated { stream_id }) => *stream_id,
            _ => unreachable!(),
        }
    }

    /// createStream + publish; returns the status code the server answered with.
    pub fn publish(&mut self, key: &str) -> String {
        self.stream_id = self.create_stream();
        self.session.publish(self.stream_id, key);
        self.flush();
        let events = self.expect(|e| matches!(e, ClientEvent::Status { .. }), "publish status");
        match events.last() {
            Some(ClientEvent::Status { code, .. }) => code.clone(),
            _ => unreachable!(),
        }
    }

    /// deleteStream on the stream this client publishes or plays: a clean end, as ffmpeg and
    /// OBS do when they stop.
    pub fn delete_stream(&mut self) {
        self.session.delete_stream(self.stream_id);
        self.flush();
    }

    /// createStream + play, without waiting for the answer.
    pub fn request_play(&mut self, key: &str) {
        self.stream_id = self.create_stream();
        self.session.play(self.stream_id, key);
        self.flush();
    }

    /// createStream + play; waits for Play.Start.
    pub fn play(&mut self, key: &str) {
        self.request_play(key);
        self.expect(
            |e| matches!(e, ClientEvent::Status { code, .. } if code == "NetStream.Play.Start"),
            "Play.Start",
        );
    }

    pub fn send(&mut self, kind: MediaKind, timestamp: u32, payload: &[u8]) {
        self.session.send_media(self.stream_id, kind, RtmpTimestamp(timestamp), payload);
        self.flush();
    }

    pub fn send_metadata(&mut self) {
        self.session.send_metadata(self.stream_id, &metadata());
        self.flush();
    }

    /// Publishes the headers a real encoder sends first: metadata, AAC and AVC sequence headers.
    pub fn send_headers(&mut self) {
        self.send_metadata();
        self.send(MediaKind::Audio, 0, AAC_SEQUENCE_HEADER);
        self.send(MediaKind::Video, 0, AVC_SEQUENCE_HEADER);
    }

    /// Media events until `count` have arrived or `timeout` passes.
    pub fn media(&mut self, count: usize, timeout: Duration) -> Vec<Media> {
        let deadline = Instant::now() + timeout;
        let mut media = Vec::new();
        while media.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left) {
                Some(ClientEvent::Media(m)) => media.push(m),
                Some(_) => {}
                None => break,
            }
        }
        media
    }

    /// Drains events for `duration`, returning them.
    pub fn drain(&mut self, duration: Duration) -> Vec<ClientEvent> {
        let deadline = Instant::now() + duration;
        let mut events = Vec::new();
        while let Some(event) = self.next_event(deadline.saturating_duration_since(Instant::now()))
        {
            events.push(event);
        }
        events
    }

    pub fn is_stream_eof(event: &ClientEvent) -> bool {
        matches!(event, ClientEvent::UserControl(UserControlEvent::StreamEof(_)))
    }

    pub fn status_code(event: &ClientEvent) -> Option<&str> {
        match event {
            ClientEvent::Status { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn close(self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }

    /// Ends the connection with an RST, as a crashed or cut-off client does: SO_LINGER with a
    /// zero timeout, then close.
    pub fn reset(self) {
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        // SAFETY: `linger` lives across the call and its size is passed; the fd is this
        // client's open socket.
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&self.socket),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
        // Dropping `self` closes the socket: the RST goes out.
    }
}

/// Waits until `condition` holds, polling; panics after [`WAIT`] with `what`.
pub fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// GET `path`; returns (status, body).
pub fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path)
}

/// `method` `path` with an empty body; returns (status, body).
pub fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut socket = TcpStream::connect(addr).expect("connect to the control plane");
    socket.set_read_timeout(Some(WAIT)).expect("timeout");
    write!(socket, "{method} {path} HTTP/1.0\r\nHost: test\r\nContent-Length: 0\r\n\r\n")
        .expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").expect("header/body split");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status code");
    (status, body.to_owned())
}

/// Parses /metrics with a Prometheus parser and sums each metric over the given label filter.
pub struct Metrics(prometheus_parse::Scrape);

impl Metrics {
    pub fn scrape(addr: SocketAddr) -> Metrics {
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, 200);
        let lines = body.lines().map(|l| Ok(l.to_owned()));
        Metrics(prometheus_parse::Scrape::parse(lines).expect("valid Prometheus exposition"))
    }

    pub fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        let samples: Vec<_> = self
            .0
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .filter(|s| filter.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect();
        assert!(!samples.is_empty(), "no samples of {name} {filter:?}");
        samples
            .iter()
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    }

    /// Every value the label `label` takes in the samples of `name`.
    pub fn label_values(&self, name: &str, label: &str) -> std::collections::BTreeSet<String> {
        let samples = self.0.samples.iter().filter(|s| s.metric == name);
        samples.filter_map(|s| s.labels.get(label).map(str::to_owned)).collect()
    }
}

/// The real binary (`rtmp-relay`, two shards) logging JSON to stdout, stopped when dropped.
/// Every stdout line goes through a channel: `Ok` when it parses as JSON, `Err` with the line
/// when it does not.
pub struct RelayProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    /// The control plane's address, when it runs ([`RelayProcess::launch`] without
    /// `--no-http`).
    pub http: Option<SocketAddr>,
    lines: std::sync::mpsc::Receiver<Result<serde_json::Value, String>>,
    /// Lines read while waiting for another: a later wait may want them.
    unmatched: std::cell::RefCell<Vec<serde_json::Value>>,
}

impl RelayProcess {
    pub fn start(extra: &[&str]) -> RelayProcess {
        Self::spawn(std::process::Command::new(env!("CARGO_BIN_EXE_rtmp-relay")), extra)
    }

    /// Started under `prlimit` with at most `files` open descriptors.
    pub fn start_with_file_limit(files: u32, extra: &[&str]) -> RelayProcess {
        let mut command = std::process::Command::new("prlimit");
        command.arg(format!("--nofile={files}:{files}")).arg("--");
        command.arg(env!("CARGO_BIN_EXE_rtmp-relay"));
        Self::spawn(command, extra)
    }

    fn spawn(mut command: std::process::Command, extra: &[&str]) -> RelayProcess {
        command
            .args(["--listen", "127.0.0.1:0", "--no-http"])
            .args(["--shards", "2", "--log-level", "info"])
            .args(extra);
        Self::launch_command(command)
    }

    /// The binary with only `args` (and `--log-format json`) and these environment variables:
    /// what it listens on comes from `args` or the `--config` file they name.
    pub fn launch(args: &[&str], env: &[(&str, &str)]) -> RelayProcess {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_rtmp-relay"));
        command.args(args).envs(env.iter().copied());
        Self::launch_command(command)
    }

    fn launch_command(mut command: std::process::Command) -> RelayProcess {
        let mut child = command
            .args(["--log-format", "json"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start rtmp-relay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
            {
                let parsed = serde_json::from_str::<serde_json::Value>(&line).map_err(|_| line);
                if tx.send(parsed).is_err() {
                    return;
                }
            }
        });
        let mut relay = RelayProcess {
            child,
            addr: "0.0.0.0:0".parse().expect("address"),
            http: None,
            lines,
            unmatched: Default::default(),
        };
        // The line that says where it listens: {"fields":{"message":"rtmp-relay listening",
        // "addr":"127.0.0.1:PORT",...}}
        let listening = relay.wait_for("the listening line", |log| {
            log["fields"]["message"] == "rtmp-relay listening"
        });
        let addr = listening["fields"]["addr"].as_str().expect("addr field");
        relay.addr = addr.parse().expect("socket address");
        // The control plane starts (and says so) before the server says it listens.
        let http = relay
            .unmatched
            .borrow()
            .iter()
            .position(|log| log["fields"]["message"] == "http control plane listening");
        if let Some(i) = http {
            let log = relay.unmatched.borrow_mut().remove(i);
            relay.http = log["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
        }
        relay
    }

    /// Every log line read so far and not taken by a wait, oldest first (the buffer empties).
    pub fn take_lines(&self) -> Vec<serde_json::Value> {
        while let Ok(line) = self.lines.try_recv() {
            match line {
                Ok(log) => self.unmatched.borrow_mut().push(log),
                Err(line) => panic!("a log line is not JSON: {line}"),
            }
        }
        std::mem::take(&mut *self.unmatched.borrow_mut())
    }

    /// The process id, for signals sent by other means.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first log line that `matches`, among the lines not taken yet, waiting up to
    /// [`WAIT`]; panics on a line that is not JSON or if the binary exits first.
    pub fn wait_for(
        &self,
        what: &str,
        matches: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let mut unmatched = self.unmatched.borrow_mut();
        if let Some(i) = unmatched.iter().position(&matches) {
            return unmatched.remove(i);
        }
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(Ok(log)) if matches(&log) => return log,
                Ok(Ok(log)) => unmatched.push(log),
                Ok(Err(line)) => panic!("a log line is not JSON: {line}"),
                Err(_) => panic!("no log line for {what}"),
            }
        }
    }
}

impl Drop for RelayProcess {
    /// Ends the process as an operator would, so that it leaves through `main` (and a
    /// coverage build writes its profile, which SIGKILL loses): SIGTERM (a graceful shutdown,
    /// milliseconds once the test's clients are gone), a second SIGTERM if that still waits on
    /// something (exit at once), and SIGKILL only if the process ignored both.
    fn drop(&mut self) {
        for patience in [Duration::from_secs(2), Duration::from_secs(5)] {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return; // exited (and reaped) already, or cannot be waited for
            }
            // SAFETY: kill(2) on the pid of a child we own and have not reaped.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + patience;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RelayProcess {
    /// Sends `signal` to the process.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we own and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits at most `limit` for the process to exit; its exit code.
    pub fn exit_code(&mut self, limit: Duration) -> Option<i32> {
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

/// A key no other test uses: `prefix-<n>`.
pub fn fresh_key(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{n}")
}

/// What a round trip publishes after the metadata: both sequence headers, then one GOP of
/// video (a 100 KB keyframe that spans many chunks, then inter frames) with audio between.
///
/// One GOP, because a player on a shard that does not own the stream is fed by the owner only
/// once its subscription crossed the mesh; what was published before that reaches it through
/// the late-join cache, which holds the current GOP only.
pub fn round_trip_messages() -> Vec<(MediaKind, u32, Vec<u8>)> {
    let mut messages = vec![
        (MediaKind::Audio, 0, AAC_SEQUENCE_HEADER.to_vec()),
        (MediaKind::Video, 0, AVC_SEQUENCE_HEADER.to_vec()),
    ];
    for seq in 0..24u32 {
        let keyframe = seq == 0;
        let len = if keyframe { 100_000 } else { 500 + seq as usize * 97 };
        messages.push((MediaKind::Video, seq * 40, video_frame(seq, keyframe, len)));
        messages.push((MediaKind::Audio, seq * 40 + 20, audio_frame(seq)));
    }
    messages
}

/// A fresh publish -> play round trip on a new key of app `live`: the server is alive and
/// relays every message byte-exact and in order.
pub fn assert_round_trip(server: &ServerHandle) {
    assert_round_trip_with(server, "live", &fresh_key("round-trip"), |_| {});
}

/// [`assert_round_trip`] on `app/key`, with `prepare` applied to the publisher's connection
/// before it publishes (a different chunk size, say). Both clients are closed at the end.
pub fn assert_round_trip_with(
    server: &ServerHandle,
    app: &str,
    key: &str,
    prepare: impl FnOnce(&mut Client),
) {
    let addr = server.local_addr();
    let mut publisher = Client::connect(addr, app);
    prepare(&mut publisher);
    let code = publisher.publish(key);
    assert_eq!(code, "NetStream.Publish.Start", "publish of {} bytes of key", key.len());
    let mut player = Client::connect(addr, app);
    player.play(key);
    let sent = round_trip_messages();
    publisher.send_metadata();
    for (kind, timestamp, payload) in &sent {
        publisher.send(*kind, *timestamp, payload);
    }
    let media = player.media(sent.len() + 2, WAIT);
    assert_eq!(media.len(), sent.len() + 2, "round trip: every message arrives");
    // |RtmpSampleAccess, then onMetaData without its @setDataFrame wrapper, then the rest.
    assert_eq!(media[0].kind, MediaKind::Data);
    let mut expected_metadata = BytesMut::new();
    rtmp_proto::amf0::encode_all(
        &[Amf0Value::string("onMetaData"), metadata()],
        &mut expected_metadata,
    );
    assert_eq!((media[1].kind, &media[1].payload[..]), (MediaKind::Data, &expected_metadata[..]));
    for (got, (kind, timestamp, payload)) in media[2..].iter().zip(&sent) {
        assert_eq!((got.kind, got.timestamp.0), (*kind, *timestamp), "kind and timestamp");
        assert!(got.payload[..] == payload[..], "payload of a {kind:?} message at {timestamp}");
    }
    publisher.close();
    player.close();
}

/// Waits until the server holds no connection, stream, publisher or player any more.
pub fn assert_all_released(server: &ServerHandle) {
    let deadline = Instant::now() + WAIT;
    loop {
        let c = server.counters();
        let idle = c.connections_open == 0
            && c.streams == 0
            && c.mirrors == 0
            && c.publishers == 0
            && c.subscribers == 0;
        if idle {
            return;
        }
        assert!(Instant::now() < deadline, "server still holds something: {c:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// This process's resident set size in bytes (the server runs in-process).
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmRSS kB");
    kib * 1024
}

/// Hands memory that free() kept in glibc's arenas back to the kernel, so that RSS after the
/// attackers left measures what is still allocated rather than the allocator's caching.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn return_free_memory() {
    // SAFETY: malloc_trim only releases free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn return_free_memory() {}

pub const MIB: u64 = 1024 * 1024;

/// Waits for `child` at most `limit`, killing it (and failing) past that.
pub fn wait_output(
    mut child: std::process::Child,
    what: &str,
    limit: Duration,
) -> std::process::Output {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().expect("child output");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("child output");
    panic!("{what} did not finish within {limit:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// Kills the child if it outlives the test.
pub struct Reaped(pub Option<Child>);

impl Reaped {
    pub fn wait(mut self, limit: Duration) -> Output {
        wait_output(self.0.take().expect("child"), "child process", limit)
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

/// The stream types ffprobe finds in `url`, sorted.
pub fn probe_tracks(url: &str) -> Vec<String> {
    let child = Command::new("ffprobe")
        .args(["-hide_banner", "-v", "error", "-show_entries", "stream=codec_type"])
        .args(["-of", "csv=p=0", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffprobe");
    let output = wait_output(child, "ffprobe", Duration::from_secs(60));
    assert!(output.status.success(), "ffprobe: {}", String::from_utf8_lossy(&output.stderr));
    let mut tracks: Vec<String> =
        String::from_utf8_lossy(&output.stdout).lines().map(|l| l.trim().to_string()).collect();
    tracks.sort();
    tracks
}
