//! Sans-IO RTMP.
//!
//! Everything in this crate is pure code over bytes: it never touches a socket, a clock, a random
//! number generator or a thread. Time and randomness are arguments, input is `handle_*`, output is
//! `poll_*` or an output buffer the caller drains. The server (`rtmp-relay`) and the load tester
//! (`rtmp-loadtest`) both drive it, and every part of it can be tested byte for byte.
//!
//! Layers, bottom up:
//! - [`handshake`]: C0-C2 / S0-S2, plain and FP9 digest, both roles.
//! - [`chunk`]: the chunk stream, decoder with per-chunk-stream reassembly and [`chunk::Limits`],
//!   encoder that turns one message into ready-to-send chunk bytes.
//! - [`amf0`], [`amf3`]: value codecs with depth, length and count limits.
//! - [`message`]: typed messages by type id (protocol control, user control, command, data, media).
//! - [`command`]: NetConnection / NetStream commands and the `onStatus` builders.
//! - [`session`]: server and client session state machines on top of all of the above.
//! - [`media`]: FLV audio/video tag inspection: keyframes, sequence headers, codec configuration.
//! - [`time`]: 32-bit wrapping RTMP timestamps.
#![forbid(unsafe_code)]

pub mod amf0;
pub mod amf3;
pub mod chunk;
pub mod command;
pub mod handshake;
pub mod media;
pub mod message;
pub mod session;
pub mod time;
