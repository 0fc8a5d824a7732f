//! Load generator executors: one glommio executor per `--cores`, each running its share of the
//! connections as one task per connection, plus a reporter that hands each interval's counters
//! to the controlling thread.

use std::rc::Rc;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{ExecutorJoinHandle, Latency, LocalExecutorBuilder, Placement, Shares};

use crate::cli::Plan;
use crate::conn::{sleep_until, Shard};
use crate::player::{self, PlayerSpec};
use crate::publisher::{self, PublisherSpec};
use crate::stats::{Gauges, IntervalStats};

/// Locked memory each executor registers for io_uring buffers. Sockets do not use them, so this
/// stays far below the common 8 MiB RLIMIT_MEMLOCK even with many executors.
const IO_MEMORY: usize = 512 * 1024;

/// One connection to run.
#[derive(Debug, Clone)]
pub enum Job {
    Publisher(PublisherSpec),
    Player(PlayerSpec),
}

/// What an executor tells the controlling thread.
#[derive(Debug)]
pub enum Report {
    /// Interval `index` (1-based) ended: its counters, and the gauges at its end.
    Interval { index: u32, stats: Box<IntervalStats>, gauges: Gauges },
    /// The run is over; every connection of this executor is closed.
    Done,
}

/// Starts executor `id` with its jobs; it reports on `reports` as `(id, Report)`.
pub fn spawn(
    id: usize,
    plan: Arc<Plan>,
    start: Instant,
    jobs: Vec<Job>,
    reports: Sender<(usize, Report)>,
) -> Result<ExecutorJoinHandle<()>, String> {
    let placement = match plan.cpus.get(id) {
        Some(&cpu) => Placement::Fixed(cpu),
        None => Placement::Unbound,
    };
    LocalExecutorBuilder::new(placement)
        .name(&format!("loadgen-{id}"))
        .io_memory(IO_MEMORY)
        .spawn(move || run(id, plan, start, jobs, reports))
        .map_err(|e| {
            format!(
                "cannot start executor {id}: {e} (glommio needs io_uring and {IO_MEMORY} bytes of \
                 locked memory per executor: check `ulimit -l`)"
            )
        })
}

async fn run(
    id: usize,
    plan: Arc<Plan>,
    start: Instant,
    jobs: Vec<Job>,
    reports: Sender<(usize, Report)>,
) {
    let shard = match Shard::new(plan.clone(), start) {
        Ok(shard) => Rc::new(shard),
        Err(e) => {
            eprintln!("rtmp-loadtest: executor {id} cannot create its epoll set: {e}");
            let _ = reports.send((id, Report::Done));
            return;
        }
    };
    let poller = glommio::spawn_local(shard.readiness.clone().run());
    // Publishers pace the whole measurement: their own queue, marked latency-sensitive, makes
    // busy player tasks (which call `yield_if_needed`) give way when a frame is due.
    let publishers = glommio::executor().create_task_queue(
        Shares::Static(1000),
        Latency::Matters(Duration::from_millis(1)),
        "publishers",
    );
    let tasks: Vec<_> = jobs
        .into_iter()
        .map(|job| match job {
            Job::Publisher(spec) => {
                let task = publisher::run(shard.clone(), spec.clone());
                glommio::spawn_local_into(task, publishers).unwrap_or_else(|_| {
                    // Only if the queue were gone: the default queue still works.
                    glommio::spawn_local(publisher::run(shard.clone(), spec))
                })
            }
            Job::Player(spec) => glommio::spawn_local(player::run(shard.clone(), spec)),
        })
        .collect();
    for index in 1..=plan.total_intervals {
        sleep_until(start + plan.interval * index).await;
        let (stats, gauges) = {
            let mut stats = shard.stats.borrow_mut();
            (stats.take_interval(), stats.gauges)
        };
        let report = Report::Interval { index, stats: Box::new(stats), gauges };
        if reports.send((id, report)).is_err() {
            break;
        }
    }
    // Dropping a glommio task cancels it: every connection closes here.
    drop(tasks);
    // The poller may be parked in a blocking epoll_wait: wake it and let it return before the
    // executor (and its blocking thread) goes.
    shard.readiness.stop();
    poller.await;
    let _ = reports.send((id, Report::Done));
}
