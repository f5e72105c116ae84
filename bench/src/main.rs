//! kvs-bench: measures kvs-sidecar against the official AWS SDK, both
//! calling the same fast fake KVS on loopback, and writes the result as JSON
//! and Markdown. `scripts/bench` builds and runs it; see docs/performance.md.

mod at_rest;
mod fake;
mod load;
mod process;
mod procfs;
mod report;
mod targets;
mod watching;

use std::{path::PathBuf, sync::Arc, time::Duration};

use clap::{Parser, Subcommand};
use load::{Target, Window};
use procfs::Probe;
use report::{AfterLoad, ChannelMemory, Load, Phase, Report, Route, Spread, Startup};
use targets::Workload;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The sidecar binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/kvs-sidecar")]
    sidecar: PathBuf,
    /// Extra flags for every sidecar the benchmark starts, e.g.
    /// `--sidecar-arg=--worker-threads=1`.
    #[arg(long = "sidecar-arg", allow_hyphen_values = true)]
    sidecar_args: Vec<String>,
    /// Extra environment for every sidecar the benchmark starts, as
    /// KEY=VALUE (it starts them with a clean environment), e.g.
    /// `--sidecar-env=OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317`
    /// to measure the cost of traces.
    #[arg(long = "sidecar-env", value_parser = key_value)]
    sidecar_env: Vec<(String, String)>,
    /// Measured time of each phase.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured time before each phase.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    concurrency: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    rates: Vec<f64>,
    #[arg(long, value_delimiter = ',', default_value = "1,100,10000")]
    channels: Vec<usize>,
    /// Where the JSON and Markdown results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Criterion's output, folded into the report when present.
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
    /// Maintained sessions opened for the at-rest measurement.
    #[arg(long, default_value_t = 1000)]
    rest_sessions: usize,
    /// Idle interval over which sessions at rest are measured (and the
    /// sidecar without them before).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    rest_idle: Duration,
    /// How long after the load its RSS is read (the goal's is 10 s; past
    /// --pool-idle-timeout, 90 s, it shows what the pooled connections
    /// held).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    after_load: Duration,
    /// Streams watched (WatchRecording) for the watching measurement.
    #[arg(long, default_value_t = 100)]
    watched_streams: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the fake KVS (run by the benchmark as its own process, so its
    /// CPU is charged to no one measured).
    Fake,
    /// Only the cost of maintained sessions at rest (--rest-sessions,
    /// --rest-idle); results in kvs-bench-at-rest.json under --out.
    AtRest,
    /// Only the cost of watched streams at rest: --watched-streams
    /// WatchRecording streams on channels of their own, over --rest-idle;
    /// results in kvs-bench-watching.json under --out.
    Watching,
    /// Only the sidecar's closed loop at each --concurrency, then its idle
    /// RSS before, its peak, and its RSS 10 s after (printed).
    AfterLoad,
    /// What one caller's calls/s goal is up against, at each --concurrency:
    /// a bare HTTP call to the fake, a health check of the sidecar (its gRPC
    /// hop with no work behind it), the SDK's join and the sidecar's, each
    /// as time per call (printed).
    Floors,
}

impl Args {
    /// Each phase's warm-up and measured time.
    fn window(&self) -> Window {
        Window {
            warmup: self.warmup,
            measure: self.duration,
        }
    }

    /// `own` flags and then the user's, for one sidecar.
    fn flags<'a>(&'a self, own: &[&'a str]) -> Vec<&'a str> {
        own.iter()
            .copied()
            .chain(self.sidecar_args.iter().map(String::as_str))
            .collect()
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s}: expected KEY=VALUE"))
}

/// Retries as the SDK's standard mode has them, for every path.
const MAX_ATTEMPTS: u32 = 3;

fn main() {
    let args = Args::parse();
    if let Some(Command::Fake) = args.command {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the fake on loopback");
            println!("listening http://{}", listener.local_addr().unwrap());
            fake::serve(listener).await.expect("the fake serves");
        });
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    if let Some(Command::AtRest) = args.command {
        let at_rest = runtime.block_on(async {
            let (_fake, fake) = process::fake();
            at_rest(&args, &fake).await
        });
        let out = args.out.join("kvs-bench-at-rest.json");
        std::fs::create_dir_all(&args.out).expect("create the results folder");
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&at_rest).expect("the result serializes"),
        )
        .expect("write the result");
        println!("\n{}", report::at_rest_markdown(&at_rest));
        println!("results: {}", out.display());
        return;
    }
    if let Some(Command::Floors) = args.command {
        runtime.block_on(floors(&args));
        return;
    }
    if let Some(Command::AfterLoad) = args.command {
        runtime.block_on(after_load_only(&args));
        return;
    }
    if let Some(Command::Watching) = args.command {
        let watching = runtime.block_on(async {
            let (_fake, fake) = process::fake();
            watching(&args, &fake).await
        });
        let out = args.out.join("kvs-bench-watching.json");
        std::fs::create_dir_all(&args.out).expect("create the results folder");
        std::fs::write(
            &out,
            serde_json::to_string_pretty(&watching).expect("the result serializes"),
        )
        .expect("write the result");
        println!("\n{}", report::watching_markdown(&watching));
        println!("results: {}", out.display());
        return;
    }
    let report = runtime.block_on(run(&args));
    report.write(&args.out).expect("write the results");
    println!("\n{}", report.markdown());
    println!("results: {}", args.out.join("kvs-bench.json").display());
}

async fn run(args: &Args) -> Report {
    // The in-process stack records its metrics as the sidecar does.
    let _metrics = kvs_sidecar::instruments::install().expect("a metrics recorder");
    let window = args.window();
    let (_fake, fake) = process::fake();
    let startup = startup(args, &fake).await;
    let one = Workload::new(vec![arn("front-door")], None);

    let sidecar = process::sidecar(&args.sidecar, &fake, &args.sidecar_env, &args.flags(&[]));
    let probe_sidecar = Probe::Pid(sidecar.process.pid());
    let sdk = Arc::new(targets::Sdk::new(&fake, MAX_ATTEMPTS, one.clone()));
    let stack = Arc::new(targets::Stack::new(&fake, MAX_ATTEMPTS, one.clone()));

    let mut closed_loop = Vec::new();
    for &c in &args.concurrency {
        let through = Arc::new(targets::Sidecar::connect(&sidecar.grpc_url, c, one.clone()).await);
        let load = Load::Concurrency(c);
        closed_loop.push(measure(Route::Sdk, load, sdk.clone(), Probe::Me, window).await);
        closed_loop.push(measure(Route::Stack, load, stack.clone(), Probe::Me, window).await);
        closed_loop.push(measure(Route::Sidecar, load, through, probe_sidecar, window).await);
    }
    // What the sidecar keeps once the closed-loop load (up to the highest
    // concurrency) is over: its resident memory --after-load (10 s) later.
    tokio::time::sleep(args.after_load).await;
    let after_load = AfterLoad {
        seconds: args.after_load.as_secs_f64(),
        peak_rss_mib: closed_loop
            .iter()
            .filter(|p| p.path == Route::Sidecar)
            .map(|p| p.sample.peak_rss_mib)
            .fold(0.0, f64::max),
        rss_mib: probe_sidecar.rss_kib() as f64 / 1024.0,
    };
    println!(
        "sidecar RSS {:.1} MiB {:.0} s after the load (peak {:.1} MiB)",
        after_load.rss_mib, after_load.seconds, after_load.peak_rss_mib
    );

    let mut open_loop = Vec::new();
    let direct = Arc::new(targets::Direct::new(&fake, &one));
    let through = Arc::new(targets::Sidecar::connect(&sidecar.grpc_url, 1, one.clone()).await);
    for &r in &args.rates {
        let load = Load::Rate(r);
        open_loop.push(measure(Route::Direct, load, direct.clone(), Probe::Me, window).await);
        open_loop.push(measure(Route::Sdk, load, sdk.clone(), Probe::Me, window).await);
        open_loop.push(measure(Route::Stack, load, stack.clone(), Probe::Me, window).await);
        open_loop.push(measure(Route::Sidecar, load, through.clone(), probe_sidecar, window).await);
    }
    drop(sidecar);

    let mut channels = Vec::new();
    for &n in &args.channels {
        let work = Workload::new((0..n).map(|i| arn(&format!("camera-{i}"))).collect(), None);
        channels.push(spread(args, &fake, n, "typical", work, window).await);
    }
    channels.push(spread(args, &fake, 1, "longest", longest(), window).await);

    let mut report = Report {
        machine: report::Machine::this(),
        measure_seconds: args.duration.as_secs_f64(),
        warmup_seconds: args.warmup.as_secs_f64(),
        startup,
        closed_loop,
        after_load,
        open_loop,
        channels,
        memory: channel_memory(args, &fake).await,
        at_rest: at_rest(args, &fake).await,
        watching: watching(args, &fake).await,
        micro: report::read_criterion(&args.criterion),
        targets: Vec::new(),
    };
    report.check_targets();
    report
}

/// The floors under one caller's calls/s: see [`Command::Floors`].
async fn floors(args: &Args) {
    let window = args.window();
    let (_fake, fake) = process::fake();
    let one = Workload::new(vec![arn("front-door")], None);
    let sidecar = process::sidecar(&args.sidecar, &fake, &args.sidecar_env, &args.flags(&[]));
    let probe = Probe::Pid(sidecar.process.pid());
    for &c in &args.concurrency {
        let direct = Arc::new(targets::Direct::new(&fake, &one));
        let direct = load::closed(direct, c, window, Probe::Me).await;
        let health = Arc::new(targets::Health::connect(&sidecar.grpc_url, c).await);
        let health = load::closed(health, c, window, probe).await;
        let sdk = Arc::new(targets::Sdk::new(&fake, MAX_ATTEMPTS, one.clone()));
        let sdk = load::closed(sdk, c, window, Probe::Me).await;
        let join = Arc::new(targets::Sidecar::connect(&sidecar.grpc_url, c, one.clone()).await);
        let join = load::closed(join, c, window, probe).await;
        let errors = direct.errors + health.errors + sdk.errors + join.errors;
        // What each caller waits per call, in a closed loop.
        let wait = |s: &load::Sample| c as f64 * 1e6 / s.calls_per_second;
        let (direct, health, sdk, join) = (wait(&direct), wait(&health), wait(&sdk), wait(&join));
        println!(
            "concurrency {c}: bare HTTP to the fake {direct:.1} µs a call, a health check of the \
             sidecar {health:.1} µs, the SDK's join {sdk:.1} µs (its own part: {:.1} µs over the \
             bare call), the sidecar's join {join:.1} µs ({:.2}× the SDK's calls/s); {errors} errors",
            sdk - direct,
            sdk / join,
        );
    }
}

/// The sidecar's closed loop alone, and what it keeps after it.
async fn after_load_only(args: &Args) {
    let window = args.window();
    let (_fake, fake) = process::fake();
    let one = Workload::new(vec![arn("front-door")], None);
    let sidecar = process::sidecar(&args.sidecar, &fake, &args.sidecar_env, &args.flags(&[]));
    let probe = Probe::Pid(sidecar.process.pid());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = probe.rss_kib() as f64 / 1024.0;
    eprintln!("sidecar pid {}", sidecar.process.pid());
    let mut peak = 0.0f64;
    for &c in &args.concurrency {
        let through = Arc::new(targets::Sidecar::connect(&sidecar.grpc_url, c, one.clone()).await);
        let phase = measure(Route::Sidecar, Load::Concurrency(c), through, probe, window).await;
        peak = peak.max(phase.sample.peak_rss_mib);
    }
    tokio::time::sleep(args.after_load).await;
    let anonymous =
        std::fs::read_to_string(format!("/proc/{}/smaps_rollup", sidecar.process.pid()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Anonymous:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .unwrap_or(f64::NAN);
    println!(
        "idle {idle:.1} MiB, peak {peak:.1} MiB, {:.1} MiB {} s after the load ({:.1} MiB anonymous)",
        probe.rss_kib() as f64 / 1024.0,
        args.after_load.as_secs(),
        anonymous / 1024.0
    );
}

/// Watched streams at rest, on a sidecar of their own.
async fn watching(args: &Args, fake: &str) -> watching::Watching {
    watching::measure(
        &args.sidecar,
        fake,
        &args.sidecar_env,
        &args.flags(&[]),
        args.watched_streams,
        args.rest_idle,
    )
    .await
}

/// Maintained sessions at rest, on a sidecar of their own.
async fn at_rest(args: &Args, fake: &str) -> at_rest::AtRest {
    at_rest::measure(
        &args.sidecar,
        fake,
        &args.sidecar_env,
        &args.flags(&[]),
        args.rest_sessions,
        args.rest_idle,
    )
    .await
}

/// One phase: `target` under `load`, its cost charged to `probe`.
async fn measure<T: Target>(
    route: Route,
    load: Load,
    target: Arc<T>,
    probe: Probe,
    window: Window,
) -> Phase {
    let sample = match load {
        Load::Concurrency(c) => load::closed(target, c, window, probe).await,
        Load::Rate(r) => load::open(target, r, window, probe).await,
    };
    let phase = Phase {
        path: route,
        load,
        sample,
    };
    let s = &phase.sample;
    eprintln!(
        "{route:?} {load:?}: {:.0} calls/s, p50 {} µs, p99 {} µs, {:.1} µs CPU/call, {:.1} MiB, {} errors{}",
        s.calls_per_second,
        s.p50_us,
        s.p99_us,
        s.cpu_us_per_call,
        s.peak_rss_mib,
        s.errors,
        s.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    phase
}

fn arn(name: &str) -> String {
    format!("arn:aws:kinesisvideo:us-west-2:123456789012:channel/{name}/1700000000000")
}

/// The largest request the contract allows: a 1,024-character ARN and a
/// 256-character client id, as a viewer join.
fn longest() -> Workload {
    let frame = arn("").len();
    let name = "n".repeat(kvs_sidecar::kvs::arn::MAX_ARN_LEN - frame);
    let arn = arn(&name);
    assert_eq!(arn.len(), kvs_sidecar::kvs::arn::MAX_ARN_LEN);
    Workload::new(
        vec![arn],
        Some("c".repeat(kvs_sidecar::kvs::arn::MAX_CLIENT_ID_LEN)),
    )
}

/// Five cold starts with credentials from the environment, then the idle
/// RSS of one that has served nothing.
async fn startup(args: &Args, fake: &str) -> Startup {
    let mut to_serving_ms = Vec::new();
    for _ in 0..5 {
        let sidecar = process::sidecar(&args.sidecar, fake, &args.sidecar_env, &args.flags(&[]));
        assert!(
            process::serving(&sidecar.grpc_url).await,
            "health reports SERVING"
        );
        to_serving_ms.push(sidecar.started_in.as_secs_f64() * 1000.0);
    }
    let sidecar = process::sidecar(&args.sidecar, fake, &args.sidecar_env, &args.flags(&[]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss_mib = Probe::Pid(sidecar.process.pid()).rss_kib() as f64 / 1024.0;
    let mut sorted = to_serving_ms.clone();
    sorted.sort_by(f64::total_cmp);
    Startup {
        median_ms: sorted[sorted.len() / 2],
        to_serving_ms,
        idle_rss_mib,
    }
}

/// A fresh sidecar whose cache is warmed with every channel of `work`,
/// then 64 callers spread over them. Discovery is not rate limited, so the
/// warm-up is quick.
async fn spread(
    args: &Args,
    fake: &str,
    channels: usize,
    payload: &'static str,
    work: Workload,
    window: Window,
) -> Spread {
    let sidecar = process::sidecar(
        &args.sidecar,
        fake,
        &args.sidecar_env,
        &args.flags(&["--discovery-rate", "0"]),
    );
    let probe = Probe::Pid(sidecar.process.pid());
    let target = Arc::new(targets::Sidecar::connect(&sidecar.grpc_url, 64, work).await);
    warm(&target, channels as u64, 0).await;
    let rss_after_warmup_mib = probe.rss_kib() as f64 / 1024.0;
    let sample = load::closed(target, 64, window, probe).await;
    eprintln!(
        "{channels} channels, {payload}: {:.0} calls/s, p99 {} µs, RSS {rss_after_warmup_mib:.1} → {:.1} MiB, {} errors",
        sample.calls_per_second, sample.p99_us, sample.peak_rss_mib, sample.errors
    );
    Spread {
        channels,
        payload,
        rss_after_warmup_mib,
        sample,
    }
}

/// Calls `target` once for each n in `from..from + count`, 64 at a time.
async fn warm<T: Target>(target: &Arc<T>, count: u64, from: u64) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(from));
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (target, next) = (target.clone(), next.clone());
        callers.spawn(async move {
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= from + count {
                    break;
                }
                target.call(n).await.expect("a warm-up call");
            }
        });
    }
    while callers.join_next().await.is_some() {}
}

/// RSS of one sidecar as its endpoint cache grows from 0 to 20,000
/// channels in steps of 4,000. The first reading follows 20,000 calls on
/// one channel, so the connections, buffers and allocator pools that load
/// alone brings are already in it and the growth after it is the cache.
async fn channel_memory(args: &Args, fake: &str) -> ChannelMemory {
    const STEP: u64 = 4_000;
    const CHANNELS: u64 = 20_000;
    let sidecar = process::sidecar(
        &args.sidecar,
        fake,
        &args.sidecar_env,
        &args.flags(&["--discovery-rate", "0"]),
    );
    let probe = Probe::Pid(sidecar.process.pid());
    // Channel 0 is the hot one; the cache grows with channels 1 and up.
    let arns: Vec<String> = (0..=CHANNELS).map(|i| arn(&format!("cache-{i}"))).collect();
    let hot = Workload::new(arns[..1].to_vec(), None);
    let hot = Arc::new(targets::Sidecar::connect(&sidecar.grpc_url, 64, hot).await);
    warm(&hot, 20_000, 0).await;
    let spread =
        Arc::new(targets::Sidecar::connect(&sidecar.grpc_url, 64, Workload::new(arns, None)).await);
    let mut rss_mib_at = Vec::new();
    for step in (0..=CHANNELS).step_by(STEP as usize) {
        if step > 0 {
            warm(&spread, STEP, step - STEP + 1).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        rss_mib_at.push((step as usize, probe.rss_kib() as f64 / 1024.0));
    }
    ChannelMemory::fit(rss_mib_at)
}
