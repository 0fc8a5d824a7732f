//! A small benchmark harness shared by the bench binaries (`harness = false` targets).
//!
//! Why not criterion: on a small, shared machine criterion's default 3 s warm-up and 5 s of
//! measurement per benchmark would put `cargo bench` well past its time budget, and its
//! dependency tree costs minutes to build on two cores. What we need is a few robust numbers:
//!
//! - A [`Suite`] holds every benchmark of a binary. Each one is calibrated once so that a sample
//!   runs for about [`SAMPLE_MS`] ms. Then the suite makes [`PASSES`] passes over all its
//!   benchmarks, [`SAMPLES_PER_PASS`] samples of each per pass: a slow drift of the machine
//!   (another job starting, the host's clock boost) hits every benchmark alike instead of a
//!   few of them, and the `passes` column shows how far the per-pass medians spread.
//! - A sample during which the thread was preempted (its involuntary context switches, from
//!   `getrusage(RUSAGE_THREAD)`, moved) is retaken, up to [`MAX_ATTEMPTS_FACTOR`] times the
//!   samples wanted: on a busy two-core machine another process taking the core mid-sample is
//!   the largest noise. What is left (interrupts, a neighbour on the other core sharing cache
//!   and memory bandwidth) lands in the tails.
//! - The **median** ns per iteration over all clean samples is the figure to read; the
//!   interquartile range (IQR, as a percentage of the median) says how noisy the samples were.
//! - glibc's heap trimming is turned off (`M_TRIM_THRESHOLD`), unless `BENCH_MALLOC_DEFAULTS=1`.
//!   With the defaults, freeing more than 128 KiB at the top of the heap hands it back to the
//!   kernel and the next allocations fault it in again, page by page. Whether that happens
//!   depends on where earlier benchmarks left the heap, which made fan-out figures swing by
//!   50% between runs (a GOP of 10 KB frames is freed at every keyframe). The `faults` columns
//!   count minor page faults per iteration, so a run with the defaults shows what they cost.
//! - Heap allocations are counted by a `#[global_allocator]` wrapper around the system allocator
//!   ([`CountingAlloc`]): every `alloc`, `alloc_zeroed` and `realloc` call counts one. The
//!   allocations per iteration (mean over the samples) come from the timed samples themselves,
//!   so they are the steady state after calibration (which is the warm-up).
//!
//! `cargo bench` passes `--bench` to the binary: then it measures and prints tables. Without it
//! (`cargo test --benches`, `cargo test --all-targets`) each benchmark body runs twice as a
//! smoke test, so the benches stay compiled, correct and quick under test.
//!
//! Knobs (environment): `BENCH_PASSES` (default 7), `BENCH_SAMPLES` (per pass, default 11),
//! `BENCH_SAMPLE_MS` (default 2), `BENCH_MALLOC_DEFAULTS` (1: leave glibc's tuning alone). A
//! positional argument filters benchmarks by substring: `cargo bench --bench fanout -- cache`.

// Each bench binary includes this module and uses a different subset of it.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use std::hint::black_box;

/// Passes over all the benchmarks of a suite.
pub const PASSES: usize = 7;
/// Clean (not preempted) samples wanted per benchmark per pass.
pub const SAMPLES_PER_PASS: usize = 11;
/// At most this many times the samples wanted are taken to find clean ones.
pub const MAX_ATTEMPTS_FACTOR: usize = 4;
/// Fewer clean samples than this, and the statistics use every sample taken.
const MIN_CLEAN: usize = 7;
/// Target duration of one sample, in milliseconds: short, so that most samples fit between
/// two preemptions of a busy machine.
pub const SAMPLE_MS: u64 = 2;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting allocation calls (`alloc`, `alloc_zeroed`, `realloc`).
#[derive(Debug)]
pub struct CountingAlloc;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the counter has no effect on the memory handed out.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which `System` shares.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes through
        // this wrapper).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s size contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// The calling thread's involuntary context switches (the scheduler took the core) and minor
/// page faults so far.
fn rusage() -> (i64, i64) {
    // SAFETY: `rusage` is plain integers, so all-zero is a valid value, and `getrusage` only
    // writes to the struct it is given.
    unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_THREAD, &mut usage) == 0 {
            (usage.ru_nivcsw, usage.ru_minflt)
        } else {
            (0, 0)
        }
    }
}

/// Keeps glibc from giving freed memory at the top of the heap back to the kernel (and taking
/// it back, page by page, on the next allocations). See the module doc.
fn keep_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: `mallopt` only changes allocator tuning; called before any benchmark runs.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// Allocation calls so far, whole process.
#[inline]
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// What one timed phase of one sample cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    pub time: Duration,
    pub allocs: u64,
}

impl Phase {
    pub fn add(&mut self, time: Duration, allocs: u64) {
        self.time += time;
        self.allocs += allocs;
    }
}

/// Per-iteration figures of one phase over the samples kept.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Nanoseconds per iteration.
    pub median: f64,
    pub min: f64,
    pub p25: f64,
    pub p75: f64,
    /// Lowest and highest of the per-pass medians.
    pub pass_low: f64,
    pub pass_high: f64,
    /// Allocation calls per iteration (mean over the samples: a count, and periodic costs such
    /// as a buffer's growth should show).
    pub allocs: f64,
    /// Minor page faults per iteration, all phases of the sample together (mean).
    pub faults: f64,
    /// Samples that ran without being preempted.
    pub clean: usize,
    /// Samples taken.
    pub taken: usize,
}

impl Stats {
    /// Interquartile range as a percentage of the median.
    pub fn iqr_pct(&self) -> f64 {
        self.pct(self.p75 - self.p25)
    }

    /// Range of the per-pass medians as a percentage of the median.
    pub fn passes_pct(&self) -> f64 {
        self.pct(self.pass_high - self.pass_low)
    }

    fn pct(&self, ns: f64) -> f64 {
        if self.median > 0.0 {
            ns / self.median * 100.0
        } else {
            0.0
        }
    }

    /// `IQR%`, with `(all N)` when too few samples were clean and all N taken were used.
    pub fn iqr(&self) -> String {
        if self.clean < MIN_CLEAN {
            format!("{:.1}% (all {})", self.iqr_pct(), self.taken)
        } else {
            format!("{:.1}%", self.iqr_pct())
        }
    }

    /// Spread of the per-pass medians.
    pub fn passes(&self) -> String {
        format!("{:.1}%", self.passes_pct())
    }

    /// The same figures divided by `n` (per frame of a batch, per subscriber...).
    pub fn per(&self, n: f64) -> Stats {
        Stats { faults: self.faults / n, ..self.map(|ns| ns / n, self.allocs / n) }
    }

    /// These figures less a fixed cost per iteration (timer overhead).
    pub fn minus_ns(&self, overhead: f64) -> Stats {
        self.map(|ns| (ns - overhead).max(0.0), self.allocs)
    }

    fn map(&self, f: impl Fn(f64) -> f64, allocs: f64) -> Stats {
        Stats {
            median: f(self.median),
            min: f(self.min),
            p25: f(self.p25),
            p75: f(self.p75),
            pass_low: f(self.pass_low),
            pass_high: f(self.pass_high),
            allocs,
            ..*self
        }
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn median_of(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    quantile(&values, 0.5)
}

/// One sample's per-iteration figures for one phase.
#[derive(Debug, Clone, Copy)]
struct Sample {
    pass: usize,
    ns: f64,
    allocs: f64,
    faults: f64,
    clean: bool,
}

fn stats(samples: &[Sample], passes: usize) -> Stats {
    let clean = samples.iter().filter(|s| s.clean).count();
    let kept: Vec<&Sample> = samples.iter().filter(|s| s.clean || clean < MIN_CLEAN).collect();
    let mut ns: Vec<f64> = kept.iter().map(|s| s.ns).collect();
    ns.sort_by(f64::total_cmp);
    let pass_medians: Vec<f64> = (0..passes)
        .map(|pass| kept.iter().filter(|s| s.pass == pass).map(|s| s.ns).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .map(median_of)
        .collect();
    Stats {
        median: quantile(&ns, 0.5),
        min: ns[0],
        p25: quantile(&ns, 0.25),
        p75: quantile(&ns, 0.75),
        pass_low: pass_medians.iter().copied().fold(f64::INFINITY, f64::min),
        pass_high: pass_medians.iter().copied().fold(0.0, f64::max),
        allocs: kept.iter().map(|s| s.allocs).sum::<f64>() / kept.len() as f64,
        faults: kept.iter().map(|s| s.faults).sum::<f64>() / kept.len() as f64,
        clean,
        taken: samples.len(),
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Measure (`cargo bench`) or smoke-test (`cargo test`) mode, the name filter and the knobs.
#[derive(Debug)]
pub struct Harness {
    measure: bool,
    filter: Option<String>,
    passes: usize,
    samples: usize,
    sample_time: Duration,
}

impl Harness {
    pub fn from_args() -> Self {
        let mut measure = false;
        let mut filter = None;
        if std::env::var("BENCH_MALLOC_DEFAULTS").as_deref() != Ok("1") {
            keep_heap();
        }
        for arg in std::env::args().skip(1) {
            if arg == "--bench" {
                measure = true;
            } else if !arg.starts_with('-') {
                filter = Some(arg);
            }
        }
        Harness {
            measure,
            filter,
            passes: env_or("BENCH_PASSES", PASSES as u64).max(1) as usize,
            samples: env_or("BENCH_SAMPLES", SAMPLES_PER_PASS as u64).max(1) as usize,
            sample_time: Duration::from_millis(env_or("BENCH_SAMPLE_MS", SAMPLE_MS).max(1)),
        }
    }

    /// True under `cargo bench`; false in the smoke-test mode of `cargo test`.
    pub fn measuring(&self) -> bool {
        self.measure
    }

    /// Whether the benchmark `name` passes the filter.
    pub fn wants(&self, name: &str) -> bool {
        match &self.filter {
            Some(f) => name.contains(f.as_str()),
            None => true,
        }
    }

    /// What one `Instant::now()` costs here, in ns (median over a few batches): the overhead
    /// inside every interval that is timed between two calls.
    pub fn timer_overhead_ns(&self) -> f64 {
        median_of(
            (0..15)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..10_000 {
                        black_box(Instant::now());
                    }
                    start.elapsed().as_nanos() as f64 / 10_000.0
                })
                .collect(),
        )
    }
}

/// A benchmark's handle in its [`Suite`], to fetch its [`Stats`] after [`Suite::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BenchId(usize);

type SampleFn<'a> = Box<dyn FnMut(u64) -> Vec<Phase> + 'a>;

struct Entry<'a> {
    round: u64,
    sample: SampleFn<'a>,
    iters: u64,
    /// Per phase.
    samples: Vec<Vec<Sample>>,
}

/// The benchmarks of one binary, measured in interleaved passes.
pub struct Suite<'a> {
    harness: &'a Harness,
    entries: Vec<Entry<'a>>,
}

impl std::fmt::Debug for Suite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suite").field("benchmarks", &self.entries.len()).finish()
    }
}

impl<'a> Suite<'a> {
    pub fn new(harness: &'a Harness) -> Self {
        Suite { harness, entries: Vec::new() }
    }

    /// Adds a benchmark whose `sample(iters)` runs `iters` iterations and reports each of its
    /// phases (the same number every call). Iteration counts are multiples of `round` (a whole
    /// GOP, say). `None` when the filter leaves `name` out.
    pub fn add(
        &mut self,
        name: &str,
        round: u64,
        sample: impl FnMut(u64) -> Vec<Phase> + 'a,
    ) -> Option<BenchId> {
        if !self.harness.wants(name) {
            return None;
        }
        self.entries.push(Entry {
            round: round.max(1),
            sample: Box::new(sample),
            iters: 0,
            samples: Vec::new(),
        });
        Some(BenchId(self.entries.len() - 1))
    }

    /// Adds a benchmark of `f`, one call per iteration.
    pub fn add_fn<R>(&mut self, name: &str, mut f: impl FnMut() -> R + 'a) -> Option<BenchId> {
        self.add(name, 1, move |iters| {
            let allocs = allocations();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(f());
            }
            let time = start.elapsed();
            // Read before `vec!` allocates.
            let allocs = allocations() - allocs;
            vec![Phase { time, allocs }]
        })
    }

    /// Measures every benchmark (or smoke-runs each twice, in test mode).
    pub fn run(mut self) -> Results {
        let h = self.harness;
        if !h.measure {
            let stats = self
                .entries
                .iter_mut()
                .map(|e| {
                    (e.sample)(e.round);
                    let phases = (e.sample)(e.round);
                    let samples = phases.iter().map(|p| {
                        let ns = p.time.as_nanos() as f64 / e.round as f64;
                        let allocs = p.allocs as f64 / e.round as f64;
                        vec![Sample { pass: 0, ns, allocs, faults: 0.0, clean: true }]
                    });
                    samples.map(|s| stats(&s, 1)).collect()
                })
                .collect();
            return Results { stats };
        }
        let started = Instant::now();
        for e in &mut self.entries {
            e.iters = calibrate(&mut e.sample, e.round, h.sample_time);
        }
        for pass in 0..h.passes {
            for e in &mut self.entries {
                // One sample to warm the caches after the other benchmarks ran.
                (e.sample)(e.iters);
                let mut clean = 0;
                for _ in 0..h.samples * MAX_ATTEMPTS_FACTOR {
                    let (switches, faults) = rusage();
                    let phases = (e.sample)(e.iters);
                    let (switches_after, faults_after) = rusage();
                    let preempted = switches_after != switches;
                    let faults = (faults_after - faults) as f64 / e.iters as f64;
                    e.samples.resize_with(phases.len(), Vec::new);
                    for (phase, samples) in phases.iter().zip(&mut e.samples) {
                        samples.push(Sample {
                            pass,
                            ns: phase.time.as_nanos() as f64 / e.iters as f64,
                            allocs: phase.allocs as f64 / e.iters as f64,
                            faults,
                            clean: !preempted,
                        });
                    }
                    clean += usize::from(!preempted);
                    if clean >= h.samples {
                        break;
                    }
                }
            }
        }
        let (clean, taken) = self
            .entries
            .iter()
            .filter_map(|e| e.samples.first())
            .fold((0, 0), |(clean, taken), s| {
                (clean + s.iter().filter(|s| s.clean).count(), taken + s.len())
            });
        println!(
            "measured {} benchmarks in {:.1} s: {} passes, {} of {} samples clean (not preempted), \
             {} ms each",
            self.entries.len(),
            started.elapsed().as_secs_f64(),
            h.passes,
            clean,
            taken,
            h.sample_time.as_millis()
        );
        let stats = self
            .entries
            .iter()
            .map(|e| e.samples.iter().map(|s| stats(s, h.passes)).collect())
            .collect();
        Results { stats }
    }
}

/// Grows the iteration count until a sample takes a quarter of `target`, then scales it to
/// `target`. These runs are the warm-up.
fn calibrate(sample: &mut SampleFn<'_>, round: u64, target: Duration) -> u64 {
    let mut iters = round;
    loop {
        let took: Duration = sample(iters).iter().map(|p| p.time).sum();
        if took >= target / 4 || iters >= 1 << 40 {
            let scale = target.as_secs_f64() / took.as_secs_f64().max(1e-9);
            return ((iters as f64 * scale) as u64).div_ceil(round).max(1) * round;
        }
        iters *= 2;
    }
}

/// What [`Suite::run`] measured.
#[derive(Debug)]
pub struct Results {
    stats: Vec<Vec<Stats>>,
}

impl Results {
    /// The statistics of each phase of benchmark `id`.
    pub fn get(&self, id: BenchId) -> &[Stats] {
        &self.stats[id.0]
    }

    /// The statistics of a one-phase benchmark.
    pub fn one(&self, id: BenchId) -> Stats {
        self.stats[id.0][0]
    }
}

/// A plain text table, printed once complete; in smoke-test mode only the row names.
#[derive(Debug)]
pub struct Table {
    title: String,
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(title: &str, header: &[&str]) -> Self {
        Table {
            title: title.to_owned(),
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn print(&self, harness: &Harness) {
        if self.rows.is_empty() {
            return;
        }
        if !harness.measuring() {
            let names: Vec<&str> = self.rows.iter().map(|r| r[0].as_str()).collect();
            println!("smoke ok ({}): {}", self.title, names.join("; "));
            return;
        }
        let columns = self.header.len();
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r.get(c).map_or(0, String::len))
                    .chain([self.header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        println!("\n## {}\n", self.title);
        let line = |cells: &[String]| {
            let padded: Vec<String> = (0..columns)
                .map(|c| {
                    let cell = cells.get(c).map_or("", String::as_str);
                    // First column left-aligned (names), the rest right-aligned (figures).
                    if c == 0 {
                        format!("{cell:<w$}", w = widths[c])
                    } else {
                        format!("{cell:>w$}", w = widths[c])
                    }
                })
                .collect();
            println!("| {} |", padded.join(" | "));
        };
        line(&self.header);
        let rule: Vec<String> = widths
            .iter()
            .enumerate()
            .map(
                |(c, w)| if c == 0 { "-".repeat(w + 2) } else { format!("{}:", "-".repeat(w + 1)) },
            )
            .collect();
        println!("|{}|", rule.join("|"));
        for row in &self.rows {
            line(row);
        }
    }
}

/// Formats nanoseconds with a sensible unit.
pub fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else if ns >= 1e4 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns >= 100.0 {
        format!("{ns:.0} ns")
    } else {
        format!("{ns:.1} ns")
    }
}

/// Formats an allocation count per iteration.
pub fn fmt_allocs(allocs: f64) -> String {
    if allocs == allocs.round() {
        format!("{allocs:.0}")
    } else {
        format!("{allocs:.3}")
    }
}

/// Formats minor page faults per iteration.
pub fn fmt_faults(faults: f64) -> String {
    format!("{faults:.2}")
}

/// Decimal gigabytes per second for `bytes` handled in `ns` nanoseconds (bytes/ns = GB/s).
pub fn fmt_gbps(bytes: usize, ns: f64) -> String {
    format!("{:.2} GB/s", bytes as f64 / ns)
}

/// A deterministic filler that looks like compressed media (no long runs, no patterns a
/// memcpy could benefit from), xorshift64.
pub fn filler(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// `head` (a real captured tag header) followed by filler up to `len` bytes.
pub fn payload(head: &[u8], len: usize, seed: u64) -> Vec<u8> {
    let mut out = head[..head.len().min(len)].to_vec();
    out.extend_from_slice(&filler(len - out.len(), seed));
    out
}
