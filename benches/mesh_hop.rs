//! The cost of a cross-shard hop, against the same hand-off within one shard.
//!
//! A player on a shard that does not own its stream receives every frame one hop later: the
//! owner sends the frame once over glommio's channel mesh, the mirror's executor wakes and
//! queues it. This measures that hop with the same machinery the runtime uses
//! (`MeshBuilder::full`, one executor per core), and beside it the local hand-off every player
//! pays anyway (a frame pushed onto a local channel wakes the task that drains it).
//!
//! Paced mode sends one timestamped message per millisecond, like a publisher's frames: the
//! receiving executor is usually asleep, so this includes its wake-up, which is what a live
//! frame pays. Burst mode sends back to back: throughput of the hop, and the latency a frame
//! sees behind a backlog.
//!
//! `cargo bench --bench mesh_hop` measures; without `--bench` (`cargo test --benches`) it runs a
//! few messages of each as a smoke test. Knob: `MESH_HOP_MESSAGES` (paced, default 3000).

use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::channels::local_channel;
use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;

/// A message stamped when it was sent.
type Stamp = Instant;

const MESH_CAPACITY: usize = 1024;

fn main() {
    let measuring = std::env::args().any(|a| a == "--bench");
    let paced: usize = match (measuring, std::env::var("MESH_HOP_MESSAGES")) {
        (_, Ok(n)) => n.parse().unwrap_or(3000),
        (true, Err(_)) => 3000,
        (false, Err(_)) => 20,
    };
    let burst = if measuring { 200_000 } else { 100 };
    let cores = core_affinity::get_core_ids().map_or(1, |c| c.len());
    let (sender_cpu, receiver_cpu) = (0, if cores > 1 { 1 } else { 0 });

    let rows = [
        (
            "cross-shard, paced 1/ms",
            cross_shard(paced, Some(Duration::from_millis(1)), (sender_cpu, receiver_cpu)),
        ),
        ("local, paced 1/ms", local(paced, Some(Duration::from_millis(1)), sender_cpu)),
        ("cross-shard, burst", cross_shard(burst, None, (sender_cpu, receiver_cpu))),
        ("local, burst", local(burst, None, sender_cpu)),
    ];
    if !measuring {
        for (name, (histogram, _)) in &rows {
            assert!(!histogram.is_empty(), "{name}: nothing received");
        }
        return;
    }
    println!("hand-off latency, send -> receiving task running (µs); cpus {sender_cpu} -> {receiver_cpu}");
    println!(
        "{:<26} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "", "messages", "p50", "p90", "p99", "p99.9", "msgs/s"
    );
    for (name, (h, rate)) in &rows {
        let q = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        println!(
            "{name:<26} {:>9} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>10.0}",
            h.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(0.999),
            rate
        );
    }
}

/// What the receiving side saw: nanoseconds in flight per message, and the arrival rate.
struct Arrivals {
    expected: usize,
    in_flight: Histogram<u64>,
    first: Option<Instant>,
}

impl Arrivals {
    fn new(expected: usize) -> Self {
        let in_flight =
            Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds");
        Arrivals { expected, in_flight, first: None }
    }

    /// Records one arrival; true once every expected message has arrived.
    fn record(&mut self, sent: Stamp) -> bool {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.in_flight.saturating_record(now.duration_since(sent).as_nanos() as u64);
        self.in_flight.len() as usize == self.expected
    }

    fn finish(self) -> (Histogram<u64>, f64) {
        let seconds = self.first.map_or(0.0, |f| f.elapsed().as_secs_f64());
        let rate = if seconds > 0.0 { self.expected as f64 / seconds } else { 0.0 };
        (self.in_flight, rate)
    }
}

/// Sends `count` stamps from an executor on `cpus.0` to one on `cpus.1` over a two-peer mesh;
/// the receiver's histogram of nanoseconds in flight, and messages per second.
fn cross_shard(
    count: usize,
    pace: Option<Duration>,
    cpus: (usize, usize),
) -> (Histogram<u64>, f64) {
    let mesh: MeshBuilder<Stamp, Full> = MeshBuilder::full(2, MESH_CAPACITY);
    let sender = {
        let mesh = mesh.clone();
        LocalExecutorBuilder::new(Placement::Fixed(cpus.0))
            .spawn(move || async move {
                let (senders, _receivers) = mesh.join().await.expect("join the mesh");
                let peer = 1 - senders.peer_id();
                for _ in 0..count {
                    if let Some(pace) = pace {
                        glommio::timer::sleep(pace).await;
                    }
                    senders.send_to(peer, Instant::now()).await.expect("send over the mesh");
                }
            })
            .expect("start the sending executor")
    };
    let receiver = LocalExecutorBuilder::new(Placement::Fixed(cpus.1))
        .spawn(move || async move {
            let (_senders, mut receivers) = mesh.join().await.expect("join the mesh");
            let mut arrivals = Arrivals::new(count);
            for (_, stream) in receivers.streams() {
                while let Some(sent) = stream.recv().await {
                    if arrivals.record(sent) {
                        break;
                    }
                }
            }
            arrivals.finish()
        })
        .expect("start the receiving executor");
    sender.join().expect("sender");
    receiver.join().expect("receiver")
}

/// The same over a local channel within one executor: the hand-off every player's writer pays.
fn local(count: usize, pace: Option<Duration>, cpu: usize) -> (Histogram<u64>, f64) {
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .spawn(move || async move {
            let (tx, rx) = local_channel::new_bounded::<Stamp>(MESH_CAPACITY);
            let receiving = glommio::spawn_local(async move {
                let mut arrivals = Arrivals::new(count);
                while let Some(sent) = rx.recv().await {
                    if arrivals.record(sent) {
                        break;
                    }
                }
                arrivals.finish()
            });
            for _ in 0..count {
                if let Some(pace) = pace {
                    glommio::timer::sleep(pace).await;
                }
                tx.send(Instant::now()).await.expect("send locally");
            }
            receiving.await
        })
        .expect("start the executor")
        .join()
        .expect("local run")
}
