//! The API's client side, shared by every verb that talks to the daemon:
//! one HTTP/1 request with a JSON body over the daemon's Unix socket, and
//! the verdict turned into an exit status. A daemon that is not running is
//! one line on stderr and exit status 1.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::OutputFormat;

/// Where the daemon's API listens unless told otherwise (`[api].socket`).
pub const DEFAULT_SOCKET: &str = "/run/fulcrum/api.sock";

/// How a verb reaches the daemon and prints its answer.
#[derive(Args, Clone)]
pub struct Connection {
    /// The daemon's API socket.
    #[arg(long, global = true, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// An answer: the HTTP status and the JSON body.
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Answer {
    /// Whether the daemon said yes.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body's `error`, or what the status means.
    pub fn reason(&self) -> String {
        match self.body["error"].as_str() {
            Some(error) => error.to_string(),
            None if self.body["problems"].is_array() || self.status == 422 => {
                "refused: see the reasons above; nothing changed".into()
            }
            None => format!("HTTP {}", self.status),
        }
    }
}

/// Sends one request to the daemon on `socket`; returns its response,
/// whose body is still to be read.
async fn send(
    socket: &Path,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| {
        anyhow::anyhow!(
            "no fulcrum daemon answers on {} ({e}); is `fulcrum run` running?",
            socket.display()
        )
    })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("talking HTTP to the daemon")?;
    tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "fulcrum")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))?;
    sender
        .send_request(request)
        .await
        .context("the daemon did not answer")
}

async fn exchange(
    socket: &Path,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<Answer> {
    let response = send(socket, method, path, body).await?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .context("reading the daemon's answer")?
        .to_bytes();
    let body = serde_json::from_slice(&bytes)
        .with_context(|| format!("the daemon's answer is not JSON (HTTP {status})"))?;
    Ok(Answer { status, body })
}

/// Sends one POST and hands each line of the answer to `line` as it
/// arrives, until the answer ends or `line` says stop (false). An answer
/// other than 200 is an error with its reason.
async fn stream_lines(
    socket: &Path,
    path: &str,
    body: Vec<u8>,
    line: &mut dyn FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let response = send(socket, "POST", path, body).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let bytes = body.collect().await?.to_bytes();
        let answer: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        bail!(
            "{}",
            answer["error"]
                .as_str()
                .map_or_else(|| format!("HTTP {status}"), str::to_string)
        );
    }
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.context("reading the daemon's stream")?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let text = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..=end);
            if !line(&text) {
                return Ok(());
            }
        }
    }
    Ok(())
}

impl Connection {
    /// Sends one POST of `body` and hands each line of the streamed answer
    /// to `line` until it returns false or the stream ends.
    pub fn stream(
        &self,
        path: &str,
        body: &Value,
        mut line: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(body)?;
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client's runtime")?
            .block_on(stream_lines(&self.socket, path, bytes, &mut line))
    }

    /// Sends one request (`body` as JSON for POSTs) and returns the answer.
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> anyhow::Result<Answer> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client's runtime")?
            .block_on(exchange(&self.socket, method, path, bytes))
    }

    /// Sends one request; a failure before any answer (no daemon, say) is
    /// also printed as `{"error": ...}` when JSON was asked for, so a JSON
    /// reader always gets one document.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        self.call(method, path, body).map_err(|e| self.fail(e))
    }

    /// `error`, printed as a JSON document first when JSON was asked for.
    pub fn fail(&self, error: anyhow::Error) -> anyhow::Error {
        if let OutputFormat::Json = self.format {
            println!("{}", serde_json::json!({ "error": format!("{error:#}") }));
        }
        error
    }

    /// Prints `answer` (JSON as is, or `text` of it) and turns a refusal
    /// into an error.
    pub fn finish(
        &self,
        answer: &Answer,
        text: impl FnOnce(&Value) -> String,
    ) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&answer.body)?),
            OutputFormat::Text => print!("{}", text(&answer.body)),
        }
        if !answer.ok() {
            bail!("{}", answer.reason());
        }
        Ok(())
    }
}
