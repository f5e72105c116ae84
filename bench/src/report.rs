//! The run's result: JSON for machines, a Markdown table for docs/performance.md,
//! and the targets checked against the figures.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{at_rest::AtRest, load::Sample, watching::Watching};

#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub measure_seconds: f64,
    pub warmup_seconds: f64,
    pub startup: Startup,
    pub closed_loop: Vec<Phase>,
    pub after_load: AfterLoad,
    pub open_loop: Vec<Phase>,
    pub channels: Vec<Spread>,
    pub memory: ChannelMemory,
    pub at_rest: AtRest,
    pub watching: Watching,
    pub micro: Vec<Micro>,
    pub targets: Vec<Check>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(|| "unknown".into(), |(_, m)| m.trim().to_owned()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

/// The sidecar's resident memory some time after the closed-loop load.
#[derive(Debug, Serialize)]
pub struct AfterLoad {
    pub seconds: f64,
    /// The highest peak RSS of the closed-loop phases.
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct Startup {
    /// Spawn to "serving" (health already SERVING), each start.
    pub to_serving_ms: Vec<f64>,
    pub median_ms: f64,
    /// RSS of a started sidecar that has served nothing yet.
    pub idle_rss_mib: f64,
}

/// How a phase drives its path: callers in a closed loop, or a fixed rate.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Load {
    Concurrency(usize),
    Rate(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// Through the sidecar binary over gRPC.
    Sidecar,
    /// The sidecar's upstream stack in-process.
    Stack,
    /// aws-sdk-kinesisvideowebrtcstorage in-process.
    Sdk,
    /// Unsigned HTTP straight to the fake.
    Direct,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Sidecar => "sidecar (gRPC)",
            Route::Stack => "sidecar stack, in-process",
            Route::Sdk => "AWS SDK, in-process",
            Route::Direct => "bare HTTP to the fake",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub path: Route,
    pub load: Load,
    #[serde(flatten)]
    pub sample: Sample,
}

#[derive(Debug, Serialize)]
pub struct Spread {
    pub channels: usize,
    /// "typical" or "longest" (1024-character ARN, 256-character client id).
    pub payload: &'static str,
    pub rss_after_warmup_mib: f64,
    #[serde(flatten)]
    pub sample: Sample,
}

#[derive(Debug, Serialize)]
pub struct ChannelMemory {
    /// (cached channels, RSS in MiB) after each step.
    pub rss_mib_at: Vec<(usize, f64)>,
    /// Least-squares slope of RSS over channels: memory per cached channel.
    pub kib_per_channel: f64,
    /// How well a straight line fits the readings (1 is a perfect line).
    pub r_squared: f64,
}

impl ChannelMemory {
    pub fn fit(rss_mib_at: Vec<(usize, f64)>) -> Self {
        let n = rss_mib_at.len() as f64;
        let points = || rss_mib_at.iter().map(|&(x, y)| (x as f64, y * 1024.0));
        let (mean_x, mean_y) =
            points().fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x / n, sy + y / n));
        let (sxy, sxx, syy) = points().fold((0.0, 0.0, 0.0), |(sxy, sxx, syy), (x, y)| {
            let (dx, dy) = (x - mean_x, y - mean_y);
            (sxy + dx * dy, sxx + dx * dx, syy + dy * dy)
        });
        Self {
            kib_per_channel: sxy / sxx,
            r_squared: if syy == 0.0 {
                1.0
            } else {
                sxy * sxy / (sxx * syy)
            },
            rss_mib_at,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Micro {
    pub name: String,
    pub mean_ns: f64,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

// === impl Report ===

impl Report {
    pub fn closed(&self, path: Route, concurrency: usize) -> Option<&Sample> {
        self.closed_loop
            .iter()
            .find(|p| p.path == path && matches!(p.load, Load::Concurrency(c) if c == concurrency))
            .map(|p| &p.sample)
    }

    pub fn open(&self, path: Route, rate: f64) -> Option<&Sample> {
        self.open_loop
            .iter()
            .find(|p| p.path == path && matches!(p.load, Load::Rate(r) if r == rate))
            .map(|p| &p.sample)
    }

    /// The targets, each with what this run measured.
    pub fn check_targets(&mut self) {
        let mut checks = Vec::new();
        let mut check = |target: &str, measured: String, met: bool| {
            checks.push(Check {
                target: target.into(),
                measured,
                met,
            })
        };
        // The sidecar against the in-process SDK: calls/s at each
        // concurrency the goals name.
        for (concurrency, goal) in [(1, 1.0), (16, 2.0), (64, 1.0)] {
            if let (Some(car), Some(sdk)) = (
                self.closed(Route::Sidecar, concurrency),
                self.closed(Route::Sdk, concurrency),
            ) {
                let ratio = car.calls_per_second / sdk.calls_per_second;
                check(
                    &format!(
                        "sidecar ≥ {goal:.1}× SDK calls/s at concurrency {concurrency}, no errors"
                    ),
                    format!("{ratio:.2}×, {} errors", car.errors),
                    ratio >= goal && car.errors == 0,
                );
            }
        }
        if let (Some(car), Some(sdk)) =
            (self.closed(Route::Sidecar, 64), self.closed(Route::Sdk, 64))
        {
            let cpu = car.cpu_us_per_call / sdk.cpu_us_per_call;
            check(
                "sidecar CPU per call at concurrency 64 ≤ ⅓ the SDK program's",
                format!(
                    "{:.1} µs vs {:.1} µs ({cpu:.2}×)",
                    car.cpu_us_per_call, sdk.cpu_us_per_call
                ),
                cpu * 3.0 <= 1.0,
            );
        }
        if let (Some(car), Some(sdk)) = (
            self.closed(Route::Sidecar, 256),
            self.closed(Route::Sdk, 256),
        ) {
            check(
                "p99 at concurrency 256 ≤ ⅓ of the SDK's",
                format!("{} vs {}", ms(car.p99_us), ms(sdk.p99_us)),
                car.p99_us * 3 <= sdk.p99_us,
            );
            check(
                "RSS under 40 MiB at concurrency 256",
                format!("{:.1} MiB", car.peak_rss_mib),
                car.peak_rss_mib < 40.0,
            );
        }
        if let (Some(car), Some(direct)) = (
            self.open(Route::Sidecar, 1000.0),
            self.open(Route::Direct, 1000.0),
        ) {
            let added = car.p99_us.saturating_sub(direct.p99_us);
            check(
                "p99 added latency < 1 ms at 1,000 calls/s (sidecar − direct)",
                ms(added),
                added < 1000,
            );
        }
        if let (Some(stack), Some(sdk)) =
            (self.closed(Route::Stack, 64), self.closed(Route::Sdk, 64))
        {
            let ratio = stack.calls_per_second / sdk.calls_per_second;
            check(
                "in-process stack ≥ 1.5× SDK calls/s (concurrency 64)",
                format!("{ratio:.2}×"),
                ratio >= 1.5,
            );
        }
        check(
            "idle RSS ≤ 10 MiB",
            format!("{:.1} MiB", self.startup.idle_rss_mib),
            self.startup.idle_rss_mib <= 10.0,
        );
        check(
            "RSS 10 s after the load ≤ idle + 4 MiB",
            format!(
                "{:.1} MiB (idle {:.1}, peak {:.1})",
                self.after_load.rss_mib, self.startup.idle_rss_mib, self.after_load.peak_rss_mib
            ),
            self.after_load.rss_mib <= self.startup.idle_rss_mib + 4.0,
        );
        let rest = &self.at_rest;
        check(
            "1,000 maintained sessions at rest < +8 MiB (8 KiB each), no errors",
            format!(
                "+{:.1} MiB per 1,000, {} errors",
                rest.rss_mib_per_1000, rest.errors
            ),
            rest.rss_mib_per_1000 < 8.0 && rest.errors == 0 && rest.sessions > 0,
        );
        check(
            "start to SERVING < 100 ms (median)",
            format!("{:.1} ms", self.startup.median_ms),
            self.startup.median_ms < 100.0,
        );
        check(
            "memory per cached channel stated and linear (R² ≥ 0.95 over 0–20,000)",
            format!(
                "{:.2} KiB per channel, R² {:.3}",
                self.memory.kib_per_channel, self.memory.r_squared
            ),
            self.memory.r_squared >= 0.95,
        );
        self.targets = checks;
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(
            md,
            "Machine: {} CPUs ({}), Linux {}; load generator, fake KVS and sidecar on the same box. \
             Each phase: {:.0} s warm-up, {:.0} s measured.\n",
            m.cpus, m.cpu_model, m.kernel, self.warmup_seconds, self.measure_seconds
        );
        md.push_str("**Closed loop** (× SDK: calls/s relative to the SDK at the same concurrency; CPU: the process doing the work, per call)\n\n");
        md.push_str("| callers | path | calls/s | × SDK | p50 | p90 | p99 | p99.9 | CPU/call | peak RSS | errors |\n");
        md.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in &self.closed_loop {
            let Load::Concurrency(c) = p.load else {
                continue;
            };
            let vs = self.closed(Route::Sdk, c).map_or(String::from("–"), |sdk| {
                format!("{:.2}×", p.sample.calls_per_second / sdk.calls_per_second)
            });
            let s = &p.sample;
            let _ = writeln!(
                md,
                "| {c} | {} | {:.0} | {vs} | {} | {} | {} | {} | {:.1} µs | {:.1} MiB | {} |",
                p.path.label(),
                s.calls_per_second,
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p99_us),
                ms(s.p999_us),
                s.cpu_us_per_call,
                s.peak_rss_mib,
                s.errors
            );
        }
        md.push_str("\n**Open loop** (latency from each call's scheduled start)\n\n");
        md.push_str("| rate | path | p50 | p90 | p99 | p99.9 | p99 added vs bare HTTP | CPU/call | errors |\n");
        md.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for p in &self.open_loop {
            let Load::Rate(r) = p.load else { continue };
            let s = &p.sample;
            let added = self.open(Route::Direct, r).map_or(String::from("–"), |d| {
                ms(s.p99_us.saturating_sub(d.p99_us))
            });
            let _ = writeln!(
                md,
                "| {r:.0}/s | {} | {} | {} | {} | {} | {added} | {:.1} µs | {} |",
                p.path.label(),
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p99_us),
                ms(s.p999_us),
                s.cpu_us_per_call,
                s.errors
            );
        }
        md.push_str("\n**Channel spread and payload** (sidecar, 64 callers)\n\n");
        md.push_str(
            "| channels | payload | calls/s | p99 | RSS after warm-up | peak RSS | errors |\n",
        );
        md.push_str("|---:|---|---:|---:|---:|---:|---:|\n");
        for c in &self.channels {
            let s = &c.sample;
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {} | {:.1} MiB | {:.1} MiB | {} |",
                c.channels,
                c.payload,
                s.calls_per_second,
                ms(s.p99_us),
                c.rss_after_warmup_mib,
                s.peak_rss_mib,
                s.errors
            );
        }
        let readings: Vec<String> = self
            .memory
            .rss_mib_at
            .iter()
            .map(|(n, mib)| format!("{n}: {mib:.1} MiB"))
            .collect();
        let _ = writeln!(
            md,
            "\nMemory per cached channel (master role): {:.2} KiB, the least-squares slope over RSS readings at {} (R² {:.3}).",
            self.memory.kib_per_channel,
            readings.join(", "),
            self.memory.r_squared
        );
        let _ = writeln!(
            md,
            "Start to SERVING: median {:.1} ms over {} starts; idle RSS {:.1} MiB; {:.1} MiB {:.0} s after the closed-loop load (peak {:.1} MiB).",
            self.startup.median_ms,
            self.startup.to_serving_ms.len(),
            self.startup.idle_rss_mib,
            self.after_load.rss_mib,
            self.after_load.seconds,
            self.after_load.peak_rss_mib
        );
        md.push('\n');
        md.push_str(&at_rest_markdown(&self.at_rest));
        md.push('\n');
        md.push_str(&watching_markdown(&self.watching));
        if !self.micro.is_empty() {
            md.push_str(
                "\n**Micro-benchmarks** (criterion, mean)\n\n| benchmark | time |\n|---|---:|\n",
            );
            for b in &self.micro {
                let _ = writeln!(md, "| {} | {} |", b.name, nanos(b.mean_ns));
            }
        }
        md.push_str("\n**Targets**\n\n| target | measured | met |\n|---|---|:-:|\n");
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
        md
    }

    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(
            dir.join("kvs-bench.json"),
            serde_json::to_string_pretty(self).expect("the report serializes"),
        )?;
        std::fs::write(dir.join("kvs-bench.md"), self.markdown())
    }
}

/// The at-rest figures as a Markdown paragraph and table.
pub fn at_rest_markdown(r: &AtRest) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "**Maintained sessions at rest** ({} MaintainStorageSession streams, each joined with the offer and CONNECTED reported; sidecar CPU and RSS over {:.0} s idle, before the streams and with them; {} errors{})\n",
        r.sessions,
        r.idle_seconds,
        r.errors,
        r.first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default()
    );
    md.push_str("| | no session | sessions at rest | per 1,000 sessions |\n|---|---:|---:|---:|\n");
    let _ = writeln!(
        md,
        "| CPU | {:.2} ms/s | {:.2} ms/s | {:+.2} ms/s |",
        r.cpu_ms_per_s_before, r.cpu_ms_per_s_at_rest, r.cpu_ms_per_s_per_1000
    );
    let _ = writeln!(
        md,
        "| RSS | {:.1} MiB | {:.1} MiB | {:+.1} MiB |",
        r.rss_before_mib, r.rss_at_rest_mib, r.rss_mib_per_1000
    );
    md
}

/// The watched-streams figures as a Markdown paragraph and table.
pub fn watching_markdown(r: &Watching) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "**Watched streams at rest** ({} WatchRecording streams on channels of their own, each polled once a second; sidecar CPU and RSS over {:.0} s idle, before the watches and with them; {} errors{})\n",
        r.streams,
        r.idle_seconds,
        r.errors,
        r.first_error
            .as_deref()
            .map(|e| format!(", first: {e}"))
            .unwrap_or_default()
    );
    md.push_str("| | no watch | watched | per stream |\n|---|---:|---:|---:|\n");
    let per = |before: f64, after: f64| (after - before) / r.streams.max(1) as f64;
    let _ = writeln!(
        md,
        "| CPU | {:.2} ms/s | {:.2} ms/s | {:+.3} ms/s |",
        r.cpu_ms_per_s_before,
        r.cpu_ms_per_s_watching,
        per(r.cpu_ms_per_s_before, r.cpu_ms_per_s_watching)
    );
    let _ = writeln!(
        md,
        "| RSS | {:.1} MiB | {:.1} MiB | {:+.1} KiB |",
        r.rss_before_mib,
        r.rss_watching_mib,
        per(r.rss_before_mib, r.rss_watching_mib) * 1024.0
    );
    md
}

/// Criterion's mean for each benchmark under `dir` (its `target/criterion`),
/// named by the id criterion records beside it.
pub fn read_criterion(dir: &Path) -> Vec<Micro> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.file_name().is_some_and(|n| n == "new") {
                found.extend(read_estimate(&path));
            } else if path.is_dir() && path.file_name().is_some_and(|n| n != "base") {
                pending.push(path);
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn read_estimate(dir: &Path) -> Option<Micro> {
    let json = |file: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(file)).ok()?).ok()
    };
    Some(Micro {
        name: json("benchmark.json")?["full_id"].as_str()?.to_owned(),
        mean_ns: json("estimates.json")?["mean"]["point_estimate"].as_f64()?,
    })
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn nanos(ns: f64) -> String {
    if ns >= 1000.0 {
        format!("{:.2} µs", ns / 1000.0)
    } else {
        format!("{ns:.0} ns")
    }
}
