//! `ServerHandshake` fed arbitrary bytes in arbitrary pieces.
//!
//! Input: `[mode] [schedule] [bytes...]`. When the low bit of `mode` is set, the bytes are not
//! sent to the server directly: they are the random bytes of a `ClientHandshake` (plain or
//! digest by the next bit), and the two run against each other.
//!
//! Invariants, arbitrary bytes:
//! - nothing is ever written before C0 + C1 (1537 bytes) are in, then exactly S0 + S1 + S2
//!   (3073 bytes, S0 = 3), never more, whatever follows;
//! - `Done` exactly when C0 + C1 + C2 (3073 bytes) are consumed, and not a byte more: the rest
//!   belongs to the chunk stream; after `Done` a call consumes nothing and says `Done` again;
//! - an error only for a C0 other than 3, naming that byte; it repeats on every later call, and
//!   the byte stays in the input;
//! - `mode()` and `peer_version()` are known exactly when C1 is in.
//!
//! Invariants, client against server: both finish, agree on the mode (digest when the client
//! signed C1, at scheme 1, as ffmpeg), and the client verifies S2.

use bytes::BytesMut;
use rtmp_proto::handshake::{
    ClientHandshake, HandshakeError, HandshakeMode, HandshakeProgress, ServerHandshake,
    HANDSHAKE_SIZE, RTMP_VERSION,
};

use super::input::Input;

const C0C1: usize = 1 + HANDSHAKE_SIZE;
const FULL: usize = 1 + 2 * HANDSHAKE_SIZE;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let mode = input.u8();
    let schedule = input.schedule();
    let bytes = input.rest();
    if mode & 1 == 1 {
        client_against_server(bytes, mode & 2 != 0);
        return;
    }

    let mut server = ServerHandshake::new(0x0102_0304, bytes);
    let mut buffer = BytesMut::new();
    let mut output = BytesMut::new();
    // Bytes handed to the server so far, and how many of them it consumed.
    let mut fed = 0usize;
    let mut done = false;
    for piece in schedule.pieces(bytes) {
        buffer.extend_from_slice(piece);
        fed += piece.len();
        let before = buffer.len();
        let result = server.handle_input(&mut buffer, &mut output);
        let consumed = fed - buffer.len();
        assert!(before >= buffer.len(), "handle_input grew its input");
        match result {
            Ok(progress) => {
                assert_eq!(bytes[0], RTMP_VERSION, "accepted C0 {:#04x}", bytes[0]);
                let c1_in = consumed >= C0C1;
                assert_eq!(output.len(), if c1_in { FULL } else { 0 }, "output after {consumed}");
                assert_eq!(server.mode().is_some(), c1_in);
                assert_eq!(server.peer_version().is_some(), c1_in);
                if c1_in {
                    assert_eq!(output[0], RTMP_VERSION, "S0");
                    assert_eq!(
                        server.peer_version(),
                        Some([bytes[5], bytes[6], bytes[7], bytes[8]])
                    );
                }
                match progress {
                    HandshakeProgress::Done => {
                        assert_eq!(consumed, FULL, "Done after consuming {consumed} bytes");
                        done = true;
                    }
                    HandshakeProgress::InProgress => {
                        assert!(!done, "InProgress after Done");
                        assert!(consumed < FULL, "InProgress after consuming {consumed} bytes");
                        assert!(buffer.is_empty(), "InProgress with {} bytes left", buffer.len());
                    }
                }
            }
            Err(HandshakeError::UnsupportedVersion(v)) => {
                assert_eq!(v, bytes[0]);
                assert_ne!(v, RTMP_VERSION);
                assert_eq!(consumed, 0, "a refused C0 must stay in the input");
                assert!(output.is_empty());
                let again = server.handle_input(&mut buffer, &mut output);
                assert_eq!(again, Err(HandshakeError::UnsupportedVersion(v)), "error not sticky");
                assert_eq!(fed - buffer.len(), 0);
                return;
            }
            Err(other) => panic!("unexpected handshake error {other:?}"),
        }
    }
    if done {
        let left = buffer.len();
        assert_eq!(
            server.handle_input(&mut buffer, &mut output),
            Ok(HandshakeProgress::Done),
            "Done is not sticky"
        );
        assert_eq!(buffer.len(), left, "consumed input after Done");
        assert_eq!(output.len(), FULL);
    }
}

/// A real client with `random` as its random bytes against a server.
fn client_against_server(random: &[u8], digest: bool) {
    let mut client = ClientHandshake::new(7, random, digest);
    let mut server = ServerHandshake::new(11, random.get(1..).unwrap_or_default());
    let mut to_server = BytesMut::new();
    let mut to_client = BytesMut::new();
    client.start(&mut to_server);
    assert_eq!(to_server.len(), C0C1);
    assert_eq!(
        server.handle_input(&mut to_server, &mut to_client),
        Ok(HandshakeProgress::InProgress)
    );
    assert_eq!(to_client.len(), FULL);
    let expected = if digest { HandshakeMode::Digest { scheme: 1 } } else { HandshakeMode::Plain };
    assert_eq!(server.mode(), Some(expected));
    assert_eq!(client.handle_input(&mut to_client, &mut to_server), Ok(HandshakeProgress::Done));
    assert!(to_client.is_empty());
    assert_eq!(client.mode(), Some(expected));
    assert_eq!(client.s2_verified(), Some(true), "the client did not verify our S2");
    assert_eq!(to_server.len(), HANDSHAKE_SIZE, "C2");
    assert_eq!(server.handle_input(&mut to_server, &mut to_client), Ok(HandshakeProgress::Done));
    assert!(to_server.is_empty() && to_client.is_empty());
}
