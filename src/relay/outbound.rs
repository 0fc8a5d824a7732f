//! What every outbound session of this module shares, push or pull: opening the connection
//! (DNS off the shard, TCP, TLS), time bounds, and the reconnect policy (exponential backoff
//! with jitter).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::TcpStream;
use rtmp_proto::session::{ClientEvent, ClientSession};
use rustls::pki_types::ServerName;

use crate::conn::Socket;
pub(super) use crate::conn::{handshake_random, within, xorshift};
use crate::stream::OutQueue;

/// The wait after the `n`th failure in a row (`n` >= 1): `min * 2^(n-1)` capped at `max`,
/// then a random point in its upper half, so sessions that fail together do not retry
/// together.
pub(super) fn backoff(min: Duration, max: Duration, n: u32, seed: &mut u64) -> Duration {
    let base = min.saturating_mul(1u32 << n.saturating_sub(1).min(16));
    let base = base.min(max);
    let fraction = 0.5 + (xorshift(seed) % 1000) as f64 / 2000.0;
    base.mul_f64(fraction)
}

/// The peer's address: an IP literal as it is, a name resolved on a thread of its own (a
/// shard never waits on DNS), its answer polled without blocking.
pub(super) async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let name = host.to_string();
    std::thread::Builder::new()
        .name("relay-resolve".into())
        .spawn(move || {
            let _ = tx.send((name.as_str(), port).to_socket_addrs().map(|mut a| a.next()));
        })
        .map_err(|e| format!("cannot start a resolver thread: {e}"))?;
    loop {
        match rx.try_recv() {
            Ok(Ok(Some(addr))) => return Ok(addr),
            Ok(Ok(None)) => return Err(format!("{host}: no address")),
            Ok(Err(e)) => return Err(format!("{host}: {e}")),
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                glommio::timer::sleep(Duration::from_millis(10)).await
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                return Err(format!("{host}: resolver failed"))
            }
        }
    }
}

/// Queues what `session` has to send.
pub(super) fn flush(session: &mut ClientSession, queue: &OutQueue) {
    let now = Instant::now();
    while let Some(bytes) = session.poll_transmit() {
        queue.push_bytes(bytes, now);
    }
}

/// Hands `bytes` just read to `session` (with what is left of `input`) and returns its events.
/// A protocol error ends the attempt.
pub(super) fn decode(
    session: &mut ClientSession,
    input: &mut BytesMut,
    bytes: &[u8],
) -> Result<Vec<ClientEvent>, String> {
    input.extend_from_slice(bytes);
    session.handle_input(input).map_err(|e| format!("protocol: {e}"))?;
    let mut events = Vec::new();
    while let Some(event) = session.poll_event() {
        events.push(event);
    }
    Ok(events)
}

/// Resolves `host`, connects, and for `tls` completes the TLS handshake (verified as
/// `config` says). The caller bounds the time.
pub(super) async fn open(
    host: &str,
    port: u16,
    tls: bool,
    config: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(SocketAddr, Socket), String> {
    let addr = resolve(host, port).await?;
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let socket = match (config, tls) {
        (Some(config), true) => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| format!("{host}: not a TLS server name: {e}"))?;
            Socket::tls_client(stream, config.clone(), name).map_err(|e| e.to_string())?
        }
        (None, true) => return Err("rtmps URL without a TLS configuration".into()),
        _ => Socket::new(stream),
    };
    socket.handshake().await.map_err(|e| format!("TLS handshake: {e}"))?;
    Ok((addr, socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let mut seed = 0x1234_5678;
        for (n, base) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (40, 1000)] {
            let base = Duration::from_millis(base);
            for _ in 0..50 {
                let wait = backoff(min, max, n, &mut seed);
                assert!(wait >= base / 2 && wait <= base, "failure {n}: {wait:?}");
            }
        }
    }
}
