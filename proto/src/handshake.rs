//! The RTMP handshake, both roles: C0 C1 C2 from the client, S0 S1 S2 from the server.
//!
//! ```text
//! client                                        server
//!   C0 (1 byte: version 3) + C1 (1536) ------->
//!                                               waits for all of C0 + C1
//!        <------- S0 (1) + S1 (1536) + S2 (1536)
//!   waits for S0 + S1
//!   C2 (1536) -------------------------------->
//!   reads S2: Done                              reads C2: Done, what follows is the chunk stream
//! ```
//!
//! C1 and S1 are `time (4, big-endian) | version (4) | 1528 random bytes`. The server answers
//! with S0, S1 and S2 in one go as soon as C0 + C1 are in: ffmpeg's client (`rtmp_handshake` in
//! libavformat/rtmpproto.c) reads S0 + S1 + S2 before it writes C2, so a server that waited for
//! C2 first would deadlock with it.
//!
//! # Plain and digest
//!
//! A C1 whose version field is zero asks for the plain handshake of the spec: S1 is our time,
//! four zero bytes and random bytes; S2 echoes C1, with bytes 4..8 replaced by our time (the
//! spec's `time2`; clients do not check them, and ffmpeg's own server writes zeros there).
//!
//! A non-zero version (ffmpeg sends 9.0.124.2, always, to publish and to play) announces the
//! Flash Player 9 "digest" handshake. The 1528 bytes after the header are two 764-byte blocks;
//! one of them holds a 4-byte offset field and, at `offset field + 4 + (sum of its 4 bytes) %
//! 728`, an HMAC-SHA256 of the rest of the packet. Which block comes first is the scheme:
//! scheme 1 has the digest block first (offset field at 8; ffmpeg's and librtmp's choice),
//! scheme 0 the key block first (offset field at 772). The client signs with the first 30 bytes
//! of the Flash Player key, the server with the first 36 of the Flash Media Server key. The
//! answer to a digest (S2, and C2 from the client) is 1504 random bytes followed by their HMAC
//! keyed with HMAC(full key of the answering side, the peer's digest).
//!
//! When the version is non-zero but no digest validates at either scheme, the server falls back
//! to the plain handshake, as nginx-rtmp and SRS do, rather than refusing the client.
//!
//! The keys are public constants, so the digest authenticates nothing; it exists because Flash
//! Player and ffmpeg's player check that the server "is genuine" and drop the connection
//! otherwise. That is also why C2 is accepted without checks: real clients send the signed
//! answer, an echo of S1, or arbitrary bytes, and refusing them gains nothing.
//!
//! # Sans-IO
//!
//! Time and randomness are arguments ([`ServerHandshake::new`], [`ClientHandshake::new`]) so
//! that the bytes produced are a pure function of the inputs and can be checked against golden
//! vectors. Input is whatever the socket delivered, in any fragmentation: each call consumes
//! exactly the handshake bytes available and stops at the end of C2 (or S2), so bytes that
//! follow stay in the caller's buffer as the start of the chunk stream. At most one handshake
//! packet (1536 bytes) is buffered inside; nothing is sized from what the peer sends.

use std::fmt;

use bytes::{Buf, BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of C1, S1, C2 and S2.
pub const HANDSHAKE_SIZE: usize = 1536;

/// The only version byte (C0/S0) we speak: plain, unencrypted RTMP.
pub const RTMP_VERSION: u8 = 3;

/// Random bytes a handshake wants from the caller's RNG: one packet's worth for C1/S1 and one
/// for the signed C2/S2. A shorter slice is repeated to fill this length (all zeros when empty):
/// the handshake still completes, but the random fields of the packets repeat. Bytes beyond
/// this length are ignored.
pub const RANDOM_LEN: usize = 2 * HANDSHAKE_SIZE;

const DIGEST_LEN: usize = 32;

/// Bytes of a digest-mode C2/S2 that the signature in its last 32 bytes covers.
const SIGNED_LEN: usize = HANDSHAKE_SIZE - DIGEST_LEN;

/// The 32 bytes both keys end with. Only the full keys include them, and only the full keys sign
/// C2/S2; C1/S1 digests use the text part alone.
const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];

const FP_KEY_TEXT: &[u8; 30] = b"Genuine Adobe Flash Player 001";
const FMS_KEY_TEXT: &[u8; 36] = b"Genuine Adobe Flash Media Server 001";

/// Flash Player key (62 bytes): signs C1 (first 30 bytes) and C2 (all of it).
const FP_KEY: [u8; 62] = concat(FP_KEY_TEXT, &KEY_TAIL);
/// Flash Media Server key (68 bytes): signs S1 (first 36 bytes) and S2 (all of it).
const FMS_KEY: [u8; 68] = concat(FMS_KEY_TEXT, &KEY_TAIL);

/// What we put in S1's version field in digest mode: FMS 4.5.0.1. Any first byte of 3 or more
/// makes ffmpeg's player verify the digest, which is what we want it to do.
const SERVER_VERSION: [u8; 4] = [4, 5, 0, 1];
/// What our client puts in C1's version field in digest mode, as ffmpeg does: Flash 9.0.124.2.
const CLIENT_VERSION: [u8; 4] = [9, 0, 124, 2];

/// `a` followed by `b`; `N` must be `A + B`, or the constant fails to compile.
const fn concat<const A: usize, const B: usize, const N: usize>(
    a: &[u8; A],
    b: &[u8; B],
) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < A {
        out[i] = a[i];
        i += 1;
    }
    while i < N {
        out[i] = b[i - A];
        i += 1;
    }
    out
}

type Packet = [u8; HANDSHAKE_SIZE];

/// Why a handshake failed. Each one ends the connection it happened on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeError {
    /// C0 or S0 asked for a version other than [`RTMP_VERSION`]: 6, 8 and 9 are RTMPE
    /// (encrypted RTMP), 0x16 is a TLS ClientHello (rtmps:// to a plain port), `G`/`P`/`H` are
    /// HTTP. The byte is kept so the log says which.
    UnsupportedVersion(u8),
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::UnsupportedVersion(v) => {
                let hint = match v {
                    6 | 8 | 9 => " (RTMPE, encrypted RTMP)",
                    0x16 => " (a TLS handshake: rtmps:// to a plain RTMP port?)",
                    b'G' | b'P' | b'H' => " (looks like HTTP)",
                    _ => "",
                };
                write!(f, "unsupported RTMP version {v}{hint}; only {RTMP_VERSION} is supported")
            }
        }
    }
}

impl std::error::Error for HandshakeError {}

/// Which handshake the peers ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeMode {
    /// The spec's handshake: random bytes and echoes, nothing signed.
    Plain,
    /// The Flash Player 9 digest handshake. `scheme` 1: digest block first (offset field at byte
    /// 8, what ffmpeg and librtmp send); `scheme` 0: key block first (offset field at byte 772).
    Digest {
        /// 0 or 1, as above.
        scheme: u8,
    },
}

/// Whether a handshake needs more input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeProgress {
    /// Waiting for more bytes from the peer; everything given so far was consumed.
    InProgress,
    /// Finished: the rest of the input (left untouched) belongs to the chunk stream.
    Done,
}

/// Where the digest block of a C1/S1 starts, per scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    KeyFirst,
    DigestFirst,
}

impl Scheme {
    fn number(self) -> u8 {
        match self {
            Scheme::KeyFirst => 0,
            Scheme::DigestFirst => 1,
        }
    }

    /// Byte index of the 4-byte field that places the digest: the start of the digest block,
    /// which is the first (8) or the second (8 + 764) block after the header.
    fn offset_field(self) -> usize {
        match self {
            Scheme::KeyFirst => 772,
            Scheme::DigestFirst => 8,
        }
    }

    /// Position of the 32-byte digest in `packet`. The modulus is the 764-byte block less the
    /// offset field and the digest, so the digest always lies inside its block (at most 1503 for
    /// scheme 0, 739 for scheme 1): slicing at it cannot go out of bounds.
    fn digest_pos(self, packet: &Packet) -> usize {
        let field = self.offset_field();
        let sum: usize = packet[field..field + 4].iter().map(|&b| usize::from(b)).sum();
        field + 4 + sum % 728
    }
}

/// HMAC-SHA256 over the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    // HMAC takes keys of any length (long ones are hashed first); the Result only exists
    // because `new_from_slice` belongs to a trait shared with fixed-key MACs. Keys here are
    // our constants or 32-byte digests, never a length the peer picks.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .expect("HMAC-SHA256 accepts keys of every length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The digest of `packet` with the 32 bytes at `pos`, where the digest itself goes, left out.
fn packet_digest(packet: &Packet, pos: usize, key: &[u8]) -> [u8; DIGEST_LEN] {
    hmac_sha256(key, &[&packet[..pos], &packet[pos + DIGEST_LEN..]])
}

/// Looks for a digest signed with `key`, trying `schemes` in order; returns the scheme it was
/// found at and the digest. Comparing in constant time would buy nothing: the key is public.
fn find_digest(packet: &Packet, key: &[u8], schemes: [Scheme; 2]) -> Option<(Scheme, [u8; 32])> {
    schemes.into_iter().find_map(|scheme| {
        let pos = scheme.digest_pos(packet);
        let digest = packet_digest(packet, pos, key);
        (packet[pos..pos + DIGEST_LEN] == digest).then_some((scheme, digest))
    })
}

/// Writes the digest into `packet` at the position `scheme` gives and returns it.
fn imprint_digest(packet: &mut Packet, scheme: Scheme, key: &[u8]) -> [u8; DIGEST_LEN] {
    let pos = scheme.digest_pos(packet);
    let digest = packet_digest(packet, pos, key);
    packet[pos..pos + DIGEST_LEN].copy_from_slice(&digest);
    digest
}

/// The signing key of a digest-mode C2/S2: the peer's C1/S1 digest, keyed with our full key.
fn answer_key(peer_digest: &[u8; DIGEST_LEN], our_full_key: &[u8]) -> [u8; DIGEST_LEN] {
    hmac_sha256(our_full_key, &[peer_digest])
}

/// A digest-mode C2/S2: `random`'s first 1504 bytes, then their signature.
fn signed_answer(random: &Packet, peer_digest: &[u8; DIGEST_LEN], our_full_key: &[u8]) -> Packet {
    let mut packet = *random;
    let key = answer_key(peer_digest, our_full_key);
    let signature = hmac_sha256(&key, &[&packet[..SIGNED_LEN]]);
    packet[SIGNED_LEN..].copy_from_slice(&signature);
    packet
}

/// The plain answer: `packet` echoed, with bytes 4..8 set to our time (the spec's `time2`).
fn echo(packet: &Packet, epoch_ms: u32) -> Packet {
    let mut answer = *packet;
    answer[4..8].copy_from_slice(&epoch_ms.to_be_bytes());
    answer
}

fn version_field(packet: &Packet) -> [u8; 4] {
    [packet[4], packet[5], packet[6], packet[7]]
}

/// The caller's random bytes as two packets, `random` repeated (or zeros) to fill them.
fn random_packets(random: &[u8]) -> Box<[Packet; 2]> {
    let mut packets = Box::new([[0u8; HANDSHAKE_SIZE]; 2]);
    for (dst, src) in packets.iter_mut().flatten().zip(random.iter().cycle()) {
        *dst = *src;
    }
    packets
}

/// Copies input into `buf[*have..]` until `buf` is full or the input runs out; true when full.
fn fill(buf: &mut Packet, have: &mut usize, input: &mut BytesMut) -> bool {
    let n = (HANDSHAKE_SIZE - *have).min(input.len());
    buf[*have..*have + n].copy_from_slice(&input[..n]);
    input.advance(n);
    *have += n;
    *have == HANDSHAKE_SIZE
}

/// Reads the C0/S0 version byte, if there is one yet.
fn read_version(input: &mut BytesMut) -> Option<Result<(), HandshakeError>> {
    let &version = input.first()?;
    if version != RTMP_VERSION {
        // Left in the input: the connection is over, and the caller may want to log it.
        return Some(Err(HandshakeError::UnsupportedVersion(version)));
    }
    input.advance(1);
    Some(Ok(()))
}

/// The server side. Create one per accepted connection and feed it everything read from the
/// socket until it returns [`HandshakeProgress::Done`]; send whatever it appends to `output`.
pub struct ServerHandshake {
    epoch_ms: u32,
    state: ServerState,
    mode: Option<HandshakeMode>,
    peer_version: Option<[u8; 4]>,
}

enum ServerState {
    ReadC0 {
        random: Box<[Packet; 2]>,
    },
    ReadC1 {
        random: Box<[Packet; 2]>,
        c1: Box<Packet>,
        have: usize,
    },
    /// S0 S1 S2 are out; C2 is skipped over, `left` bytes of it still to come.
    ReadC2 {
        left: usize,
    },
    Done,
    Failed(HandshakeError),
}

impl ServerState {
    fn name(&self) -> &'static str {
        match self {
            ServerState::ReadC0 { .. } => "ReadC0",
            ServerState::ReadC1 { .. } => "ReadC1",
            ServerState::ReadC2 { .. } => "ReadC2",
            ServerState::Done => "Done",
            ServerState::Failed(_) => "Failed",
        }
    }
}

impl fmt::Debug for ServerHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandshake")
            .field("state", &self.state.name())
            .field("mode", &self.mode)
            .field("peer_version", &self.peer_version)
            .finish_non_exhaustive()
    }
}

impl ServerHandshake {
    /// `epoch_ms` goes into S1's time field (any base; peers only echo it). `random` should be
    /// [`RANDOM_LEN`] bytes from the caller's RNG; see there for what happens to a shorter slice.
    pub fn new(epoch_ms: u32, random: &[u8]) -> Self {
        ServerHandshake {
            epoch_ms,
            state: ServerState::ReadC0 { random: random_packets(random) },
            mode: None,
            peer_version: None,
        }
    }

    /// Consumes handshake bytes from the front of `input` (and no more) and appends S0 S1 S2 to
    /// `output` once C0 and C1 are in. Bytes after C2 stay in `input`: they are the first chunks
    /// of the session. After `Done`, further calls consume nothing and return `Done`; after an
    /// error they return the same error.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
    ) -> Result<HandshakeProgress, HandshakeError> {
        loop {
            self.state = match std::mem::replace(&mut self.state, ServerState::Done) {
                ServerState::ReadC0 { random } => match read_version(input) {
                    None => {
                        self.state = ServerState::ReadC0 { random };
                        return Ok(HandshakeProgress::InProgress);
                    }
                    Some(Err(e)) => {
                        self.state = ServerState::Failed(e.clone());
                        return Err(e);
                    }
                    Some(Ok(())) => {
                        ServerState::ReadC1 { random, c1: Box::new([0; HANDSHAKE_SIZE]), have: 0 }
                    }
                },
                ServerState::ReadC1 { random, mut c1, mut have } => {
                    if !fill(&mut c1, &mut have, input) {
                        self.state = ServerState::ReadC1 { random, c1, have };
                        return Ok(HandshakeProgress::InProgress);
                    }
                    self.answer_c1(&c1, &random, output);
                    ServerState::ReadC2 { left: HANDSHAKE_SIZE }
                }
                ServerState::ReadC2 { left } => {
                    let n = left.min(input.len());
                    input.advance(n);
                    if n < left {
                        self.state = ServerState::ReadC2 { left: left - n };
                        return Ok(HandshakeProgress::InProgress);
                    }
                    ServerState::Done
                }
                ServerState::Done => {
                    self.state = ServerState::Done;
                    return Ok(HandshakeProgress::Done);
                }
                ServerState::Failed(e) => {
                    self.state = ServerState::Failed(e.clone());
                    return Err(e);
                }
            };
        }
    }

    /// Writes S0 S1 S2 for `c1` and records the mode.
    fn answer_c1(&mut self, c1: &Packet, random: &[Packet; 2], output: &mut BytesMut) {
        let version = version_field(c1);
        self.peer_version = Some(version);
        let client_digest = if version == [0; 4] {
            None
        } else {
            // ffmpeg and librtmp sign at scheme 1, so it goes first.
            find_digest(c1, &FP_KEY[..FP_KEY_TEXT.len()], [Scheme::DigestFirst, Scheme::KeyFirst])
        };

        let mut s1 = random[0];
        s1[..4].copy_from_slice(&self.epoch_ms.to_be_bytes());
        let s2 = match client_digest {
            Some((scheme, digest)) => {
                // S1 is signed at the scheme the client used: a client that knows only one
                // scheme looks there (ffmpeg and librtmp try both).
                s1[4..8].copy_from_slice(&SERVER_VERSION);
                imprint_digest(&mut s1, scheme, &FMS_KEY[..FMS_KEY_TEXT.len()]);
                self.mode = Some(HandshakeMode::Digest { scheme: scheme.number() });
                signed_answer(&random[1], &digest, &FMS_KEY)
            }
            None => {
                // A zero version tells digest-aware clients (ffmpeg's player among them) not
                // to look for a digest in S1.
                s1[4..8].copy_from_slice(&[0; 4]);
                self.mode = Some(HandshakeMode::Plain);
                echo(c1, self.epoch_ms)
            }
        };

        output.reserve(1 + 2 * HANDSHAKE_SIZE);
        output.put_u8(RTMP_VERSION);
        output.put_slice(&s1);
        output.put_slice(&s2);
    }

    /// The handshake chosen, once C1 is in.
    pub fn mode(&self) -> Option<HandshakeMode> {
        self.mode
    }

    /// The version field of C1 (ffmpeg: `[9, 0, 124, 2]`, zero for a plain client), once C1 is
    /// in. Worth logging: it is the closest thing to a client name the handshake carries.
    pub fn peer_version(&self) -> Option<[u8; 4]> {
        self.peer_version
    }
}

/// The client side, for the load tester and for pulling from other servers: [`start`] writes
/// C0 + C1, then feed it everything read from the socket until it returns
/// [`HandshakeProgress::Done`], sending whatever it appends to `output` (C2).
///
/// [`start`]: ClientHandshake::start
pub struct ClientHandshake {
    epoch_ms: u32,
    digest: bool,
    state: ClientState,
    mode: Option<HandshakeMode>,
    s2_verified: Option<bool>,
}

/// What the client keeps of its C1 until S2 has been checked.
struct SentC1 {
    c1: Box<Packet>,
    /// The digest in C1, when we sent one.
    digest: Option<[u8; DIGEST_LEN]>,
    /// Random bytes for a signed C2.
    c2_random: Box<Packet>,
}

enum ClientState {
    Start {
        random: Box<[Packet; 2]>,
    },
    ReadS0 {
        sent: SentC1,
    },
    ReadS1 {
        sent: SentC1,
        s1: Box<Packet>,
        have: usize,
    },
    /// C2 is out; `buf` collects S2 (it held S1 before).
    ReadS2 {
        sent: SentC1,
        buf: Box<Packet>,
        have: usize,
    },
    Done,
    Failed(HandshakeError),
}

impl ClientState {
    fn name(&self) -> &'static str {
        match self {
            ClientState::Start { .. } => "Start",
            ClientState::ReadS0 { .. } => "ReadS0",
            ClientState::ReadS1 { .. } => "ReadS1",
            ClientState::ReadS2 { .. } => "ReadS2",
            ClientState::Done => "Done",
            ClientState::Failed(_) => "Failed",
        }
    }
}

impl fmt::Debug for ClientHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientHandshake")
            .field("state", &self.state.name())
            .field("digest", &self.digest)
            .field("mode", &self.mode)
            .field("s2_verified", &self.s2_verified)
            .finish_non_exhaustive()
    }
}

impl ClientHandshake {
    /// `epoch_ms` goes into C1's time field. `random` should be [`RANDOM_LEN`] bytes from the
    /// caller's RNG (see there for shorter slices). `digest` picks the C1: `false` sends a plain
    /// one (version zero), `true` a Flash Player 9 one signed at scheme 1 as ffmpeg does, which
    /// servers that insist on the digest handshake need.
    pub fn new(epoch_ms: u32, random: &[u8], digest: bool) -> Self {
        ClientHandshake {
            epoch_ms,
            digest,
            state: ClientState::Start { random: random_packets(random) },
            mode: None,
            s2_verified: None,
        }
    }

    /// Appends C0 + C1 to `output`. Call it once, first; later calls write nothing, and
    /// [`handle_input`](Self::handle_input) calls it if it was not.
    pub fn start(&mut self, output: &mut BytesMut) {
        if !matches!(self.state, ClientState::Start { .. }) {
            return;
        }
        let ClientState::Start { random } = std::mem::replace(&mut self.state, ClientState::Done)
        else {
            return;
        };
        let [first, second] = *random;
        let mut c1 = Box::new(first);
        c1[..4].copy_from_slice(&self.epoch_ms.to_be_bytes());
        let digest = if self.digest {
            c1[4..8].copy_from_slice(&CLIENT_VERSION);
            Some(imprint_digest(&mut c1, Scheme::DigestFirst, &FP_KEY[..FP_KEY_TEXT.len()]))
        } else {
            c1[4..8].copy_from_slice(&[0; 4]);
            None
        };
        output.reserve(1 + HANDSHAKE_SIZE);
        output.put_u8(RTMP_VERSION);
        output.put_slice(&c1[..]);
        let sent = SentC1 { c1, digest, c2_random: Box::new(second) };
        self.state = ClientState::ReadS0 { sent };
    }

    /// Consumes S0 S1 S2 from the front of `input` (and no more), appending C2 to `output` as
    /// soon as S1 is in. Bytes after S2 stay in `input`. After `Done`, further calls consume
    /// nothing and return `Done`; after an error they return the same error.
    ///
    /// S2 is checked but never refused (see [`s2_verified`](Self::s2_verified)): servers get it
    /// wrong in more ways than a load tester should care about.
    pub fn handle_input(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
    ) -> Result<HandshakeProgress, HandshakeError> {
        self.start(output);
        loop {
            self.state = match std::mem::replace(&mut self.state, ClientState::Done) {
                state @ ClientState::Start { .. } => {
                    // Not reached: start() above always leaves Start. Total rather than a panic.
                    self.state = state;
                    return Ok(HandshakeProgress::InProgress);
                }
                ClientState::ReadS0 { sent } => match read_version(input) {
                    None => {
                        self.state = ClientState::ReadS0 { sent };
                        return Ok(HandshakeProgress::InProgress);
                    }
                    Some(Err(e)) => {
                        self.state = ClientState::Failed(e.clone());
                        return Err(e);
                    }
                    Some(Ok(())) => {
                        ClientState::ReadS1 { sent, s1: Box::new([0; HANDSHAKE_SIZE]), have: 0 }
                    }
                },
                ClientState::ReadS1 { sent, mut s1, mut have } => {
                    if !fill(&mut s1, &mut have, input) {
                        self.state = ClientState::ReadS1 { sent, s1, have };
                        return Ok(HandshakeProgress::InProgress);
                    }
                    self.answer_s1(&s1, &sent, output);
                    ClientState::ReadS2 { sent, buf: s1, have: 0 }
                }
                ClientState::ReadS2 { sent, mut buf, mut have } => {
                    if !fill(&mut buf, &mut have, input) {
                        self.state = ClientState::ReadS2 { sent, buf, have };
                        return Ok(HandshakeProgress::InProgress);
                    }
                    self.s2_verified = Some(s2_answers(&buf, &sent));
                    ClientState::Done
                }
                ClientState::Done => {
                    self.state = ClientState::Done;
                    return Ok(HandshakeProgress::Done);
                }
                ClientState::Failed(e) => {
                    self.state = ClientState::Failed(e.clone());
                    return Err(e);
                }
            };
        }
    }

    /// Writes C2 for `s1` and records the mode.
    fn answer_s1(&mut self, s1: &Packet, sent: &SentC1, output: &mut BytesMut) {
        let server_digest = if version_field(s1) == [0; 4] {
            None
        } else {
            // ffmpeg's player tries scheme 0 first; the order only matters for a packet valid
            // at both, which random bytes never are.
            find_digest(s1, &FMS_KEY[..FMS_KEY_TEXT.len()], [Scheme::KeyFirst, Scheme::DigestFirst])
        };
        let c2 = match server_digest {
            Some((scheme, digest)) => {
                self.mode = Some(HandshakeMode::Digest { scheme: scheme.number() });
                signed_answer(&sent.c2_random, &digest, &FP_KEY)
            }
            None => {
                self.mode = Some(HandshakeMode::Plain);
                echo(s1, self.epoch_ms)
            }
        };
        output.reserve(HANDSHAKE_SIZE);
        output.put_slice(&c2);
    }

    /// What the server answered with, once S1 is in: `Digest` when S1 carried a valid server
    /// digest (and C2 was signed in return), `Plain` otherwise.
    pub fn mode(&self) -> Option<HandshakeMode> {
        self.mode
    }

    /// Once S2 is in: whether it answered our C1 properly, either signed over our C1 digest or
    /// echoing C1's random bytes. `false` does not fail the handshake; it is for logs and
    /// load-test reports.
    pub fn s2_verified(&self) -> Option<bool> {
        self.s2_verified
    }
}

/// Whether `s2` answers `sent`: a signature keyed from our digest, or an echo of C1 past the
/// time fields (servers disagree on what goes in those).
fn s2_answers(s2: &Packet, sent: &SentC1) -> bool {
    let signed = sent.digest.is_some_and(|digest| {
        let key = answer_key(&digest, &FMS_KEY);
        s2[SIGNED_LEN..] == hmac_sha256(&key, &[&s2[..SIGNED_LEN]])
    });
    signed || s2[8..] == sent.c1[8..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sha2::Digest as _;

    /// ffmpeg 5.1's C0 + C1, captured from `ffmpeg ... -f flv rtmp://127.0.0.1:PORT/live/k` by a
    /// listener that saved the first 1537 bytes. ffmpeg seeds its generator with a constant and
    /// sends uptime 0, so publishing and playing produce the same bytes.
    const FFMPEG_PUBLISH_C0C1: &[u8; 1537] =
        include_bytes!("../tests/data/handshake_ffmpeg_publish_c0c1.bin");
    /// The same from `ffmpeg -i rtmp://127.0.0.1:PORT/live/k -f null -`.
    const FFMPEG_PLAY_C0C1: &[u8; 1537] =
        include_bytes!("../tests/data/handshake_ffmpeg_play_c0c1.bin");

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn packet(bytes: &[u8]) -> Packet {
        let mut p = [0; HANDSHAKE_SIZE];
        p.copy_from_slice(bytes);
        p
    }

    /// Deterministic stand-in for the caller's RNG.
    fn test_random(seed: u8) -> Vec<u8> {
        (0..RANDOM_LEN).map(|i| (i as u8).wrapping_mul(31).wrapping_add(7 ^ seed)).collect()
    }

    /// ffmpeg's client-side checks of S1 and S2 (`rtmp_handshake` in libavformat/rtmpproto.c,
    /// the `is_input` branch its player takes), restated without this module's helpers:
    /// if S1's first version byte is 3 or more, S1 must carry an FMS digest at offset field 772
    /// or 8, and S2's last 32 bytes must be HMAC(HMAC(FMS key, our C1 digest), S2[..1504]);
    /// ffmpeg's own C1 digest sits at scheme 1.
    fn ffmpeg_player_accepts(c1: &[u8], s0s1s2: &[u8]) -> Result<(), &'static str> {
        fn mac(key: &[u8], data: &[u8]) -> Vec<u8> {
            let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            m.update(data);
            m.finalize().into_bytes().to_vec()
        }
        fn calc_digest_pos(buf: &[u8], off: usize) -> usize {
            buf[off..off + 4].iter().map(|&b| b as usize).sum::<usize>() % 728 + off + 4
        }
        fn validate(buf: &[u8], off: usize) -> Option<usize> {
            let pos = calc_digest_pos(buf, off);
            let mut rest = buf[..pos].to_vec();
            rest.extend_from_slice(&buf[pos + 32..]);
            (mac(&FMS_KEY[..36], &rest) == buf[pos..pos + 32]).then_some(pos)
        }
        assert_eq!(s0s1s2.len(), 1 + 2 * 1536);
        let s1 = &s0s1s2[1..1537];
        let s2 = &s0s1s2[1537..];
        if s1[4] < 3 {
            return Ok(());
        }
        validate(s1, 772).or_else(|| validate(s1, 8)).ok_or("Server response validating failed")?;
        let client_pos = calc_digest_pos(c1, 8);
        let digest = mac(&FMS_KEY, &c1[client_pos..client_pos + 32]);
        if mac(&digest, &s2[..1504]) != s2[1504..] {
            return Err("Signature mismatch");
        }
        Ok(())
    }

    #[test]
    fn keys_are_the_published_ones() {
        assert_eq!(FP_KEY.len(), 62);
        assert_eq!(FMS_KEY.len(), 68);
        assert_eq!(&FP_KEY[..30], b"Genuine Adobe Flash Player 001");
        assert_eq!(&FMS_KEY[..36], b"Genuine Adobe Flash Media Server 001");
        assert_eq!(FP_KEY[30..], KEY_TAIL);
        assert_eq!(FMS_KEY[36..], KEY_TAIL);
    }

    #[test]
    fn hmac_matches_rfc4231() {
        // RFC 4231 test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya ", b"want for nothing?"]);
        assert_eq!(hex(&mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    /// Golden values computed with Python's `hmac` module over a packet whose byte i is i % 256.
    #[test]
    fn digest_positions_and_values_golden() {
        let mut p = [0u8; HANDSHAKE_SIZE];
        for (i, b) in p.iter_mut().enumerate() {
            *b = i as u8;
        }
        assert_eq!(Scheme::DigestFirst.digest_pos(&p), 50);
        assert_eq!(Scheme::KeyFirst.digest_pos(&p), 798);
        assert_eq!(
            hex(&packet_digest(&p, 50, &FP_KEY[..30])),
            "db8e5fd0b081979a4ede294f09b382fa04d10f66b27d6de0438960458b0a6a21"
        );
        assert_eq!(
            hex(&packet_digest(&p, 798, &FMS_KEY[..36])),
            "8155a83bf5d6f7dc63ada1ce50e1879be4863afb5e38839d6858d92de87a17a6"
        );
        let mut first32 = [0u8; 32];
        first32.copy_from_slice(&p[..32]);
        assert_eq!(
            hex(&answer_key(&first32, &FMS_KEY)),
            "70063e50114d8225b7b5a0c0b8e5f88b0aa59f9afe641ecc0b577b2e60573406"
        );
    }

    #[test]
    fn digest_always_fits_its_block() {
        for sum in 0..=4 * 255usize {
            let mut p = [0u8; HANDSHAKE_SIZE];
            for scheme in [Scheme::KeyFirst, Scheme::DigestFirst] {
                let field = scheme.offset_field();
                let mut left = sum;
                for b in &mut p[field..field + 4] {
                    *b = left.min(255) as u8;
                    left -= usize::from(*b);
                }
                let pos = scheme.digest_pos(&p);
                let block_end = field + 764;
                assert!(pos >= field + 4 && pos + DIGEST_LEN <= block_end, "{scheme:?} {sum}");
                assert!(block_end <= HANDSHAKE_SIZE);
            }
        }
    }

    #[test]
    fn ffmpeg_captures_carry_a_scheme_1_digest() {
        for capture in [FFMPEG_PUBLISH_C0C1, FFMPEG_PLAY_C0C1] {
            assert_eq!(capture[0], RTMP_VERSION);
            let c1 = packet(&capture[1..]);
            assert_eq!(version_field(&c1), [9, 0, 124, 2]);
            let (scheme, digest) =
                find_digest(&c1, &FP_KEY[..30], [Scheme::KeyFirst, Scheme::DigestFirst])
                    .expect("ffmpeg's C1 digest");
            assert_eq!(scheme, Scheme::DigestFirst);
            // Position and value from Python's hmac over the same capture.
            assert_eq!(Scheme::DigestFirst.digest_pos(&c1), 494);
            assert_eq!(
                hex(&digest),
                "650bfb9b65f953d848e3456965d0d76b627a84e35e9ddabd8b43f0fadaee458c"
            );
        }
    }

    #[test]
    fn server_answers_ffmpeg_with_a_digest_ffmpeg_accepts() {
        for capture in [FFMPEG_PUBLISH_C0C1, FFMPEG_PLAY_C0C1] {
            let mut server = ServerHandshake::new(0x0102_0304, &test_random(0));
            let mut input = BytesMut::from(&capture[..]);
            let mut output = BytesMut::new();
            assert_eq!(
                server.handle_input(&mut input, &mut output),
                Ok(HandshakeProgress::InProgress)
            );
            assert!(input.is_empty());
            assert_eq!(server.mode(), Some(HandshakeMode::Digest { scheme: 1 }));
            assert_eq!(server.peer_version(), Some([9, 0, 124, 2]));
            assert_eq!(output.len(), 1 + 2 * HANDSHAKE_SIZE);
            assert_eq!(output[0], RTMP_VERSION);
            assert_eq!(&output[1..9], &[1, 2, 3, 4, 4, 5, 0, 1]);
            ffmpeg_player_accepts(&capture[1..], &output).unwrap();
        }
    }

    /// The whole S0 S1 S2 for ffmpeg's C1, fixed epoch and random, against bytes built by an
    /// independent Python script (time | 4.5.0.1 | random, FMS digest at scheme 1, signed S2).
    #[test]
    fn server_output_for_ffmpeg_golden() {
        let random: Vec<u8> = (0..RANDOM_LEN).map(|i| (i * 31 + 7) as u8).collect();
        let mut server = ServerHandshake::new(0x0102_0304, &random);
        let mut output = BytesMut::new();
        server.handle_input(&mut BytesMut::from(&FFMPEG_PUBLISH_C0C1[..]), &mut output).unwrap();
        let s1 = packet(&output[1..1537]);
        assert_eq!(Scheme::DigestFirst.digest_pos(&s1), 450);
        assert_eq!(
            hex(&s1[450..482]),
            "9127e6f2680f93be3e7aded37fb754abe92af68a85e4ea60778e94677cba10bd"
        );
        assert_eq!(
            hex(&output[output.len() - 32..]),
            "096ca930409e968dc8c1aae69e006a8bc5539c7677d04d84c272d64b127b23d4"
        );
        assert_eq!(
            hex(&sha2::Sha256::digest(&output)),
            "83d3d22954007209708343c2b17a0072940cfa87efa3018c498d6f762a822cb1"
        );
    }

    #[test]
    fn server_signs_at_scheme_0_when_the_client_did() {
        let mut c1 = packet(&test_random(9)[..HANDSHAKE_SIZE]);
        c1[4..8].copy_from_slice(&[10, 0, 32, 18]);
        imprint_digest(&mut c1, Scheme::KeyFirst, &FP_KEY[..30]);
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&c1);
        let mut output = BytesMut::new();
        let mut server = ServerHandshake::new(7, &test_random(1));
        server.handle_input(&mut input, &mut output).unwrap();
        assert_eq!(server.mode(), Some(HandshakeMode::Digest { scheme: 0 }));
        let s1 = packet(&output[1..1537]);
        assert!(find_digest(&s1, &FMS_KEY[..36], [Scheme::KeyFirst, Scheme::KeyFirst]).is_some());
        // ffmpeg's check would look for the C1 digest at scheme 1, so restate S2's signature here.
        let c1_digest = find_digest(&c1, &FP_KEY[..30], [Scheme::KeyFirst; 2]).unwrap().1;
        let s2 = &output[1537..];
        let key = answer_key(&c1_digest, &FMS_KEY);
        assert_eq!(s2[SIGNED_LEN..], hmac_sha256(&key, &[&s2[..SIGNED_LEN]]));
    }

    #[test]
    fn plain_c1_gets_plain_answer_with_echo() {
        let mut c1 = packet(&test_random(3)[..HANDSHAKE_SIZE]);
        c1[..8].copy_from_slice(&[0, 0, 0x30, 0x39, 0, 0, 0, 0]);
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&c1);
        let mut output = BytesMut::new();
        let random = test_random(4);
        let mut server = ServerHandshake::new(0xAABB_CCDD, &random);
        server.handle_input(&mut input, &mut output).unwrap();
        assert_eq!(server.mode(), Some(HandshakeMode::Plain));
        assert_eq!(server.peer_version(), Some([0; 4]));
        assert_eq!(&output[1..9], &[0xAA, 0xBB, 0xCC, 0xDD, 0, 0, 0, 0]);
        assert_eq!(&output[9..1537], &random[8..HANDSHAKE_SIZE]);
        let s2 = &output[1537..];
        assert_eq!(&s2[..4], &c1[..4], "S2 time echoes C1's");
        assert_eq!(&s2[4..8], &[0xAA, 0xBB, 0xCC, 0xDD], "time2 is ours");
        assert_eq!(&s2[8..], &c1[8..]);
        ffmpeg_player_accepts(&c1, &output).unwrap();
    }

    #[test]
    fn bad_digest_falls_back_to_plain() {
        let mut capture = *FFMPEG_PUBLISH_C0C1;
        capture[600] ^= 1; // inside the signed bytes, outside the digest
        let mut output = BytesMut::new();
        let mut server = ServerHandshake::new(5, &test_random(0));
        server.handle_input(&mut BytesMut::from(&capture[..]), &mut output).unwrap();
        assert_eq!(server.mode(), Some(HandshakeMode::Plain));
        assert_eq!(server.peer_version(), Some([9, 0, 124, 2]));
        assert_eq!(&output[5..9], &[0; 4], "zero version: ffmpeg must not look for a digest");
        assert_eq!(&output[1537 + 8..], &capture[9..]);
        ffmpeg_player_accepts(&capture[1..], &output).unwrap();
    }

    /// Drives a client and a server against each other, moving at most `chunk` bytes per step
    /// in each direction, and sends `client_data` / `server_data` (standing in for the first
    /// chunks of the session) as soon as each side is done.
    fn run_pair(
        digest: bool,
        chunk: usize,
        client_data: &[u8],
        server_data: &[u8],
    ) -> (ClientHandshake, ServerHandshake, BytesMut, BytesMut) {
        let mut client = ClientHandshake::new(1000, &test_random(1), digest);
        let mut server = ServerHandshake::new(2000, &test_random(2));
        let (mut c2s, mut s2c) = (BytesMut::new(), BytesMut::new());
        let (mut server_in, mut client_in) = (BytesMut::new(), BytesMut::new());
        let (mut client_done, mut server_done) = (false, false);
        client.start(&mut c2s);
        for _ in 0..100_000 {
            let n = chunk.min(c2s.len());
            server_in.extend_from_slice(&c2s.split_to(n));
            if server.handle_input(&mut server_in, &mut s2c).unwrap() == HandshakeProgress::Done
                && !server_done
            {
                server_done = true;
                s2c.extend_from_slice(server_data);
            }
            let n = chunk.min(s2c.len());
            client_in.extend_from_slice(&s2c.split_to(n));
            if client.handle_input(&mut client_in, &mut c2s).unwrap() == HandshakeProgress::Done
                && !client_done
            {
                client_done = true;
                c2s.extend_from_slice(client_data);
            }
            if client_done && server_done && c2s.is_empty() && s2c.is_empty() {
                return (client, server, client_in, server_in);
            }
        }
        panic!("no progress: chunk {chunk}, client {client:?}, server {server:?}");
    }

    #[test]
    fn pair_completes_at_every_fragmentation() {
        let client_data = b"\x03connect...".as_slice();
        let server_data = b"\x02window ack".as_slice();
        for digest in [false, true] {
            for chunk in 1..=1 + 2 * HANDSHAKE_SIZE + 20 {
                let (client, server, client_in, server_in) =
                    run_pair(digest, chunk, client_data, server_data);
                let mode =
                    if digest { HandshakeMode::Digest { scheme: 1 } } else { HandshakeMode::Plain };
                assert_eq!(server.mode(), Some(mode), "chunk {chunk}");
                assert_eq!(client.mode(), Some(mode), "chunk {chunk}");
                assert_eq!(client.s2_verified(), Some(true), "chunk {chunk}");
                let expected_version = if digest { CLIENT_VERSION } else { [0; 4] };
                assert_eq!(server.peer_version(), Some(expected_version));
                assert_eq!(&server_in[..], client_data, "chunk {chunk}");
                assert_eq!(&client_in[..], server_data, "chunk {chunk}");
            }
        }
    }

    #[test]
    fn our_digest_client_passes_ffmpeg_style_server_checks() {
        // Our client's C1 is ffmpeg-shaped, so the ffmpeg emulation applies to it as well.
        let mut client = ClientHandshake::new(0, &test_random(5), true);
        let mut c0c1 = BytesMut::new();
        client.start(&mut c0c1);
        assert_eq!(c0c1.len(), 1 + HANDSHAKE_SIZE);
        assert_eq!(&c0c1[..9], &[3, 0, 0, 0, 0, 9, 0, 124, 2]);
        let mut output = BytesMut::new();
        let mut server = ServerHandshake::new(0, &test_random(6));
        server.handle_input(&mut c0c1.clone(), &mut output).unwrap();
        ffmpeg_player_accepts(&c0c1[1..], &output).unwrap();
    }

    #[test]
    fn client_against_plain_only_server_echoes_and_accepts_s2() {
        // An old server: S1 with a zero version, S2 = C1 echoed verbatim.
        let mut client = ClientHandshake::new(1, &test_random(1), true);
        let mut c0c1 = BytesMut::new();
        client.start(&mut c0c1);
        let mut s1 = packet(&test_random(8)[..HANDSHAKE_SIZE]);
        s1[4..8].copy_from_slice(&[0; 4]);
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&s1);
        input.put_slice(&c0c1[1..]);
        let mut c2 = BytesMut::new();
        assert_eq!(client.handle_input(&mut input, &mut c2), Ok(HandshakeProgress::Done));
        assert_eq!(client.mode(), Some(HandshakeMode::Plain));
        assert_eq!(client.s2_verified(), Some(true));
        assert_eq!(&c2[..4], &s1[..4]);
        assert_eq!(&c2[4..8], &1u32.to_be_bytes());
        assert_eq!(&c2[8..], &s1[8..]);
    }

    #[test]
    fn client_tolerates_a_wrong_s2() {
        let mut client = ClientHandshake::new(1, &test_random(1), true);
        let mut out = BytesMut::new();
        client.start(&mut out);
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&test_random(2)[..2 * HANDSHAKE_SIZE]);
        assert_eq!(client.handle_input(&mut input, &mut out), Ok(HandshakeProgress::Done));
        assert_eq!(client.s2_verified(), Some(false));
    }

    #[test]
    fn start_is_idempotent_and_implicit() {
        let mut explicit = ClientHandshake::new(3, &test_random(1), true);
        let mut a = BytesMut::new();
        explicit.start(&mut a);
        explicit.start(&mut a);
        assert_eq!(a.len(), 1 + HANDSHAKE_SIZE);
        let mut implicit = ClientHandshake::new(3, &test_random(1), true);
        let mut b = BytesMut::new();
        let progress = implicit.handle_input(&mut BytesMut::new(), &mut b);
        assert_eq!(progress, Ok(HandshakeProgress::InProgress));
        assert_eq!(a, b);
    }

    #[test]
    fn rtmpe_and_other_versions_are_refused() {
        for version in (0..=255u8).filter(|&v| v != RTMP_VERSION) {
            let mut server = ServerHandshake::new(0, &[]);
            let mut input = BytesMut::from(&[version, 0, 0][..]);
            let mut output = BytesMut::new();
            let err = HandshakeError::UnsupportedVersion(version);
            assert_eq!(server.handle_input(&mut input, &mut output), Err(err.clone()));
            assert!(output.is_empty());
            // It stays failed.
            assert_eq!(server.handle_input(&mut input, &mut output), Err(err.clone()));

            let mut client = ClientHandshake::new(0, &[], false);
            let mut c0c1 = BytesMut::new();
            client.start(&mut c0c1);
            let mut input = BytesMut::from(&[version][..]);
            assert_eq!(client.handle_input(&mut input, &mut c0c1), Err(err));
            assert_eq!(c0c1.len(), 1 + HANDSHAKE_SIZE, "no C2 after a bad S0");
        }
        let msg = HandshakeError::UnsupportedVersion(6).to_string();
        assert!(msg.contains('6') && msg.contains("RTMPE"), "{msg}");
    }

    #[test]
    fn truncated_c0c1_is_in_progress_without_output() {
        for len in 0..FFMPEG_PUBLISH_C0C1.len() {
            let mut server = ServerHandshake::new(0, &test_random(0));
            let mut input = BytesMut::from(&FFMPEG_PUBLISH_C0C1[..len]);
            let mut output = BytesMut::new();
            let progress = server.handle_input(&mut input, &mut output);
            assert_eq!(progress, Ok(HandshakeProgress::InProgress), "len {len}");
            assert!(output.is_empty() && input.is_empty(), "len {len}");
            assert_eq!(server.mode(), None);
        }
    }

    #[test]
    fn done_server_leaves_later_input_alone() {
        let mut server = ServerHandshake::new(0, &test_random(0));
        let mut input = BytesMut::from(&FFMPEG_PUBLISH_C0C1[..]);
        input.extend_from_slice(&[0xEE; HANDSHAKE_SIZE]);
        let mut output = BytesMut::new();
        assert_eq!(server.handle_input(&mut input, &mut output), Ok(HandshakeProgress::Done));
        input.extend_from_slice(b"chunks");
        assert_eq!(server.handle_input(&mut input, &mut output), Ok(HandshakeProgress::Done));
        assert_eq!(&input[..], b"chunks");
        assert_eq!(output.len(), 1 + 2 * HANDSHAKE_SIZE);
    }

    proptest! {
        /// Any bytes, in any fragmentation: no panic, and the outcome depends only on C0 and
        /// on how many bytes came.
        #[test]
        fn server_survives_garbage(
            garbage in proptest::collection::vec(any::<u8>(), 0..5000),
            chunk in 1usize..700,
            random_len in 0usize..RANDOM_LEN + 8,
        ) {
            let random = test_random(0);
            let mut server = ServerHandshake::new(9, &random[..random_len.min(RANDOM_LEN)]);
            let mut input = BytesMut::new();
            let mut output = BytesMut::new();
            let mut last = Ok(HandshakeProgress::InProgress);
            for piece in garbage.chunks(chunk) {
                input.extend_from_slice(piece);
                last = server.handle_input(&mut input, &mut output);
            }
            match garbage.first() {
                Some(&v) if v != RTMP_VERSION => {
                    prop_assert_eq!(last, Err(HandshakeError::UnsupportedVersion(v)));
                    prop_assert!(output.is_empty());
                }
                _ => {
                    let total = 1 + 2 * HANDSHAKE_SIZE;
                    let expected = if garbage.len() >= total {
                        HandshakeProgress::Done
                    } else {
                        HandshakeProgress::InProgress
                    };
                    prop_assert_eq!(last, Ok(expected));
                    prop_assert_eq!(input.len(), garbage.len().saturating_sub(total));
                    let answered = garbage.len() > HANDSHAKE_SIZE;
                    prop_assert_eq!(output.len(), if answered { total } else { 0 });
                    prop_assert_eq!(server.mode().is_some(), answered);
                }
            }
        }

        #[test]
        fn client_survives_garbage(
            garbage in proptest::collection::vec(any::<u8>(), 0..5000),
            chunk in 1usize..700,
            digest: bool,
        ) {
            let mut client = ClientHandshake::new(9, &test_random(3), digest);
            let mut input = BytesMut::new();
            let mut output = BytesMut::new();
            client.start(&mut output);
            let mut last = Ok(HandshakeProgress::InProgress);
            for piece in garbage.chunks(chunk) {
                input.extend_from_slice(piece);
                last = client.handle_input(&mut input, &mut output);
            }
            match garbage.first() {
                Some(&v) if v != RTMP_VERSION => {
                    prop_assert_eq!(last, Err(HandshakeError::UnsupportedVersion(v)));
                }
                _ => {
                    let total = 1 + 2 * HANDSHAKE_SIZE;
                    let done = garbage.len() >= total;
                    prop_assert_eq!(last.is_ok(), true);
                    prop_assert_eq!(last == Ok(HandshakeProgress::Done), done);
                    prop_assert_eq!(input.len(), garbage.len().saturating_sub(total));
                    let c2 = if garbage.len() > HANDSHAKE_SIZE { HANDSHAKE_SIZE } else { 0 };
                    prop_assert_eq!(output.len(), 1 + HANDSHAKE_SIZE + c2);
                    prop_assert_eq!(client.s2_verified().is_some(), done);
                }
            }
        }

        /// Short random input (down to none) still gives a working handshake.
        #[test]
        fn short_random_still_works(
            random in proptest::collection::vec(any::<u8>(), 0..64),
            digest: bool,
            chunk in 1usize..3100,
        ) {
            let mut client = ClientHandshake::new(1, &random, digest);
            let mut server = ServerHandshake::new(2, &random);
            let mut c0c1 = BytesMut::new();
            client.start(&mut c0c1);
            let mut answer = BytesMut::new();
            let mut server_in = BytesMut::new();
            for piece in c0c1.chunks(chunk) {
                server_in.extend_from_slice(piece);
                server.handle_input(&mut server_in, &mut answer).unwrap();
            }
            let mut c2 = BytesMut::new();
            prop_assert_eq!(client.handle_input(&mut answer, &mut c2), Ok(HandshakeProgress::Done));
            prop_assert_eq!(server.handle_input(&mut c2, &mut answer), Ok(HandshakeProgress::Done));
            prop_assert_eq!(client.mode(), server.mode());
            prop_assert_eq!(client.s2_verified(), Some(true));
        }
    }
}
