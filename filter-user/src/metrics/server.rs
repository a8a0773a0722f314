//! The HTTP side of `--metrics-listen`: `GET /metrics` (the Prometheus text exposition) and
//! `GET /healthz` (200 while the filter enforces its intended policy, 503 otherwise, with a line
//! saying why) and `GET /livez` (200 while the daemon's loop runs: for a liveness probe, which
//! must not restart a daemon only because its last reload was refused). Anything else is 404. Each connection is served in a task of its own and the
//! exposition is encoded on a blocking thread, so a slow scraper holds up neither the daemon's
//! loop nor the DNS forwarder.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::{Health, Metrics};

/// The content type of the Prometheus text format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// A client that sends nothing for this long is dropped: scrapers send their request at once.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `address` (so a port in use fails the start, before anything is attached).
pub async fn bind(address: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(address)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen for metrics on {address}: {err}"))
}

/// Serves until the task is aborted.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(err) => {
                tracing::warn!("metrics: accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, Arc::clone(&metrics)));
            let mut builder = http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let _ = builder
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<Incoming>,
    metrics: Arc<Metrics>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::GET {
        return Ok(text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into()));
    }
    Ok(match request.uri().path() {
        "/metrics" => match tokio::task::spawn_blocking(move || metrics.encode()).await {
            Ok(Ok(exposition)) => {
                let mut response = Response::new(Full::new(Bytes::from(exposition)));
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
                response
            }
            _ => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot encode the metrics\n".into(),
            ),
        },
        "/healthz" => match metrics.health() {
            Health::Enforcing => text(StatusCode::OK, "enforcing\n".into()),
            Health::Starting => text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into()),
            Health::Degraded(why) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        "/livez" if metrics.alive() => text(StatusCode::OK, "alive\n".into()),
        "/livez" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon's loop has not run for 10 s\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "try /metrics, /healthz or /livez\n".into(),
        ),
    })
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
