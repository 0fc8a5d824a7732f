//! RTMPS: ffmpeg publishes and plays over TLS (certificate made at test time), the content
//! compared packet by packet; wrong protocol on either port, stalled and abandoned handshakes;
//! certificates by SNI and reloaded without dropping sessions, garbage refused.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::certs::{self, TempDir};
use common::*;

fn ffmpeg_available() -> bool {
    let found = Command::new("ffmpeg").arg("-version").stdout(Stdio::null()).status().is_ok();
    if !found {
        assert!(std::env::var_os("CI").is_none(), "ffmpeg is required under CI");
        eprintln!("ffmpeg not found: skipping");
    }
    found
}

fn tls_server(
    dir: &TempDir,
    configure: impl FnOnce(&mut rtmp_relay::Config),
) -> rtmp_relay::ServerHandle {
    let (cert, key, _) = certs::self_signed(dir, "server", &["127.0.0.1", "localhost"]);
    start_server(|c| {
        c.rtmps_listen = Some("127.0.0.1:0".parse().unwrap());
        c.rtmps_cert = Some(cert);
        c.rtmps_key = Some(key);
        configure(c);
    })
}

fn tls_stats(server: &rtmp_relay::ServerHandle) -> rtmp_relay::metrics::TlsSnapshot {
    let mut total = rtmp_relay::metrics::TlsSnapshot::default();
    for shard in server.transport_stats() {
        total.handshakes_ok += shard.tls.handshakes_ok;
        for (reason, n) in shard.tls.handshakes_failed {
            match total.handshakes_failed.iter_mut().find(|(k, _)| *k == reason) {
                Some((_, t)) => *t += n,
                None => total.handshakes_failed.push((reason, n)),
            }
        }
    }
    total
}

/// (stream index, size, md5) of every packet of `input`, copied without decoding.
fn packets(output: &std::process::Output) -> Vec<(String, String, String)> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            (f.len() >= 6).then(|| (f[0].to_string(), f[4].to_string(), f[5].to_string()))
        })
        .collect()
}

fn packet_dump(url: &str) -> Reaped {
    let child = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-i", url])
        .args(["-c", "copy", "-f", "framemd5", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg player");
    Reaped(Some(child))
}

#[test]
fn ffmpeg_publishes_over_rtmps_and_plays_over_rtmps_and_rtmp_packet_for_packet() {
    if !ffmpeg_available() {
        return;
    }
    let dir = TempDir::new("rtmps-ffmpeg");
    // The source, encoded once to a file so it can be compared with what players get.
    let source = dir.path("source.flv");
    let made = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-y"])
        .args(["-f", "lavfi", "-i", "testsrc=size=320x240:rate=25"])
        .args(["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", "4"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p"])
        .args(["-c:a", "aac", "-b:a", "64k", "-f", "flv"])
        .arg(&source)
        .output()
        .expect("ffmpeg encodes the source");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let expected = packets(&packet_dump(source.to_str().unwrap()).wait(Duration::from_secs(60)));
    assert!(expected.len() > 100, "source packets: {}", expected.len());

    let server = tls_server(&dir, |_| {});
    let tls = server.rtmps_addr().unwrap();
    let key = fresh_key("rtmps");
    // Both players wait for the stream before it starts, so both get it whole.
    let over_tls = packet_dump(&format!("rtmps://{tls}/live/{key}"));
    let over_plain = packet_dump(&format!("rtmp://{}/live/{key}", server.local_addr()));
    eventually("both players attached", || server.counters().subscribers == 2);
    let publisher = Command::new("ffmpeg")
        .args(["-hide_banner", "-nostdin", "-v", "error", "-re", "-i"])
        .arg(&source)
        .args(["-c", "copy", "-f", "flv", &format!("rtmps://{tls}/live/{key}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ffmpeg publisher");
    let published = Reaped(Some(publisher)).wait(Duration::from_secs(60));
    assert!(
        published.status.success(),
        "publisher: {}",
        String::from_utf8_lossy(&published.stderr)
    );
    let tls_packets = packets(&over_tls.wait(Duration::from_secs(60)));
    let plain_packets = packets(&over_plain.wait(Duration::from_secs(60)));
    assert_eq!(tls_packets, expected, "rtmps player: every packet of the source, in order");
    assert_eq!(plain_packets, expected, "rtmp player of the rtmps publish: the same");
    let stats = tls_stats(&server);
    assert!(stats.handshakes_ok >= 2, "{stats:?}");
    server.shutdown();
}

#[test]
fn plain_rtmp_to_the_tls_port_and_tls_to_the_plain_port_are_closed_at_once_and_counted() {
    let dir = TempDir::new("rtmps-wrong");
    let server = tls_server(&dir, |_| {});
    // RTMP's C0 + C1 to the TLS port.
    let mut plain = TcpStream::connect(server.rtmps_addr().unwrap()).unwrap();
    plain.set_read_timeout(Some(WAIT)).unwrap();
    let mut c0c1 = vec![3u8];
    c0c1.extend_from_slice(&[0u8; 1536]);
    plain.write_all(&c0c1).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    // The server answers with at most a TLS alert, then closes.
    loop {
        match plain.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => assert!(buf[0] == 0x15 && n < 64, "only an alert: {:?}", &buf[..n]),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once");
    eventually("counted as not TLS", || tls_stats(&server).failed("not_tls") == 1);

    // A TLS ClientHello to the plain port.
    let mut hello = TcpStream::connect(server.local_addr()).unwrap();
    hello.set_read_timeout(Some(WAIT)).unwrap();
    hello.write_all(&[0x16, 0x03, 0x01, 0x00, 0xc8, 0x01, 0x00, 0x00, 0xc4, 0x03, 0x03]).unwrap();
    let started = Instant::now();
    assert!(matches!(hello.read(&mut buf), Ok(0) | Err(_)), "closed without an answer");
    assert!(started.elapsed() < Duration::from_secs(5), "closed at once");
    eventually("counted as TLS on the plain port", || {
        server.protocol_errors_of("tls_on_plain_port") == 1
    });
    eventually("nothing left open", || server.counters().connections_open == 0);
    server.shutdown();
}

#[test]
fn a_stalled_tls_handshake_times_out_and_an_abandoned_one_is_counted() {
    let dir = TempDir::new("rtmps-stall");
    let server = tls_server(&dir, |c| c.handshake_timeout_secs = 1);
    let addr = server.rtmps_addr().unwrap();
    // Slowloris: the first bytes of a ClientHello, then nothing.
    let mut stalled = TcpStream::connect(addr).unwrap();
    stalled.set_read_timeout(Some(WAIT)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    // Closed, with at most an alert first.
    while let Ok(n @ 1..) = stalled.read(&mut buf) {
        assert_eq!(buf[0], 0x15, "only an alert: {:?}", &buf[..n]);
    }
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_secs(10), "{waited:?}");
    // Abandoned half way: a connection that goes away mid-handshake.
    let abandoned = TcpStream::connect(addr).unwrap();
    (&abandoned).write_all(&[0x16, 0x03, 0x01]).unwrap();
    drop(abandoned);
    eventually("both counted as abandoned", || tls_stats(&server).failed("abandoned") == 2);
    assert!(server.counters().handshake_timeouts >= 1);
    // The listener still serves.
    let mut ok = certs::tls_connect(addr, "localhost");
    assert!(certs::rtmp_answers(&mut ok));
    server.shutdown();
}

#[test]
fn certificates_by_sni_reload_without_dropping_sessions_and_garbage_is_refused() {
    let dir = TempDir::new("rtmps-reload");
    let (cert, key, first) = certs::self_signed(&dir, "default", &["localhost"]);
    let (other_cert, other_key, other) = certs::self_signed(&dir, "other", &["other.test"]);
    let (new_cert, new_key, renewed) = certs::self_signed(&dir, "new", &["localhost"]);
    let (third_cert, third_key, third) = certs::self_signed(&dir, "third", &["localhost"]);
    let server = start_server(|c| {
        c.rtmps_listen = Some("127.0.0.1:0".parse().unwrap());
        c.rtmps_cert = Some(cert.clone());
        c.rtmps_key = Some(key.clone());
        c.tls_reload_check_secs = 1;
        c.rtmps_certs = vec![rtmp_relay::config::CertEntry {
            cert: other_cert.clone(),
            key: other_key.clone(),
            names: vec!["other.test".into()],
        }];
    });
    let addr = server.rtmps_addr().unwrap();
    let mut session = certs::tls_connect(addr, "localhost");
    assert_eq!(certs::leaf(&session), first, "the default certificate");
    assert_eq!(certs::leaf(&certs::tls_connect(addr, "other.test")), other, "by SNI");

    // Renewed in place (certificate and key), reloaded as on SIGHUP.
    certs::replace(&new_cert, &cert);
    certs::replace(&new_key, &key);
    server.reload_tls().expect("reload");
    assert_eq!(certs::leaf(&certs::tls_connect(addr, "localhost")), renewed, "new handshakes");
    assert!(certs::rtmp_answers(&mut session), "the session from before the reload goes on");

    // Garbage: refused, the renewed certificate stays.
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\ngarbage\n").unwrap();
    let err = server.reload_tls().expect_err("garbage refused");
    assert!(err.contains("default.pem"), "{err}");
    assert_eq!(certs::leaf(&certs::tls_connect(addr, "localhost")), renewed);
    // A changed file is picked up by the watcher, without a signal.
    certs::replace(&third_key, &key);
    certs::replace(&third_cert, &cert);
    eventually("file change reloaded", || {
        certs::leaf(&certs::tls_connect(addr, "localhost")) == third
    });
    let (ok, refused) = server.tls_reload_counts();
    assert!(ok >= 2 && refused >= 1, "({ok}, {refused})");
    server.shutdown();
}
