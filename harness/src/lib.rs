//! The harness that the integration tests and `kvs-bench` share: it starts
//! the sidecar binary with a fresh `--ready-file`, keeps everything it
//! prints, and waits for the file (`kvs_sidecar::ready_file`), so neither
//! learns the bound ports by reading logs whose wording is free to change.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use kvs_sidecar::ready_file::Ready;

/// A sidecar started by [`launch`]: killed when dropped.
#[derive(Debug)]
pub struct Launched {
    pub child: Child,
    pub ready: Ready,
    /// Every line it printed, stdout and stderr, as it arrives.
    pub output: Arc<Mutex<Vec<String>>>,
    ready_file: PathBuf,
}

impl Launched {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.ready_file);
    }
}

/// Starts `cmd` (the sidecar binary, its flags and environment) with a
/// fresh `--ready-file`, keeps what it prints, and waits up to `within`
/// for it to be ready. A sidecar that exits or is not ready in time is
/// killed, and what it printed is the error.
pub fn launch(mut cmd: Command, within: Duration) -> Result<Launched, Vec<String>> {
    static LAUNCHES: AtomicU64 = AtomicU64::new(0);
    let ready_file = std::env::temp_dir().join(format!(
        "kvs-sidecar-ready-{}-{}.json",
        std::process::id(),
        LAUNCHES.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&ready_file);
    let mut child = cmd
        .arg("--ready-file")
        .arg(&ready_file)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| vec![format!("cannot start {cmd:?}: {e}")])?;
    let output = Arc::new(Mutex::new(Vec::new()));
    let streams: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    for stream in streams {
        let output = output.clone();
        // Read on threads, so a chatty sidecar never fills its pipes.
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                output.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }
    let printed = |output: &Arc<Mutex<Vec<String>>>, why: String| {
        let mut lines = output.lock().unwrap_or_else(|e| e.into_inner()).clone();
        lines.push(why);
        lines
    };
    let until = Instant::now() + within;
    loop {
        match Ready::read(&ready_file) {
            Ok(Some(ready)) => {
                return Ok(Launched {
                    child,
                    ready,
                    output,
                    ready_file,
                });
            }
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                return Err(printed(&output, format!("unreadable ready file: {e}")));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Give the reader threads a moment to collect the last lines.
            std::thread::sleep(Duration::from_millis(50));
            return Err(printed(&output, format!("exited before ready: {status}")));
        }
        if Instant::now() >= until {
            let _ = child.kill();
            let _ = child.wait();
            return Err(printed(&output, format!("not ready within {within:?}")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
