//! The read-only metrics endpoint: `GET /metrics` on `[api].metrics` (TCP,
//! localhost by default), answered from a fresh read of every counter.
//! It asks nothing of the controller thread, so a scrape never waits for
//! an apply, and an apply never waits for a scrape.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::{net::TcpListener, runtime::Handle};

use super::api::Server;
use crate::monitor::{Monitor, metrics};

async fn scrape(State(monitor): State<Arc<Monitor>>) -> Response {
    let encoded = tokio::task::spawn_blocking(move || {
        monitor
            .report(false)
            .map(|(report, facts)| metrics::exposition(report, facts))
    })
    .await;
    match encoded {
        Ok(Ok(parts)) => {
            // The parts go out one after the other, never copied into one.
            let chunks = parts
                .into_iter()
                .map(|part| Ok::<_, std::convert::Infallible>(Bytes::from(part)));
            let body = Body::from_stream(futures_util::stream::iter(chunks));
            ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
        }
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the counters: {e}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the scrape failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Serves `/metrics` on `address`, on `runtime`, until the server is
/// dropped.
pub fn serve(
    address: SocketAddr,
    monitor: Arc<Monitor>,
    runtime: &Handle,
) -> anyhow::Result<Server> {
    let listener = runtime
        .block_on(TcpListener::bind(address))
        .with_context(|| format!("binding the metrics address {address}"))?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .fallback(|| async { (StatusCode::NOT_FOUND, "only /metrics is served here\n") })
        .with_state(monitor);
    Ok(Server::start(
        "the metrics server",
        runtime,
        move |stopped| axum::serve(listener, app).with_graceful_shutdown(stopped),
        None,
    ))
}
