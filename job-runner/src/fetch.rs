//! The fetch stage: images read from the source in manifest order, as many at once as the
//! [`Window`] allows. Each fetch runs as a task of its own, so requests progress while the
//! stages after wait; an image whose listed size is above the cap is dead-lettered without a
//! request.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use tokio::sync::Notify;

use crate::pipeline::{FetchError, ImageSource, Row};
use crate::window::{Bounds, Window};

/// The dead-letter reason of an image whose listed size is above `cap`, if it is.
pub fn oversized(size: u64, cap: u64) -> Option<String> {
    (size > cap).then(|| {
        format!("too large: {size} bytes listed, above the {cap}-byte limit (--max-image-bytes)")
    })
}

fn source_throttled<S: ImageSource>(source: &S) -> u64 {
    source.throttled()
}

/// What a fetch gives: the image's row and its bytes or why it has none, and how long it took.
type Fetched = (Row, Result<Bytes, FetchError>, Duration);

/// A fetch under way (or done and not handed out yet), with the listed bytes it holds.
type Running = Pin<Box<dyn Future<Output = (Fetched, u64)> + Send>>;

/// Fetches of a shard, in order.
pub struct Fetcher<S> {
    source: Arc<S>,
    root_len: usize,
    waiting: VecDeque<Row>,
    running: FuturesOrdered<Running>,
    bytes: u64,
    max_bytes: u64,
    window: Window,
    started: Instant,
    throttled: u64,
    requests: Arc<AtomicUsize>,
    ended: Arc<Notify>,
}

impl<S: ImageSource> Fetcher<S> {
    /// Fetches `rows` (whose paths start with a root of `root_len` bytes) from `source`,
    /// within `bounds`, dead-lettering images listed above `max_bytes`.
    pub fn new(
        source: Arc<S>,
        root_len: usize,
        rows: impl IntoIterator<Item = Row>,
        bounds: Bounds,
        max_bytes: u64,
    ) -> Self {
        Self {
            root_len,
            waiting: rows.into_iter().collect(),
            running: FuturesOrdered::new(),
            bytes: 0,
            max_bytes,
            window: Window::new(bounds),
            started: Instant::now(),
            throttled: source_throttled(&*source),
            requests: Arc::new(AtomicUsize::new(0)),
            ended: Arc::new(Notify::new()),
            source,
        }
    }

    /// Starts the fetches the window admits.
    fn top_up(&mut self) {
        let throttled = source_throttled(&*self.source);
        self.window.throttled(
            throttled.saturating_sub(self.throttled),
            self.requests.load(Ordering::Relaxed),
        );
        self.throttled = throttled;
        while let Some(row) = self.waiting.front() {
            if let Some(reason) = oversized(row.bytes, self.max_bytes) {
                let row = self.waiting.pop_front().expect("a front row");
                let done = (row, Err(FetchError::Image(reason)), Duration::ZERO);
                self.running
                    .push_back(Box::pin(futures::future::ready((done, 0))));
                continue;
            }
            let requests = self.requests.load(Ordering::Relaxed);
            if !self
                .window
                .admits(requests, self.running.len(), self.bytes, row.bytes)
            {
                break;
            }
            let row = self.waiting.pop_front().expect("a front row");
            let size = row.bytes;
            self.bytes += size;
            let source = self.source.clone();
            let root_len = self.root_len;
            let requests = self.requests.clone();
            let ended = self.ended.clone();
            requests.fetch_add(1, Ordering::Relaxed);
            let task = tokio::spawn(async move {
                let start = Instant::now();
                let key = &row.path[root_len..];
                let result = source.fetch(key, row.etag.as_deref()).await;
                requests.fetch_sub(1, Ordering::Relaxed);
                ended.notify_one();
                (row, result, start.elapsed())
            });
            self.running.push_back(Box::pin(async move {
                let done = task
                    .await
                    .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
                (done, size)
            }));
        }
    }

    /// The next image in manifest order, or `None` when every one was handed out. While it
    /// waits for that one, each fetch that ends lets new ones start.
    pub async fn next(&mut self) -> Option<(Row, Result<Bytes, FetchError>)> {
        let ((row, result, took), size) = loop {
            self.top_up();
            let ended = self.ended.notified();
            tokio::select! {
                biased;
                head = self.running.next() => break head?,
                () = ended => {}
            }
        };
        self.bytes -= size;
        if size > 0 && result.is_ok() {
            self.window.completed(took, self.started.elapsed());
        }
        Some((row, result))
    }

    /// Fetches waiting for their answer.
    pub fn in_flight(&self) -> usize {
        self.requests.load(Ordering::Relaxed)
    }

    /// The current target of the window.
    pub fn target(&self) -> usize {
        self.window.target()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sizes_above_the_cap_are_refused() {
        assert_eq!(oversized(50, 50), None);
        assert_eq!(
            oversized(51, 50).as_deref(),
            Some("too large: 51 bytes listed, above the 50-byte limit (--max-image-bytes)")
        );
    }
}
