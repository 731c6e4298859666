//! A proxy in front of an S3 server (s3s-fs) that adds latency and injects the faults a real
//! service shows: `503 SlowDown`, `500 InternalError`, connections dropped without an answer,
//! object bodies that stall or are cut short, and a brown-out during which every request is
//! throttled. It can also hold an upload (never forwarding it), so that a test knows a process
//! is mid-upload when it kills it.
//!
//! Requests are forwarded as they came (the SigV4 signature covers the proxy's host, which is
//! forwarded unchanged); faults are drawn per request from a seeded generator.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::StreamExt;
use http::header::{CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::client::conn::http1 as client;
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What the proxy does to the requests it forwards. Probabilities are per request.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Seed of the generator the faults are drawn from.
    pub seed: u64,
    /// Delay added to every request before it is forwarded.
    pub latency: Duration,
    /// Answer `503 SlowDown` without forwarding.
    pub slow_down: f64,
    /// Answer `500 InternalError` without forwarding.
    pub internal_error: f64,
    /// Drop the connection without an answer.
    pub reset: f64,
    /// Object reads only: send the headers and half the body, then nothing (until the client
    /// gives up).
    pub stall: f64,
    /// Object reads only: send the headers and half the body, then drop the connection.
    pub truncate: f64,
    /// Once this many requests were seen, throttle every request for this long.
    pub brown_out: Option<(u64, Duration)>,
    /// Inject each fault whose probability is not zero once, on the first requests it may hit,
    /// before drawing: every kind is seen, whatever the draws.
    pub each_once: bool,
    /// Hold the first `PUT` whose path contains this (never forwarding it) for up to this
    /// long, then answer `503 SlowDown`.
    pub hold_put: Option<(String, Duration)>,
}

/// What the proxy saw and did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProxyCounts {
    /// Requests received.
    pub requests: u64,
    /// `503 SlowDown` answers (brown-out included).
    pub slow_down: u64,
    /// `500 InternalError` answers.
    pub internal_error: u64,
    /// Connections dropped without an answer.
    pub reset: u64,
    /// Bodies stalled halfway.
    pub stall: u64,
    /// Bodies cut halfway.
    pub truncate: u64,
    /// Uploads held (0 or 1).
    pub held: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    None,
    SlowDown,
    InternalError,
    Reset,
    Stall,
    Truncate,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    slow_down: AtomicU64,
    internal_error: AtomicU64,
    reset: AtomicU64,
    stall: AtomicU64,
    truncate: AtomicU64,
    held: AtomicU64,
}

struct State {
    upstream: SocketAddr,
    faults: Faults,
    counters: Counters,
    /// Faults already injected once (`Faults::each_once`): slow-down, internal error, reset,
    /// stall, truncate.
    forced: [AtomicBool; 5],
    brown_out_started: OnceLock<Instant>,
    log: Mutex<Vec<String>>,
}

/// A running proxy; stopped on drop.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    state: Arc<State>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`) on a free port, on threads of
    /// its own.
    ///
    /// # Panics
    /// When `upstream` is not an `http://IP:PORT` endpoint or no port can be bound.
    pub fn start(upstream: &str, faults: Faults) -> Self {
        let upstream: SocketAddr = upstream
            .strip_prefix("http://")
            .and_then(|a| a.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("upstream {upstream:?} is not http://IP:PORT"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("a runtime for the proxy");
        let listener =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking socket");
        let port = listener.local_addr().expect("the proxy's address").port();
        let state = Arc::new(State {
            upstream,
            faults,
            counters: Counters::default(),
            forced: Default::default(),
            brown_out_started: OnceLock::new(),
            log: Mutex::new(Vec::new()),
        });
        let accepting = state.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(serve(accepting.clone(), stream));
            }
        });
        Self {
            endpoint: format!("http://127.0.0.1:{port}"),
            state,
            runtime: Some(runtime),
        }
    }

    /// What the proxy saw and did so far.
    pub fn counts(&self) -> ProxyCounts {
        let c = &self.state.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ProxyCounts {
            requests: get(&c.requests),
            slow_down: get(&c.slow_down),
            internal_error: get(&c.internal_error),
            reset: get(&c.reset),
            stall: get(&c.stall),
            truncate: get(&c.truncate),
            held: get(&c.held),
        }
    }

    /// How many requests with this method had a path containing `part` (percent-encoded, as
    /// sent).
    pub fn requests_to(&self, method: &str, part: &str) -> usize {
        let log = self.state.log.lock().expect("not poisoned");
        log.iter()
            .filter(|line| {
                line.split_once(' ')
                    .is_some_and(|(m, path)| m == method && path.contains(part))
            })
            .count()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Serves one client connection, forwarding over one upstream connection of its own.
async fn serve(state: Arc<State>, stream: tokio::net::TcpStream) {
    let upstream = Arc::new(tokio::sync::Mutex::new(None));
    let service = service_fn(move |req| handle(state.clone(), upstream.clone(), req));
    let _ = server::Builder::new()
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

/// A number in [0, 1) drawn from `seed` and `n` (splitmix64).
fn draw(seed: u64, n: u64) -> f64 {
    let mut z = seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Whether a request reads an object (a GET of a key, not a listing).
fn reads_object(req: &Request<Incoming>) -> bool {
    let path = req.uri().path().trim_start_matches('/');
    req.method() == Method::GET
        && path.contains('/')
        && !req.uri().query().is_some_and(|q| q.contains("list-type"))
}

impl State {
    fn fault(&self, n: u64, object_read: bool) -> Fault {
        if let Some((after, length)) = self.faults.brown_out
            && n >= after
        {
            let started = *self.brown_out_started.get_or_init(Instant::now);
            if started.elapsed() < length {
                return Fault::SlowDown;
            }
        }
        let f = &self.faults;
        if f.each_once {
            let kinds = [
                (Fault::SlowDown, f.slow_down, true),
                (Fault::InternalError, f.internal_error, true),
                (Fault::Reset, f.reset, true),
                (Fault::Stall, f.stall, object_read),
                (Fault::Truncate, f.truncate, object_read),
            ];
            for ((fault, p, eligible), done) in kinds.into_iter().zip(&self.forced) {
                if p > 0.0 && eligible && !done.swap(true, Ordering::Relaxed) {
                    return fault;
                }
            }
        }
        let x = draw(f.seed, n);
        let mut edge = 0.0;
        let mut next = |p: f64| {
            edge += p;
            x < edge
        };
        if next(f.slow_down) {
            Fault::SlowDown
        } else if next(f.internal_error) {
            Fault::InternalError
        } else if next(f.reset) {
            Fault::Reset
        } else if object_read && next(f.stall) {
            Fault::Stall
        } else if object_read && next(f.truncate) {
            Fault::Truncate
        } else {
            Fault::None
        }
    }

    fn count(&self, fault: Fault) {
        let c = &self.counters;
        let counter = match fault {
            Fault::None => return,
            Fault::SlowDown => &c.slow_down,
            Fault::InternalError => &c.internal_error,
            Fault::Reset => &c.reset,
            Fault::Stall => &c.stall,
            Fault::Truncate => &c.truncate,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn full(data: Bytes) -> Body {
    Full::new(data)
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

/// An S3 error answer.
fn s3_error(status: StatusCode, code: &str) -> Response<Body> {
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code>\
         <Message>injected by the fault proxy</Message></Error>"
    );
    let mut resp = Response::new(full(Bytes::from(xml)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, "application/xml".parse().expect("a header"));
    resp
}

async fn handle(
    state: Arc<State>,
    upstream: Arc<tokio::sync::Mutex<Option<client::SendRequest<Full<Bytes>>>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let n = state.counters.requests.fetch_add(1, Ordering::Relaxed);
    let path = req
        .uri()
        .path_and_query()
        .map_or_else(String::new, |p| p.to_string());
    state
        .log
        .lock()
        .expect("not poisoned")
        .push(format!("{} {path}", req.method()));
    if !state.faults.latency.is_zero() {
        tokio::time::sleep(state.faults.latency).await;
    }
    if let Some((part, hold)) = &state.faults.hold_put
        && req.method() == Method::PUT
        && path.contains(part.as_str())
        && state
            .counters
            .held
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        tokio::time::sleep(*hold).await;
        return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"));
    }
    let fault = state.fault(n, reads_object(&req));
    state.count(fault);
    match fault {
        Fault::SlowDown => return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown")),
        Fault::InternalError => {
            return Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
        }
        Fault::Reset => return Err("connection reset by the fault proxy".into()),
        Fault::None | Fault::Stall | Fault::Truncate => {}
    }

    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    if parts.headers.remove(TRANSFER_ENCODING).is_some() {
        parts.headers.insert(CONTENT_LENGTH, body.len().into());
    }
    parts.headers.remove(CONNECTION);
    let forwarded = Request::from_parts(parts, Full::new(body));
    let answer = {
        let mut sender = upstream.lock().await;
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(state.upstream).await?;
            let (s, conn) = client::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            *sender = Some(s);
        }
        let sender = sender.as_mut().expect("connected");
        sender.ready().await?;
        sender.send_request(forwarded).await?
    };
    let (parts, body) = answer.into_parts();
    let body = body.collect().await?.to_bytes();
    if matches!(fault, Fault::None) || body.len() < 2 {
        return Ok(Response::from_parts(parts, full(body)));
    }
    let half = body.slice(..body.len() / 2);
    let head = futures::stream::iter([Ok::<_, BoxError>(Frame::data(half))]);
    let stream = match fault {
        Fault::Stall => head.chain(futures::stream::pending()).boxed(),
        _ => head
            .chain(futures::stream::iter([Err::<Frame<Bytes>, BoxError>(
                "body cut by the fault proxy".into(),
            )]))
            .boxed(),
    };
    Ok(Response::from_parts(
        parts,
        BodyExt::boxed_unsync(StreamBody::new(stream)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_are_uniform_enough_and_repeatable() {
        let xs: Vec<f64> = (0..10_000).map(|n| draw(7, n)).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let below = xs.iter().filter(|x| **x < 0.1).count();
        assert!((800..1200).contains(&below), "{below}");
        assert_eq!(draw(7, 42), draw(7, 42));
        assert_ne!(draw(7, 42), draw(8, 42));
    }
}
