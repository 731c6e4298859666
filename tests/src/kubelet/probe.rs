//! Container probes (`httpGet`, `tcpSocket`) against the pod's address, and their counters.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where a probe stands: consecutive results and when it is next due.
#[derive(Clone, Debug)]
pub struct Counter {
    /// Consecutive successes.
    pub successes: i32,
    /// Consecutive failures.
    pub failures: i32,
    /// Seconds since the container started when it is next due.
    pub next_at: f64,
}

impl Counter {
    /// A counter for a container that just started.
    pub fn new(p: &Probe) -> Self {
        Self {
            successes: 0,
            failures: 0,
            next_at: f64::from(p.initial_delay_seconds.unwrap_or(0)),
        }
    }

    /// Records one result; the probe's verdict once a threshold is reached (`Some(true)` after
    /// `successThreshold` successes, `Some(false)` after `failureThreshold` failures).
    pub fn record(&mut self, p: &Probe, ok: bool, elapsed: f64) -> Option<bool> {
        self.next_at = elapsed + f64::from(p.period_seconds.unwrap_or(10).max(1));
        if ok {
            self.successes += 1;
            self.failures = 0;
            (self.successes >= p.success_threshold.unwrap_or(1)).then_some(true)
        } else {
            self.failures += 1;
            self.successes = 0;
            (self.failures >= p.failure_threshold.unwrap_or(3)).then_some(false)
        }
    }
}

/// Runs `p` against the container at `ip`: `Ok(())` when it passes, else why not.
pub async fn check(p: &Probe, c: &Container, ip: &str) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
    let attempt = async {
        if let Some(h) = &p.http_get {
            let port = port(&h.port, c)?;
            let path = h.path.as_deref().unwrap_or("/");
            http_get(ip, port, path).await
        } else if let Some(t) = &p.tcp_socket {
            let port = port(&t.port, c)?;
            TcpStream::connect((ip, port))
                .await
                .map(drop)
                .map_err(|e| format!("dial tcp {ip}:{port}: {e}"))
        } else {
            Err("the local kubelet runs httpGet and tcpSocket probes only".into())
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("timed out after {timeout:?}")))
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port(p: &IntOrString, c: &Container) -> Result<u16, String> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).map_err(|_| format!("port {n} out of range")),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name))
            .and_then(|cp| u16::try_from(cp.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    }
}

/// An HTTP/1.1 GET whose status is 200–399, as the kubelet's probe requires.
async fn http_get(ip: &str, port: u16, path: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect((ip, port))
        .await
        .map_err(|e| format!("Get \"http://{ip}:{port}{path}\": {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {ip}:{port}\r\nUser-Agent: kube-probe/1.34\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream
            .read(&mut head[read..])
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = String::from_utf8_lossy(&head[..read]);
    let code: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {line:?}"))?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {code}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let p = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            period_seconds: Some(5),
            initial_delay_seconds: Some(3),
            ..Probe::default()
        };
        let mut c = Counter::new(&p);
        assert_eq!(c.next_at, 3.0);
        assert_eq!(c.record(&p, false, 3.0), None);
        assert_eq!(c.next_at, 8.0);
        assert_eq!(c.record(&p, false, 8.0), Some(false));
        assert_eq!(c.record(&p, true, 13.0), Some(true));
        assert_eq!(c.failures, 0);
    }
}
