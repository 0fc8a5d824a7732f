//! CPU time and resident memory of a process, from `/proc/PID/stat` and `/proc/PID/status`, and
//! how long its threads waited for a CPU, from `/proc/PID/task/*/schedstat`.
//!
//! CPU time is `utime + stime` of the whole process (all threads), as `top` shows it. The wait
//! is the scheduler's `run_delay`: time a thread was runnable but another task had its CPU. On a
//! shared machine that is the other tenants' share of the cores a measurement was pinned to.
//! Sampling is done by the controlling thread, never on an executor.

use std::io;

/// CPU and memory of a process at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProcSample {
    /// User + system CPU seconds since the process started.
    pub cpu_secs: f64,
    /// Resident set size in bytes (`VmRSS`), when the kernel reports it.
    pub rss_bytes: Option<u64>,
    /// Seconds its threads (those alive now) spent runnable but waiting for a CPU, when the
    /// kernel reports it (`CONFIG_SCHED_INFO`).
    pub wait_secs: Option<f64>,
}

/// Clock ticks per second of the `stat` CPU fields.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf reads a constant and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// `utime + stime` in clock ticks from the text of `/proc/PID/stat`. The command name (field 2)
/// is in parentheses and may itself contain spaces and parentheses, so fields are counted from
/// the last `)`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_ascii_whitespace();
    // After the name: state (field 3) ... utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in bytes from the text of `/proc/PID/status`.
pub fn parse_status_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_ascii_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    let scale = match parts.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * scale)
}

/// `run_delay` in nanoseconds (the second field) from the text of a `schedstat` file.
pub fn parse_schedstat_wait_ns(schedstat: &str) -> Option<u64> {
    schedstat.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Sum of the threads' `run_delay` under `dir` (`/proc/PID`), in nanoseconds.
fn wait_ns(dir: &str) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("{dir}/task")).ok()? {
        let path = task.ok()?.path().join("schedstat");
        // A thread that exited since the listing just drops out.
        if let Ok(text) = std::fs::read_to_string(path) {
            total += parse_schedstat_wait_ns(&text)?;
        }
    }
    Some(total)
}

/// Samples process `pid`, or this process with `None`.
pub fn sample(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable stat"))?;
    let rss_bytes = std::fs::read_to_string(format!("{dir}/status"))
        .ok()
        .and_then(|s| parse_status_rss_bytes(&s));
    Ok(ProcSample {
        cpu_secs: ticks as f64 / clock_ticks_per_sec() as f64,
        rss_bytes,
        wait_secs: wait_ns(&dir).map(|ns| ns as f64 / 1e9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_ticks_past_a_name_with_spaces_and_parens() {
        let stat = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    150 25 0 0 20 0 8 0 123456 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(175));
        assert_eq!(parse_stat_cpu_ticks("12 (x) S 1 2"), None);
    }

    #[test]
    fn parses_vm_rss() {
        let status = "Name:\trtmp-relay\nVmPeak:\t  99999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_bytes(status), Some(12345 * 1024));
        assert_eq!(parse_status_rss_bytes("Name:\tkthreadd\n"), None);
    }

    #[test]
    fn parses_schedstat_run_delay() {
        assert_eq!(parse_schedstat_wait_ns("404368239 1321271087 917\n"), Some(1_321_271_087));
        assert_eq!(parse_schedstat_wait_ns("404368239"), None);
    }

    #[test]
    fn samples_itself() {
        let sample = sample(None).expect("/proc/self");
        assert!(sample.cpu_secs >= 0.0);
        assert!(sample.rss_bytes.is_some_and(|b| b > 0));
    }
}
