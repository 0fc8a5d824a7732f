//! The fuzz targets on stable, in `cargo test`.
//!
//! The entry points of the cargo-fuzz targets (`fuzz/entries/`) are compiled in here as they
//! are, and each target's test runs through its entry:
//! 1. every file of its seed corpus, `fuzz/corpus-seed/<target>/` (real captures from
//!    `tests/data/` in the entry's input format, and hand-made inputs that reach deep states);
//! 2. every crasher found so far, `fuzz/regressions/<target>/`, so a fixed bug stays fixed;
//! 3. a bounded pseudo-random loop from a fixed seed: fresh random inputs and mutations of the
//!    seeds (2000 per target; `RTMP_FUZZ_ITERATIONS` sets another count).
//!
//! A failure names the file or the iteration, whose input can then be rerun under cargo-fuzz
//! (`cargo +nightly fuzz run <target> <file>`). Fuzzing proper is in `fuzz/README.md`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

#[path = "../../fuzz/entries/mod.rs"]
mod entries;

const DEFAULT_ITERATIONS: usize = 2000;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("readable directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files
}

/// A small xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Random bytes, mostly short: a few hundred bytes reach most states of most entries.
fn fresh(rng: &mut Rng) -> Vec<u8> {
    let len = match rng.below(4) {
        0 => rng.below(16),
        1 | 2 => rng.below(512),
        _ => rng.below(8192),
    };
    rng.bytes(len)
}

/// A seed with a few libFuzzer-style mutations: byte overwrites, insertions, deletions,
/// repeats, truncation.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 | 1 if at < data.len() => data[at] = rng.next() as u8,
            2 => {
                let len = rng.below(8);
                data.splice(at..at, rng.bytes(len));
            }
            3 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                data.drain(at..end);
            }
            4 if at < data.len() => {
                let end = (at + 1 + rng.below(16)).min(data.len());
                let piece = data[at..end].to_vec();
                data.splice(at..at, piece);
            }
            5 => data.truncate(at),
            _ => {}
        }
    }
    data
}

fn iterations() -> usize {
    std::env::var("RTMP_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(DEFAULT_ITERATIONS)
}

/// Runs one input, turning a panic into the name of what failed.
fn check(entry: fn(&[u8]), data: &[u8], what: &str, failures: &mut Vec<String>) {
    if catch_unwind(AssertUnwindSafe(|| entry(data))).is_err() {
        failures.push(what.to_owned());
    }
}

fn replay(target: &str) {
    let Some(&(_, entry)) = entries::TARGETS.iter().find(|(name, _)| *name == target) else {
        panic!("no fuzz entry {target}");
    };
    let dir = fuzz_dir();
    let seeds = files(&dir.join("corpus-seed").join(target));
    assert!(!seeds.is_empty(), "no seed corpus for {target} in {}", dir.display());
    let regressions = files(&dir.join("regressions").join(target));

    let mut failures = Vec::new();
    let mut corpus = Vec::new();
    for path in seeds.iter().chain(&regressions) {
        let data = std::fs::read(path).expect("readable corpus file");
        check(entry, &data, &path.display().to_string(), &mut failures);
        corpus.push(data);
    }

    // One fixed seed per target, from its name.
    let seed = target
        .bytes()
        .fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut rng = Rng(seed | 1);
    for i in 0..iterations() {
        let data = if i % 2 == 0 {
            fresh(&mut rng)
        } else {
            let seed = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, seed)
        };
        check(
            entry,
            &data,
            &format!("pseudo-random input {i} ({} bytes)", data.len()),
            &mut failures,
        );
    }
    assert!(failures.is_empty(), "{target} failed on:\n  {}", failures.join("\n  "));
}

macro_rules! targets {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        /// Every entry has a test above.
        #[test]
        fn every_target_is_tested() {
            let tested = [$(stringify!($name)),*];
            for (name, _) in entries::TARGETS {
                assert!(tested.contains(name), "fuzz target {name} has no test");
            }
        }
    };
}

targets!(handshake, chunk_decoder, chunk_roundtrip, amf0, amf3, session_server, media);
