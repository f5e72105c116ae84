//! How a started sidecar says that it serves, in one defined way: given
//! `--ready-file PATH`, it writes its bound addresses there as JSON once
//! every listener is bound and health reports SERVING, and removes the file
//! when it starts draining. A supervisor, a test or a benchmark that starts
//! it on ephemeral ports (`127.0.0.1:0`) learns them there instead of by
//! reading its logs, whose wording and format are free to change.
//!
//! The harness that starts the binary and waits for the file, shared by the
//! integration tests and `kvs-bench`, is the `kvs-sidecar-harness` crate
//! (harness/), so the sidecar itself never carries it.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
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
