//! The API's client side, shared by every verb that talks to the daemon:
//! one HTTP/1 request with a JSON body over the daemon's Unix socket, and
//! the verdict turned into an exit status. A daemon that is not running,
//! or does not answer within `--timeout`, is one line on stderr and exit
//! status 1.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use super::OutputFormat;
use crate::daemon::wire::{ErrorAnswer, Route};

/// The body of a request that has none.
pub const NO_BODY: Option<&()> = None;

/// Where the daemon's API listens unless told otherwise (`[api].socket`).
pub const DEFAULT_SOCKET: &str = "/run/fulcrum/api.sock";

/// How long a verb waits for the daemon's answer unless `--timeout` says
/// otherwise: a daemon that has not answered by then is stuck (its
/// answers take milliseconds; an apply of 1,024 large tables, seconds).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a verb reaches the daemon and prints its answer.
#[derive(Args, Clone)]
pub struct Connection {
    /// The daemon's API socket [default: /run/fulcrum/api.sock; for `apply
    /// FILE` and `plan FILE`, FILE's `[api] socket`].
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// How long to wait for the daemon, in seconds: for its answer
    /// [default: 10] (for `trace` and `top`, for the stream to start or
    /// each refresh), or with `backend drain --wait`, for the drain
    /// [default: 300].
    #[arg(long, global = true, value_name = "SECONDS", value_parser = seconds)]
    pub timeout: Option<Duration>,
}

/// A `--timeout`: a positive number of seconds.
fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<f64>()
        .ok()
        .filter(|&s| s > 0.0)
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
        .ok_or_else(|| format!("{text:?}: want a number of seconds above 0"))
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

    /// The body as `T`, or why it is not one.
    pub fn read<T: DeserializeOwned>(&self) -> anyhow::Result<T> {
        T::deserialize(&self.body).with_context(|| {
            format!(
                "the daemon's answer (HTTP {}) is not what this fulcrum reads",
                self.status
            )
        })
    }

    /// The body's `error`, or what the status means.
    pub fn reason(&self) -> String {
        match self.read::<ErrorAnswer>() {
            Ok(answer) => answer.error,
            Err(_) if self.status == 422 => {
                "refused: see the reasons above; nothing changed".into()
            }
            Err(_) => format!("HTTP {}", self.status),
        }
    }
}

/// `work`, unless it takes longer than `limit`: then an error that names
/// the daemon's socket and the limit.
async fn within<T>(
    socket: &Path,
    limit: Duration,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
        bail!(
            "no answer from the daemon on {} within {} s (--timeout)",
            socket.display(),
            limit.as_secs_f64()
        )
    })
}

/// Sends one request to the daemon on `socket`; returns its response,
/// whose body is still to be read.
async fn send(
    socket: &Path,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> anyhow::Result<hyper::Response<hyper::body::Incoming>> {
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "permission denied on the daemon's socket {} ({e}): the admin API is root's \
                 (run this as root, or with sudo)",
                socket.display()
            ),
            _ => anyhow::anyhow!(
                "no fulcrum daemon answers on {} ({e}); is `fulcrum run` running?",
                socket.display()
            ),
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
/// arrives, until the answer ends or `line` says stop (false). The answer
/// must start within `limit`; a stream lasts as long as it lasts. An
/// answer other than 200 is an error with its reason.
async fn stream_lines(
    socket: &Path,
    limit: Duration,
    path: &str,
    body: Vec<u8>,
    line: &mut dyn FnMut(&str) -> bool,
) -> anyhow::Result<()> {
    let response = within(socket, limit, send(socket, "POST", path, body)).await?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    if status != 200 {
        let bytes = body.collect().await?.to_bytes();
        let answer = serde_json::from_slice::<ErrorAnswer>(&bytes);
        bail!(
            "{}",
            answer.map_or_else(|_| format!("HTTP {status}"), |a| a.error)
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

/// Runs `work` to its end on a runtime of the calling thread.
fn block_on<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the client's runtime")?
        .block_on(work)
}

impl Connection {
    /// The daemon's socket: `--socket`, else the default.
    pub fn socket(&self) -> &Path {
        self.socket
            .as_deref()
            .unwrap_or_else(|| Path::new(DEFAULT_SOCKET))
    }

    /// This connection, to `socket` unless `--socket` named one.
    pub fn unless_given(&self, socket: PathBuf) -> Connection {
        Connection {
            socket: Some(self.socket.clone().unwrap_or(socket)),
            ..self.clone()
        }
    }

    /// How long to wait for an answer.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(DEFAULT_TIMEOUT)
    }

    /// Sends one POST of `body` and hands each line of the streamed answer
    /// to `line` until it returns false or the stream ends.
    pub fn stream(
        &self,
        route: Route,
        body: &impl Serialize,
        mut line: impl FnMut(&str) -> bool,
    ) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(body)?;
        block_on(stream_lines(
            self.socket(),
            self.timeout(),
            route.path,
            bytes,
            &mut line,
        ))
    }

    /// Sends one request (`body` as JSON for POSTs; `NO_BODY` for none)
    /// and returns the answer.
    pub fn call<B: Serialize>(&self, route: Route, body: Option<&B>) -> anyhow::Result<Answer> {
        let bytes = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let socket = self.socket();
        block_on(within(
            socket,
            self.timeout(),
            exchange(socket, route.method, route.path, bytes),
        ))
    }

    /// Sends one request; a failure before any answer (no daemon, say) is
    /// also printed as `{"error": ...}` when JSON was asked for, so a JSON
    /// reader always gets one document.
    pub fn request<B: Serialize>(&self, route: Route, body: Option<&B>) -> anyhow::Result<Answer> {
        self.call(route, body).map_err(|e| self.fail(e))
    }

    /// `error`, printed as a JSON document first when JSON was asked for.
    pub fn fail(&self, error: anyhow::Error) -> anyhow::Error {
        if let OutputFormat::Json = self.format {
            let answer = ErrorAnswer {
                error: format!("{error:#}"),
            };
            println!("{}", serde_json::to_string(&answer).unwrap_or_default());
        }
        error
    }

    /// Prints `answer` (JSON as is, or `text` of it when it is a `T`) and
    /// turns a refusal into an error.
    pub fn finish<T: DeserializeOwned>(
        &self,
        answer: &Answer,
        text: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        match self.format {
            OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&answer.body)?),
            OutputFormat::Text => {
                if let Ok(body) = answer.read::<T>() {
                    print!("{}", text(&body));
                }
            }
        }
        match (answer.ok(), self.format, answer.read::<ErrorAnswer>()) {
            (true, ..) => Ok(()),
            // The reasons are in the document just printed, not above.
            (false, OutputFormat::Json, Err(_)) if answer.status == 422 => {
                bail!("refused: see `problems` in the JSON; nothing changed")
            }
            (false, ..) => bail!("{}", answer.reason()),
        }
    }
}
