#![no_main]

// The entries are shared with rtmp-proto's `fuzz_corpus` test; this target uses one of them.
#[allow(dead_code)]
#[path = "../entries/mod.rs"]
mod entries;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entries::amf0::run(data));
