//! Reading what the daemon exports, as a monitoring system would: a plain
//! HTTP GET from inside a lab namespace, and the OpenMetrics text parsed
//! into samples that tests look up by name and labels.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use anyhow::{Context as _, bail};

use crate::netns::Netns;

/// `GET path` from `address`, inside `netns`: the status code and body.
pub fn http_get(netns: &Netns, address: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    netns.enter(|| {
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
            .with_context(|| format!("connecting to {address}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
        )?;
        // Large reads: a scrape of 100,000 backends is tens of megabytes.
        let mut answer = Vec::new();
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let n = stream.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
        let answer = String::from_utf8(answer).context("an answer that is not UTF-8")?;
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .context("an HTTP answer without a header")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("an HTTP answer without a status")?;
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)?
        } else {
            body.to_string()
        };
        Ok((status, body))
    })
}

/// The body of a chunked transfer.
pub(crate) fn dechunk(mut body: &str) -> anyhow::Result<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").context("a chunk without a size")?;
        let size = usize::from_str_radix(size.trim(), 16).context("a chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        out += rest.get(..size).context("a short chunk")?;
        body = rest.get(size + 2..).context("a chunk without its end")?;
    }
}

/// One scrape: sample name and sorted labels to value.
#[derive(Clone, Debug, Default)]
pub struct Samples(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Samples {
    /// Parses OpenMetrics or Prometheus text (no escaped quotes in labels).
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut samples = BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').context("a sample without a value")?;
            let value: f64 = value
                .parse()
                .with_context(|| format!("the value of {line:?}"))?;
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let mut pairs = Vec::new();
            for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                let (key, value) = pair.split_once("=\"").context("a label")?;
                pairs.push((key.to_string(), value.trim_end_matches('"').to_string()));
            }
            pairs.sort();
            if samples.insert((name.to_string(), pairs), value).is_some() {
                bail!("the series {series} appears twice");
            }
        }
        Ok(Self(samples))
    }

    /// The value of `name` with exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut key: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        key.sort();
        self.0.get(&(name.to_string(), key)).copied()
    }

    /// Every series of `name`: its labels and value.
    pub fn series(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        self.0
            .iter()
            .filter(|((n, _), _)| n == name)
            .map(|((_, labels), value)| (labels.iter().cloned().collect(), *value))
            .collect()
    }

    /// The metric names present.
    pub fn names(&self) -> std::collections::BTreeSet<&str> {
        self.0.keys().map(|(n, _)| n.as_str()).collect()
    }
}

/// Every `fulcrum_...` metric name the shipped Grafana dashboard queries.
pub fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    fn walk(value: &serde_json::Value, names: &mut std::collections::BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    if let ("expr" | "query" | "definition", serde_json::Value::String(text)) =
                        (key.as_str(), value)
                    {
                        names.extend(
                            text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                                .filter(|word| word.starts_with("fulcrum_"))
                                .map(str::to_string),
                        );
                    }
                    walk(value, names);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, names)),
            _ => {}
        }
    }
    let dashboard = include_str!("../../deploy/grafana/fulcrum-dashboard.json");
    let mut names = std::collections::BTreeSet::new();
    walk(
        &serde_json::from_str(dashboard).expect("the dashboard is JSON"),
        &mut names,
    );
    names
}
