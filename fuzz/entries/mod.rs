//! Fuzz entry points over rtmp-proto, shared by two harnesses:
//! - the cargo-fuzz targets in `fuzz/fuzz_targets/` (one target per entry, libFuzzer on nightly);
//! - rtmp-proto's `fuzz_corpus` test (`proto/tests/fuzz_corpus.rs`), which replays the seed
//!   corpus and every saved crasher on stable, plus a fixed-seed pseudo-random loop, in
//!   `cargo test`.
//!
//! Each entry is a `pub fn run(data: &[u8])` that accepts any byte string, never panics on its
//! own, and asserts the invariants its module doc lists: a failed assertion is a finding.
//! Entries use only rtmp-proto, `bytes` and `std`, so both harnesses can compile them.

pub mod input;

pub mod amf0;
pub mod amf3;
pub mod chunk_decoder;
pub mod chunk_roundtrip;
pub mod handshake_server;
pub mod media;
pub mod session_server;

/// An entry point.
pub type Entry = fn(&[u8]);

/// Every entry by the name of its cargo-fuzz target, which is also its directory under
/// `fuzz/corpus-seed/` and `fuzz/regressions/`.
pub const TARGETS: &[(&str, Entry)] = &[
    ("handshake", handshake_server::run),
    ("chunk_decoder", chunk_decoder::run),
    ("chunk_roundtrip", chunk_roundtrip::run),
    ("amf0", amf0::run),
    ("amf3", amf3::run),
    ("session_server", session_server::run),
    ("media", media::run),
];
