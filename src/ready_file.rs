//! How a started sidecar says that it serves, in one defined way: given
//! `--ready-file PATH`, it writes its bound addresses there as JSON once
//! every listener is bound and health reports SERVING, and removes the file
//! when it starts draining. A supervisor, a test or a benchmark that starts
//! it on ephemeral ports (`127.0.0.1:0`) learns them there instead of by
//! reading its logs, whose wording and format are free to change.
//!
//! [`launch`] is the harness that the integration tests and `kvs-bench`
//! share: it starts the binary, keeps everything it prints, and waits for
//! the file.

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// What the ready file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The Unix socket, when the sidecar serves one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unix: Option<PathBuf>,
}

// === impl Ready ===

impl Ready {
    /// Writes `path` whole or not at all (a temporary file beside it,
    /// renamed over it), so a reader polling for it never sees half of it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut partial = path.as_os_str().to_owned();
        partial.push(".partial");
        let json = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        // A fresh file, never an existing one: whoever can write the folder
        // could otherwise plant a symlink at the partial path and have us
        // write through it. A partial file left by an earlier run is ours
        // to remove (unlinking a symlink does not follow it).
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&partial)?;
        std::io::Write::write_all(&mut file, &json)?;
        drop(file);
        std::fs::rename(&partial, path)
    }

    /// The ready file at `path`, or `None` while there is none.
    pub fn read(path: &Path) -> std::io::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(json) => serde_json::from_slice(&json)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_file_round_trips_and_is_absent_until_written() {
        let path = std::env::temp_dir().join(format!(
            "kvs-sidecar-ready-test-{}.json",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        assert_eq!(Ready::read(&path).unwrap(), None);
        let ready = Ready {
            pid: 42,
            grpc: "127.0.0.1:50051".parse().unwrap(),
            admin: "127.0.0.1:9901".parse().unwrap(),
            unix: None,
        };
        ready.write(&path).unwrap();
        assert_eq!(Ready::read(&path).unwrap(), Some(ready));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_symlink_planted_at_the_partial_path_is_not_written_through() {
        let dir =
            std::env::temp_dir().join(format!("kvs-sidecar-ready-link-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let (path, victim) = (dir.join("ready.json"), dir.join("victim"));
        std::fs::write(&victim, "untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("ready.json.partial")).unwrap();
        let ready = Ready {
            pid: 7,
            grpc: "127.0.0.1:1".parse().unwrap(),
            admin: "127.0.0.1:2".parse().unwrap(),
            unix: None,
        };
        ready.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(Ready::read(&path).unwrap(), Some(ready));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
