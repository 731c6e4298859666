//! The operator's HTTP endpoints: `/metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (the operator has reached the API server; a standby replica is ready
//! too, so that rolling updates of a two-replica Deployment proceed).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Content type of the Prometheus text exposition (as prometheus-client writes it).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoints report from.
pub struct Health {
    /// The metrics.
    pub metrics: Arc<Metrics>,
    /// Set once the operator has had an answer from the API server.
    pub ready: AtomicBool,
    /// The phases of the runs the controller knows, for the `pomona_runs` gauge.
    pub phases: Box<dyn Fn() -> Vec<Option<pomona_crds::Phase>> + Send + Sync>,
}

/// The answer to one request (pure, so it is tested without a socket).
pub fn respond(health: &Health, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: String, content_type: &str| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a static response is valid")
    };
    let plain = "text/plain; charset=utf-8";
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n".into(), plain);
    }
    match path {
        "/metrics" => text(
            StatusCode::OK,
            health.metrics.render((health.phases)()),
            METRICS_CONTENT_TYPE,
        ),
        "/healthz" => text(StatusCode::OK, "ok\n".into(), plain),
        "/readyz" if health.ready.load(Ordering::Relaxed) => {
            text(StatusCode::OK, "ready\n".into(), plain)
        }
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the Kubernetes API yet\n".into(),
            plain,
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
            plain,
        ),
    }
}

/// Serves the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a metrics connection failed");
                continue;
            }
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&health, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn health(ready: bool) -> Health {
        Health {
            metrics: Arc::new(Metrics::default()),
            ready: AtomicBool::new(ready),
            phases: Box::new(|| vec![Some(pomona_crds::Phase::Reducing)]),
        }
    }

    async fn body(r: Response<Full<Bytes>>) -> String {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn endpoints_answer() {
        let h = health(false);
        assert_eq!(
            respond(&h, &Method::GET, "/readyz").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        h.ready.store(true, Ordering::Relaxed);
        assert_eq!(
            respond(&h, &Method::GET, "/readyz").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&h, &Method::GET, "/healthz").status(),
            StatusCode::OK
        );
        assert_eq!(
            respond(&h, &Method::GET, "/x").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            respond(&h, &Method::POST, "/metrics").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
        let metrics = respond(&h, &Method::GET, "/metrics");
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            METRICS_CONTENT_TYPE
        );
        let text = body(metrics).await;
        assert!(text.contains("pomona_runs{phase=\"Reducing\"} 1"), "{text}");
    }

    #[tokio::test]
    async fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Arc::new(health(true))));
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.ends_with("ok\n"), "{out}");
        server.abort();
    }
}
