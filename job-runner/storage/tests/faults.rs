//! Storage through the fault proxy in front of a real S3 server: every injected fault is
//! retried and shows in the request counts; stalled bodies are cut by the request timeout.

use std::time::{Duration, Instant};

use bytes::Bytes;
use pomona_storage::testing::S3Server;
use pomona_storage::testing::proxy::{FaultProxy, Faults};
use pomona_storage::{RetryPolicy, S3Config, Storage};

fn through(proxy: &FaultProxy, server: &S3Server, timeout: Duration) -> S3Config {
    S3Config {
        endpoint: Some(proxy.endpoint.clone()),
        request_timeout: timeout,
        retry: RetryPolicy {
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(50),
            ..RetryPolicy::default()
        },
        ..server.config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_injected_fault_is_retried_and_counted() {
    let server = S3Server::start();
    let direct = server.storage("images/").await;
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    direct
        .put("a.bin", Bytes::from(data.clone()))
        .await
        .unwrap();

    let proxy = FaultProxy::start(
        &server.endpoint,
        Faults {
            seed: 11,
            slow_down: 0.15,
            internal_error: 0.1,
            reset: 0.1,
            stall: 0.1,
            truncate: 0.1,
            ..Faults::default()
        },
    );
    let config = through(&proxy, &server, Duration::from_millis(300));
    let s = Storage::open(&server.uri("images/"), &config)
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..40 {
        assert!(s.get("a.bin").await.unwrap() == data, "a whole, right body");
    }
    let (injected, counts) = (proxy.counts(), s.counts());
    eprintln!("{injected:?} {counts:?} in {:.2?}", started.elapsed());
    let faults = injected.slow_down
        + injected.internal_error
        + injected.reset
        + injected.stall
        + injected.truncate;
    assert!(injected.stall > 0 && injected.truncate > 0 && injected.reset > 0);
    assert_eq!(counts.requests, injected.requests);
    assert_eq!(counts.requests, 40 + faults);
    assert_eq!(counts.retries, faults);
    assert_eq!(counts.throttled, injected.slow_down);
    assert_eq!(counts.timeouts, injected.stall, "each stalled body was cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brown_out_slows_requests_down_without_failing_them() {
    let server = S3Server::start();
    let direct = server.storage("images/").await;
    direct.put("a.bin", Bytes::from_static(b"x")).await.unwrap();
    let outage = Duration::from_millis(1500);
    let proxy = FaultProxy::start(
        &server.endpoint,
        Faults {
            brown_out: Some((0, outage)),
            ..Faults::default()
        },
    );
    // The default retry policy (backoff from 200 ms), as a run uses it.
    let config = S3Config {
        endpoint: Some(proxy.endpoint.clone()),
        ..server.config()
    };
    let config = S3Config {
        retry: RetryPolicy::default(),
        ..config
    };
    let s = Storage::open(&server.uri("images/"), &config)
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(&s.get("a.bin").await.unwrap()[..], b"x");
    assert!(started.elapsed() >= outage);
    let counts = s.counts();
    assert!(counts.throttled >= 3, "{counts:?}");
    assert_eq!(counts.throttled, proxy.counts().slow_down);
}
