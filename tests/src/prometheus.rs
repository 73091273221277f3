//! A real Prometheus for the monitoring tests: Debian's `prometheus`,
//! started inside a lab namespace on its localhost with a temporary data
//! directory, the project's alert rules and one-second scrape and
//! evaluation intervals, and asked through its own HTTP API. Dropping it
//! stops the process (by its PID) and removes the directory.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::{netns::Netns, scrape::http_get, wait};

/// Where Prometheus listens, inside the namespace.
const LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);

/// The project's alert rules.
pub fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/fulcrum-rules.yml")
}

/// A running Prometheus.
pub struct Prometheus<'a> {
    netns: &'a Netns,
    child: Child,
    dir: PathBuf,
}

/// One alert as Prometheus reports it.
#[derive(Clone, Debug)]
pub struct Alert {
    /// `pending` or `firing`.
    pub state: String,
    /// Its labels, `alertname` among them.
    pub labels: Value,
}

impl<'a> Prometheus<'a> {
    /// Starts Prometheus in `netns`, scraping `target` (job `fulcrum`)
    /// with `rules`, and waits until it is ready.
    pub fn start(netns: &'a Netns, target: SocketAddr, rules: &Path) -> anyhow::Result<Self> {
        let binary = Path::new("/usr/bin/prometheus");
        if !binary.exists() {
            bail!("prometheus is not installed at /usr/bin/prometheus: run `cargo xtask setup`");
        }
        let rules = rules
            .canonicalize()
            .with_context(|| format!("the rules file {}", rules.display()))?;
        let dir = std::env::temp_dir().join(format!("{}-prometheus", netns.name()));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: fulcrum\n    static_configs:\n      - targets: ['{target}']\n",
                rules.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns.name()])
            .arg(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={LISTEN}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let prometheus = Self { netns, child, dir };
        wait::until(
            Duration::from_secs(30),
            || {
                let ready = matches!(http_get(netns, LISTEN, "/-/ready"), Ok((200, _)));
                Ok(if ready { Ok(()) } else { Err(()) })
            },
            |()| {
                Ok(format!(
                    "prometheus was not ready; its log: {}",
                    prometheus.log()
                ))
            },
        )?;
        Ok(prometheus)
    }

    /// What Prometheus wrote on stderr.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(self.netns, LISTEN, path)?;
        anyhow::ensure!(status == 200, "GET {path}: {status} {body}");
        let answer: Value = serde_json::from_str(&body)?;
        anyhow::ensure!(answer["status"] == "success", "GET {path}: {answer}");
        Ok(answer["data"].clone())
    }

    /// Every pending or firing alert (`/api/v1/alerts`).
    pub fn alerts(&self) -> anyhow::Result<Vec<Alert>> {
        let data = self.api("/api/v1/alerts")?;
        Ok(data["alerts"]
            .as_array()
            .context("no alerts array")?
            .iter()
            .map(|a| Alert {
                state: a["state"].as_str().unwrap_or_default().to_string(),
                labels: a["labels"].clone(),
            })
            .collect())
    }

    /// The value of an instant query whose answer is one sample, if any.
    pub fn query_one(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let mut query = String::from("/api/v1/query?query=");
        for byte in expr.bytes() {
            if byte.is_ascii_alphanumeric() || b"_-.~".contains(&byte) {
                query.push(byte as char);
            } else {
                query += &format!("%{byte:02X}");
            }
        }
        let data = self.api(&query)?;
        Ok(data["result"]
            .as_array()
            .and_then(|r| r.first())
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse().ok()))
    }
}

impl Drop for Prometheus<'_> {
    fn drop(&mut self) {
        // Our own child, by its PID.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
