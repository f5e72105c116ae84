//! CPU time and resident memory of a process, from `/proc`.

/// Which process a phase charges its CPU and memory to.
#[derive(Debug, Clone, Copy)]
pub enum Probe {
    /// The benchmark itself, for in-process callers.
    Me,
    Pid(u32),
}

impl Probe {
    fn path(self, file: &str) -> String {
        match self {
            Probe::Me => format!("/proc/self/{file}"),
            Probe::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// User plus system CPU seconds, all threads, since the process started.
    pub fn cpu_seconds(self) -> f64 {
        let stat = std::fs::read_to_string(self.path("stat")).unwrap_or_default();
        // The command name may hold spaces; fields are counted after its ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // utime and stime are fields 14 and 15 of stat(5); after ')' the
        // state is field 3, so they sit at indexes 11 and 12.
        let total = ticks(11) + ticks(12);
        // SAFETY: sysconf has no preconditions.
        let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        total as f64 / per_second
    }

    /// On-CPU time of every thread the process has now, in seconds, from
    /// the scheduler's nanosecond counts (`/proc/PID/task/*/schedstat`):
    /// `cpu_seconds` counts in clock ticks (10 ms), too coarse for a
    /// process at rest. Threads that exited are not counted. `None` when
    /// the kernel keeps no schedstat.
    pub fn thread_cpu_seconds(self) -> Option<f64> {
        let tasks = std::fs::read_dir(self.path("task")).ok()?;
        let mut ns = 0u64;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        Some(ns as f64 / 1e9)
    }

    /// Starts a window for [`Probe::peak_rss_kib`]: resets the kernel's
    /// high-water mark (`/proc/PID/clear_refs`, Linux 4.0+), which is exact
    /// where sampling would miss spikes and would itself disturb the process.
    pub fn reset_peak(self) {
        // Without permission the mark keeps the lifetime peak, an upper bound.
        let _ = std::fs::write(self.path("clear_refs"), "5");
    }

    /// The highest RSS since the last [`Probe::reset_peak`], in KiB.
    pub fn peak_rss_kib(self) -> u64 {
        self.status_kib("VmHWM:")
    }

    pub fn rss_kib(self) -> u64 {
        self.status_kib("VmRSS:")
    }

    fn status_kib(self, field: &str) -> u64 {
        let status = std::fs::read_to_string(self.path("status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}
