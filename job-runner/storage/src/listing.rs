//! Listing a source by prefix, concurrently, in key order.
//!
//! One ListObjectsV2 stream returns a few thousand keys a second. [`list_in_order`] probes the
//! source with a delimiter to find its sub-prefixes (level by level, up to [`FanOut::depth`]
//! levels and [`FanOut::width`] parts), lists up to [`FanOut::in_flight`] of them at once, and
//! hands their pages on in key order: the concatenation is the same sequence of objects a
//! single stream gives, so a plan made from it is the same, byte for byte.
//!
//! Memory stays bounded by the parts in flight, not by the number of objects: each part
//! buffers at most [`FanOut::buffer_pages`] pages ahead of the one being handed on, and waits
//! when its buffer is full. The price of that bound is that a part much larger than its buffer
//! waits for the parts before it (`docs/scale.md`).

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use crate::error::{ErrorKind, StorageError};
use crate::location::Location;
use crate::storage::{ObjectMeta, Probe, Storage};

/// How widely and deeply a listing fans out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanOut {
    /// The probing stops once the source is split into this many parts or more.
    pub width: usize,
    /// Levels of sub-prefixes probed (0: one stream of the whole source).
    pub depth: usize,
    /// Parts listed (or probed) at once.
    pub in_flight: usize,
    /// Pages a part may list ahead of the part being handed on.
    pub buffer_pages: usize,
}

impl FanOut {
    /// One stream of the whole source, no probe.
    pub const SINGLE: FanOut = FanOut {
        width: 1,
        depth: 0,
        in_flight: 1,
        buffer_pages: 4,
    };
}

impl Default for FanOut {
    /// 16 streams over up to 3 levels of sub-prefixes, splitting the source into 256 parts or
    /// more: at most 16 × 8 pages of 1,000 keys listed ahead.
    fn default() -> Self {
        Self {
            width: 256,
            depth: 3,
            in_flight: 16,
            buffer_pages: 8,
        }
    }
}

/// A source that can be listed by prefix: [`Storage`], or a synthetic listing in a benchmark.
pub trait Lister: Clone + Send + Sync + 'static {
    /// The objects and sub-prefixes directly under `prefix` (one page; see [`Storage::probe`]).
    fn probe(&self, prefix: &str) -> impl Future<Output = Result<Probe, StorageError>> + Send;
    /// Every object under `prefix`, sent page by page in key order to `pages` (see
    /// [`Storage::pages`]).
    fn pages(
        &self,
        prefix: &str,
        pages: mpsc::Sender<Vec<ObjectMeta>>,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
}

impl Lister for Storage {
    async fn probe(&self, prefix: &str) -> Result<Probe, StorageError> {
        // A missing folder is an error for a listing, as for `Storage::list`; a missing S3
        // prefix is only empty.
        if let (Location::Local { root }, "") = (self.location(), prefix)
            && !root.is_dir()
        {
            return Err(StorageError::new(
                ErrorKind::NotFound,
                format!("list {}: no such directory", root.display()),
            ));
        }
        Storage::probe(self, prefix).await
    }

    async fn pages(
        &self,
        prefix: &str,
        pages: mpsc::Sender<Vec<ObjectMeta>>,
    ) -> Result<(), StorageError> {
        Storage::pages(self, prefix, None, pages).await.map(drop)
    }
}

/// A part of the source, in key order with the others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Objects a probe found directly under a prefix.
    Objects(Vec<ObjectMeta>),
    /// Every object under a prefix, still to list; `probed` when a probe found it too large
    /// to split (more than a page directly under it).
    Prefix {
        /// The prefix (`""` for the whole source).
        prefix: String,
        /// Whether probing it again would tell nothing new.
        probed: bool,
    },
}

/// `parts` after one more level of probing: each prefix not yet probed whose probe fits in a
/// page is replaced by what is directly under it (its objects, then each sub-prefix, in key
/// order). All the keys under a prefix `p/` sort together, and sort after an object key `k`
/// exactly when `p/` does, so the order of the parts stays the order of their keys.
pub fn expand(parts: Vec<Part>, probes: Vec<Option<Probe>>) -> Vec<Part> {
    let mut out = Vec::with_capacity(parts.len());
    for (part, probe) in parts.into_iter().zip(probes) {
        match (part, probe) {
            (Part::Prefix { prefix, .. }, Some(p)) if p.truncated => {
                out.push(Part::Prefix {
                    prefix,
                    probed: true,
                });
            }
            (Part::Prefix { .. }, Some(p)) => {
                let mut objects = p.objects.into_iter().peekable();
                let mut prefixes = p.prefixes.into_iter().peekable();
                let mut run = Vec::new();
                loop {
                    let object_first = match (objects.peek(), prefixes.peek()) {
                        (Some(o), Some(q)) => o.key < *q,
                        (Some(_), None) => true,
                        (None, Some(_)) => false,
                        (None, None) => break,
                    };
                    if object_first {
                        run.extend(objects.next());
                    } else {
                        if !run.is_empty() {
                            out.push(Part::Objects(std::mem::take(&mut run)));
                        }
                        out.extend(prefixes.next().map(|prefix| Part::Prefix {
                            prefix,
                            probed: false,
                        }));
                    }
                }
                if !run.is_empty() {
                    out.push(Part::Objects(run));
                }
            }
            (part, _) => out.push(part),
        }
    }
    out
}

/// The parts `source` is listed in under `fan`: probed level by level.
pub async fn split<L: Lister>(source: &L, fan: &FanOut) -> Result<Vec<Part>, StorageError> {
    let mut parts = vec![Part::Prefix {
        prefix: String::new(),
        probed: false,
    }];
    for _ in 0..fan.depth {
        let open = |p: &Part| matches!(p, Part::Prefix { probed: false, .. });
        if parts.len() >= fan.width || !parts.iter().any(open) {
            break;
        }
        let mut probes: Vec<Option<Probe>> = vec![None; parts.len()];
        let mut tasks = tokio::task::JoinSet::new();
        for (i, part) in parts.iter().enumerate() {
            let Part::Prefix {
                prefix,
                probed: false,
            } = part
            else {
                continue;
            };
            if tasks.len() >= fan.in_flight.max(1) {
                let (j, probe) = joined(tasks.join_next().await)?;
                probes[j] = Some(probe);
            }
            let (source, prefix) = (source.clone(), prefix.clone());
            tasks.spawn(async move { (i, source.probe(&prefix).await) });
        }
        while let Some(done) = tasks.join_next().await {
            let (j, probe) = joined(Some(done))?;
            probes[j] = Some(probe);
        }
        parts = expand(parts, probes);
    }
    Ok(parts)
}

/// A probe task's outcome: the part's index and its probe.
type Probed = Result<(usize, Result<Probe, StorageError>), tokio::task::JoinError>;

fn joined(done: Option<Probed>) -> Result<(usize, Probe), StorageError> {
    match done {
        Some(Ok((i, probe))) => Ok((i, probe?)),
        Some(Err(e)) => Err(StorageError::new(
            ErrorKind::Other,
            format!("a listing probe failed: {e}"),
        )),
        None => Err(StorageError::new(ErrorKind::Other, "no probe to wait for")),
    }
}

/// Keys listed so far by [`list_in_order`], for progress lines.
#[derive(Debug, Default)]
pub struct Listed(AtomicU64);

impl Listed {
    /// Keys handed on so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A part being listed: its pages, and the task listing it.
struct Running {
    pages: mpsc::Receiver<Vec<ObjectMeta>>,
    task: Option<tokio::task::JoinHandle<Result<(), StorageError>>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn start<L: Lister>(source: &L, part: Part, fan: &FanOut) -> Running {
    let (tx, pages) = mpsc::channel(fan.buffer_pages.max(1));
    match part {
        Part::Objects(objects) => {
            tx.try_send(objects).expect("a new channel has room");
            Running { pages, task: None }
        }
        Part::Prefix { prefix, .. } => {
            let source = source.clone();
            let task = tokio::spawn(async move { source.pages(&prefix, tx).await });
            Running {
                pages,
                task: Some(task),
            }
        }
    }
}

/// Every object of `source` in key order, as pages on the returned channel (an error ends
/// it): the parts of [`split`] listed `fan.in_flight` at a time and handed on in order, each
/// key checked to come after the one before (a key listed twice is handed on once). Dropping
/// the receiver stops the listing.
pub fn list_in_order<L: Lister>(
    source: L,
    fan: FanOut,
    listed: Arc<Listed>,
) -> mpsc::Receiver<Result<Vec<ObjectMeta>, StorageError>> {
    let (out, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        let result = hand_on(&source, &fan, &listed, &out).await;
        if let Err(e) = result {
            let _ = out.send(Err(e)).await;
        }
    });
    rx
}

async fn hand_on<L: Lister>(
    source: &L,
    fan: &FanOut,
    listed: &Listed,
    out: &mpsc::Sender<Result<Vec<ObjectMeta>, StorageError>>,
) -> Result<(), StorageError> {
    let mut parts = split(source, fan).await?.into_iter();
    let mut running: VecDeque<Running> = VecDeque::new();
    let mut last: Option<String> = None;
    loop {
        while running.len() < fan.in_flight.max(1) {
            let Some(part) = parts.next() else { break };
            running.push_back(start(source, part, fan));
        }
        let Some(mut head) = running.pop_front() else {
            return Ok(());
        };
        while let Some(mut page) = head.pages.recv().await {
            in_order(&mut page, &mut last)?;
            listed.0.fetch_add(page.len() as u64, Ordering::Relaxed);
            if out.send(Ok(page)).await.is_err() {
                return Ok(());
            }
        }
        if let Some(task) = head.task.take() {
            task.await.map_err(|e| {
                StorageError::new(ErrorKind::Other, format!("a listing task failed: {e}"))
            })??;
        }
    }
}

/// Checks that `page` continues the key order after `last`, dropping keys listed twice.
fn in_order(page: &mut Vec<ObjectMeta>, last: &mut Option<String>) -> Result<(), StorageError> {
    let mut error = None;
    page.retain(|o| {
        let keep = match last.as_deref() {
            Some(l) if o.key.as_str() == l => false,
            Some(l) if o.key.as_str() < l => {
                error.get_or_insert_with(|| {
                    format!("the listing is out of key order: {} after {l}", o.key)
                });
                false
            }
            _ => true,
        };
        if keep {
            *last = Some(o.key.clone());
        }
        keep
    });
    match error {
        Some(e) => Err(StorageError::new(ErrorKind::Other, e)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str) -> ObjectMeta {
        ObjectMeta {
            key: key.into(),
            size: 1,
            etag: None,
        }
    }

    fn prefix(p: &str) -> Part {
        Part::Prefix {
            prefix: p.into(),
            probed: false,
        }
    }

    #[test]
    fn an_expanded_prefix_keeps_objects_and_sub_prefixes_in_key_order() {
        let root = Probe {
            objects: vec![obj("a.jpg"), obj("b-.jpg"), obj("c.jpg")],
            prefixes: vec!["b/".into(), "b0/".into()],
            truncated: false,
        };
        let parts = expand(vec![prefix("")], vec![Some(root)]);
        assert_eq!(
            parts,
            [
                Part::Objects(vec![obj("a.jpg"), obj("b-.jpg")]),
                prefix("b/"),
                prefix("b0/"),
                Part::Objects(vec![obj("c.jpg")]),
            ]
        );
        // A prefix with more than a page under it stays whole and is not probed again.
        let big = Probe {
            truncated: true,
            ..Probe::default()
        };
        let kept = expand(vec![prefix("b/"), prefix("c/")], vec![Some(big), None]);
        assert_eq!(
            kept,
            [
                Part::Prefix {
                    prefix: "b/".into(),
                    probed: true
                },
                prefix("c/"),
            ]
        );
        // An empty prefix disappears.
        assert_eq!(expand(vec![prefix("e/")], vec![Some(Probe::default())]), []);
    }

    #[test]
    fn pages_must_follow_the_key_order() {
        let mut last = None;
        let mut page = vec![obj("a"), obj("b"), obj("b"), obj("c")];
        in_order(&mut page, &mut last).unwrap();
        assert_eq!(page, [obj("a"), obj("b"), obj("c")]);
        let mut again = vec![obj("c"), obj("d")];
        in_order(&mut again, &mut last).unwrap();
        assert_eq!(again, [obj("d")]);
        let err = in_order(&mut vec![obj("a")], &mut last).unwrap_err();
        assert!(err.to_string().contains("a after d"), "{err}");
    }
}
