//! The admin API: HTTP/1 with JSON bodies on a Unix socket (mode 0600, in a
//! directory only root can write), served on tokio. Handlers only parse
//! and check requests; each one is handed to the controller thread, which
//! serializes them, so two concurrent applies never interleave. The caller's
//! uid comes from the socket's peer credentials and goes to the journal.

use std::{
    os::unix::fs::{MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use axum::{
    Json, Router,
    extract::{
        ConnectInfo, DefaultBodyLimit, FromRef, State, connect_info::Connected,
        rejection::JsonRejection,
    },
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    serve::IncomingStream,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::{net::UnixListener, runtime::Handle, sync::oneshot};

use super::{
    trace::{Hub, event_line},
    wire::{
        self, ApplyRequest, BackendRequest, ErrorAnswer, ExplainRequest, TraceLine, TraceRenewed,
        TraceRequest, TraceStarted, TraceStatsLine,
    },
};

/// The largest request body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// What the controller is asked to do.
#[derive(Debug)]
pub enum Request {
    /// `GET /v1/status`.
    Status,
    /// `GET /v1/config`: the config text in force.
    Config,
    /// `POST /v1/plan`.
    Plan(ApplyRequest),
    /// `POST /v1/apply`.
    Apply(ApplyRequest),
    /// `POST /v1/backend`.
    Backend(BackendRequest),
    /// `POST /v1/explain`.
    Explain(ExplainRequest),
    /// `GET /v1/tables`: every VIP's table as the kernel holds it.
    Tables,
    /// `POST /v1/detach`.
    Detach,
    /// `GET /v1/watch`.
    Watch,
    /// `POST /v1/trace`: open a trace session.
    TraceStart(TraceRequest),
    /// Renew the open session's lease (its stream is still read).
    TraceRenew(u64),
    /// Close the session (its client went).
    TraceStop(u64),
}

/// An HTTP status and a JSON body.
#[derive(Debug)]
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
}

impl Reply {
    /// 200 with `answer`.
    pub fn ok(answer: &impl Serialize) -> Self {
        Self::with(200, answer)
    }

    /// `status` with `answer`.
    pub fn with(status: u16, answer: &impl Serialize) -> Self {
        match serde_json::to_value(answer) {
            Ok(body) => Self { status, body },
            Err(e) => Self::error(500, format!("encoding the answer: {e}")),
        }
    }

    /// `status` with an `ErrorAnswer`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let answer = ErrorAnswer {
            error: message.into(),
        };
        Self {
            status,
            body: serde_json::to_value(answer).unwrap_or_default(),
        }
    }

    /// The body as `T`, when it is one.
    pub fn read<T: DeserializeOwned>(&self) -> Option<T> {
        T::deserialize(&self.body).ok()
    }
}

/// A request, who made it, and where the answer goes.
#[derive(Debug)]
pub struct Job {
    /// What to do.
    pub request: Request,
    /// The caller's uid.
    pub uid: Option<u32>,
    /// The answer.
    pub reply: oneshot::Sender<Reply>,
}

/// The peer's uid, from `SO_PEERCRED`.
#[derive(Clone, Copy, Debug)]
struct Caller(Option<u32>);

impl Connected<IncomingStream<'_, UnixListener>> for Caller {
    fn connect_info(stream: IncomingStream<'_, UnixListener>) -> Self {
        Self(stream.io().peer_cred().ok().map(|c| c.uid()))
    }
}

/// Where requests go, to be answered one at a time: true when taken.
pub type Jobs = std::sync::Arc<dyn Fn(Job) -> bool + Send + Sync>;

/// What the handlers share: the way to the controller, and the trace
/// sessions' events.
#[derive(Clone)]
struct Shared {
    jobs: Jobs,
    hub: Hub,
}

impl FromRef<Shared> for Jobs {
    fn from_ref(shared: &Shared) -> Self {
        shared.jobs.clone()
    }
}

/// Hands `request` to the controller and waits for its answer.
async fn ask(jobs: &Jobs, caller: Caller, request: Request) -> Reply {
    let (reply, answer) = oneshot::channel();
    let job = Job {
        request,
        uid: caller.0,
        reply,
    };
    if !jobs(job) {
        return Reply::error(503, "the controller is shutting down");
    }
    answer
        .await
        .unwrap_or_else(|_| Reply::error(500, "the controller dropped the request"))
}

async fn submit(jobs: &Jobs, caller: Caller, request: Request) -> Response {
    respond(ask(jobs, caller, request).await)
}

/// Closes a trace session when its stream goes (the client read to its
/// end, hung up, or crashed).
struct SessionGuard {
    jobs: Jobs,
    caller: Caller,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let (reply, _) = oneshot::channel();
        (self.jobs)(Job {
            request: Request::TraceStop(self.id),
            uid: self.caller.0,
            reply,
        });
    }
}

/// `POST /v1/trace`: JSON lines, one per event, and a `stats` line a
/// second (which also tells a hung-up client apart: writing to it fails).
async fn trace(
    State(shared): State<Shared>,
    ConnectInfo(caller): ConnectInfo<Caller>,
    body: Result<Json<TraceRequest>, JsonRejection>,
) -> Response {
    let request = match body {
        Ok(Json(request)) => request,
        Err(rejection) => return bad_body(rejection),
    };
    let started = ask(&shared.jobs, caller, Request::TraceStart(request)).await;
    let Some(TraceStarted {
        session: id,
        labels,
        ..
    }) = started.read()
    else {
        return respond(started);
    };
    let guard = SessionGuard {
        jobs: shared.jobs.clone(),
        caller,
        id,
    };
    let Some(events) = shared.hub.events(id) else {
        return respond(Reply::error(500, "the trace session has no events"));
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let stream = futures_util::stream::unfold(
        (events, labels, tick, guard),
        |(mut events, mut labels, mut tick, guard)| async move {
            let line = tokio::select! {
                event = events.recv() => {
                    let event = event?;
                    TraceLine::Event(Box::new(event_line(&event, &labels)))
                }
                _ = tick.tick() => {
                    let renewed = ask(&guard.jobs, guard.caller, Request::TraceRenew(guard.id)).await;
                    let TraceRenewed { labels: fresh, stats } = renewed.read().filter(|_| renewed.status == 200)?;
                    labels = fresh;
                    TraceLine::Stats(TraceStatsLine { stats })
                }
            };
            let mut bytes = serde_json::to_vec(&line).ok()?;
            bytes.push(b'\n');
            let bytes = hyper::body::Bytes::from(bytes);
            Some((
                Ok::<_, std::convert::Infallible>(bytes),
                (events, labels, tick, guard),
            ))
        },
    );
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(reply.body)).into_response()
}

/// A malformed body: the parser's 4xx (400 bad JSON, 413 too large, 415
/// not JSON, 422 unknown fields or wrong types) with its reason, in JSON
/// like every answer.
fn bad_body(rejection: JsonRejection) -> Response {
    respond(Reply::error(
        rejection.status().as_u16(),
        format!("bad request body: {}", rejection.body_text()),
    ))
}

/// A route whose request has no body.
macro_rules! bare_route {
    ($name:ident, $variant:ident) => {
        async fn $name(
            State(jobs): State<Jobs>,
            ConnectInfo(caller): ConnectInfo<Caller>,
        ) -> Response {
            submit(&jobs, caller, Request::$variant).await
        }
    };
}

bare_route!(status, Status);
bare_route!(config, Config);
bare_route!(tables, Tables);
bare_route!(detach, Detach);
bare_route!(watch, Watch);

macro_rules! json_route {
    ($name:ident, $body:ty, $variant:ident) => {
        async fn $name(
            State(jobs): State<Jobs>,
            ConnectInfo(caller): ConnectInfo<Caller>,
            body: Result<Json<$body>, JsonRejection>,
        ) -> Response {
            match body {
                Ok(Json(body)) => submit(&jobs, caller, Request::$variant(body)).await,
                Err(rejection) => bad_body(rejection),
            }
        }
    };
}

json_route!(plan, ApplyRequest, Plan);
json_route!(apply, ApplyRequest, Apply);
json_route!(backend, BackendRequest, Backend);
json_route!(explain, ExplainRequest, Explain);

/// Prepares the socket's directory and path: the directory must not be
/// writable by anyone but root (or this process's user), and a socket
/// another controller still serves is not taken over.
fn prepare(socket: &Path) -> anyhow::Result<()> {
    let dir = socket
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .context("the API socket needs a directory")?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("checking {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if (meta.uid() != 0 && meta.uid() != me) || meta.mode() & 0o022 != 0 {
        bail!(
            "the API socket's directory {} may be written by others (owner uid {}, mode {:o}); \
             use a directory only root can write",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        );
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            bail!(
                "another fulcrum already serves the API on {}",
                socket.display()
            );
        }
        std::fs::remove_file(socket)
            .with_context(|| format!("removing the stale socket {}", socket.display()))?;
    }
    Ok(())
}

/// How long a stopping server may take to finish the answers in flight.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A server running on the daemon's runtime; dropping it stops the server
/// (waiting for the answers in flight, briefly) and removes its socket
/// file, if it has one. Dropped outside the runtime's own threads.
pub struct Server {
    remove: Option<PathBuf>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    runtime: Handle,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // The timer is made inside the runtime, which drives it.
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(STOP_GRACE, task).await });
        }
        if let Some(path) = &self.remove {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Server {
    /// Runs the server `serve` makes (given the future that completes when
    /// it should stop) on `runtime`, until the server is dropped; `name`
    /// says which server failed, if one does.
    pub fn start<F>(
        name: &str,
        runtime: &Handle,
        serve: impl FnOnce(Stopped) -> F,
        remove: Option<PathBuf>,
    ) -> Self
    where
        F: IntoFuture<Output = std::io::Result<()>>,
        F::IntoFuture: Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let stopped: Stopped = Box::pin(async {
            let _ = stopped.await;
        });
        let serving = serve(stopped).into_future();
        let label = name.to_string();
        let task = runtime.spawn(async move {
            if let Err(e) = serving.await {
                crate::note!("{label} stopped: {e}");
            }
        });
        Self {
            remove,
            stop: Some(stop),
            task: Some(task),
            runtime: runtime.clone(),
        }
    }
}

/// Completes when a server should stop.
pub type Stopped = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// Starts serving the API on `socket`, on `runtime`; requests go to
/// `jobs`.
pub fn serve(socket: &Path, jobs: Jobs, hub: Hub, runtime: &Handle) -> anyhow::Result<Server> {
    prepare(socket)?;
    let listener = runtime
        .block_on(async { UnixListener::bind(socket) })
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making {} mode 0600", socket.display()))?;
    let app = Router::new()
        .route(wire::STATUS.path, get(status))
        .route(wire::CONFIG.path, get(config))
        .route(wire::TABLES.path, get(tables))
        .route(wire::PLAN.path, post(plan))
        .route(wire::APPLY.path, post(apply))
        .route(wire::BACKEND.path, post(backend))
        .route(wire::EXPLAIN.path, post(explain))
        .route(wire::DETACH.path, post(detach))
        .route(wire::TRACE.path, post(trace))
        .route(wire::WATCH.path, get(watch))
        .fallback(|| async {
            respond(Reply::error(
                404,
                "no such API path; docs/api.md lists them",
            ))
        })
        .method_not_allowed_fallback(|| async {
            respond(Reply::error(405, "wrong method for this API path"))
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(Shared { jobs, hub });
    let service = app.into_make_service_with_connect_info::<Caller>();
    Ok(Server::start(
        "the API server",
        runtime,
        move |stopped| axum::serve(listener, service).with_graceful_shutdown(stopped),
        Some(socket.to_path_buf()),
    ))
}
