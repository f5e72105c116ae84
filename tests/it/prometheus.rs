//! The admin port as Prometheus sees it: `promtool` accepts the exposition
//! and the shipped alert rules, and a real Prometheus on loopback scrapes the
//! running sidecar and counts the calls this test made.

use crate::common;
use std::{
    io::Write,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::common::{
    ARN, Sidecar,
    sidecar::{http_get, try_http_get},
};
use kvs_sidecar::pb::JoinStorageSessionRequest;

const CALLS: usize = 7;

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn sidecar_with_calls() -> Sidecar {
    let sidecar = Sidecar::emulated(&[]);
    let mut client = sidecar.client().await;
    for _ in 0..CALLS {
        client
            .join_storage_session(JoinStorageSessionRequest {
                channel_arn: ARN.into(),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    client
        .join_storage_session(JoinStorageSessionRequest {
            channel_arn: common::arn("missing-x"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    sidecar
}

#[tokio::test]
async fn promtool_accepts_the_metrics_and_the_alert_rules() {
    let sidecar = sidecar_with_calls().await;
    let (status, metrics) = sidecar.admin_get("/metrics");
    assert_eq!(status, 200);
    let (ok, report) = promtool(&["check", "metrics"], Some(&metrics));
    assert!(ok, "promtool check metrics:\n{report}\n{metrics}");
    assert!(
        report.trim().is_empty(),
        "promtool lint findings:\n{report}"
    );

    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/kvs-sidecar-rules.yaml"
    );
    let (ok, report) = promtool(&["check", "rules", rules], None);
    assert!(ok, "promtool check rules:\n{report}");
    assert!(report.contains("5 rules found"), "{report}");
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_sidecar_and_counts_the_calls() {
    let sidecar = sidecar_with_calls().await;
    let dir = std::env::temp_dir().join(format!("kvs-sidecar-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: kvs-sidecar\n    static_configs:\n      - targets: ['{}']\n",
            sidecar.admin
        ),
    )
    .unwrap();
    let port = common::unused_port();
    let web = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian package prometheus) is installed"),
    );

    let query =
        "sum(grpc_server_handled_total{grpc_method=\"JoinStorageSession\",grpc_code=\"OK\"})";
    let path = format!("/api/v1/query?query={}", percent_encode(query));
    let until = Instant::now() + Duration::from_secs(60);
    let (mut up, mut counted) = (false, None);
    while Instant::now() < until && (!up || counted != Some(CALLS as f64)) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Ok((200, targets)) = try_http_get(web, "/api/v1/targets") else {
            continue;
        };
        up = targets.contains("\"health\":\"up\"");
        let (_, answer) = http_get(web, &path);
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
        counted = v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok());
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(up, "the sidecar target never came up in Prometheus");
    assert_eq!(
        counted,
        Some(CALLS as f64),
        "Prometheus counted the calls made"
    );
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
