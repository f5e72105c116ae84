//! CPU time and resident memory of a process, from `/proc`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

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

    pub fn rss_kib(self) -> u64 {
        let status = std::fs::read_to_string(self.path("status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Samples RSS every 10 ms until the returned guard is finished.
    pub fn watch_rss(self) -> RssWatch {
        let peak = Arc::new(AtomicU64::new(self.rss_kib()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                while !stop.load(Ordering::Relaxed) {
                    peak.fetch_max(self.rss_kib(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
        RssWatch { peak, stop, task }
    }
}

pub struct RssWatch {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    /// The highest RSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}
