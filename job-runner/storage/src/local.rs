//! The local file-system backend.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::UNIX_EPOCH;

use bytes::Bytes;

use crate::error::{ErrorKind, StorageError, io_error};
use crate::storage::{CHILDREN_PAGE, GetOptions, Listing, ObjectMeta, Probe};

/// Name prefix of the temporary files `put` writes before renaming; listings skip them.
pub(crate) const TEMP_PREFIX: &str = ".pomona-tmp-";

/// Deepest folder nesting a listing descends into (guards against symlink loops).
const MAX_DEPTH: usize = 64;

/// A local directory.
#[derive(Clone, Debug)]
pub(crate) struct LocalStore {
    root: PathBuf,
}

/// Runs blocking file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StorageError::new(ErrorKind::Other, format!("file-system task failed: {e}")))?
}

impl LocalStore {
    pub(crate) fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The path of `key`, refusing keys that would leave the root.
    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        let bad = key.is_empty()
            || key.starts_with('/')
            || key.contains('\\')
            || key
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..");
        if bad {
            return Err(StorageError::new(
                ErrorKind::Invalid,
                format!("invalid key {key:?} under {}", self.root.display()),
            ));
        }
        Ok(self.root.join(key))
    }

    pub(crate) async fn list(&self, prefix: &str) -> Result<Listing, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_string();
        blocking(move || {
            if !root.is_dir() {
                return Err(StorageError::new(
                    ErrorKind::NotFound,
                    format!("list {}: no such directory", root.display()),
                ));
            }
            // Walk only the folder the prefix names (`a/b/` or the `a/` of `a/b`).
            let dir_part = prefix.rsplit_once('/').map_or("", |(d, _)| d);
            let start = if dir_part.is_empty() {
                root.clone()
            } else {
                root.join(dir_part)
            };
            let mut objects = Vec::new();
            if start.is_dir() {
                walk(&root, &start, 0, &mut objects)?;
            }
            objects.retain(|o| o.key.starts_with(&prefix));
            objects.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(Listing {
                objects,
                requests: 1,
            })
        })
        .await
    }

    /// Reads a file under `options`: its stamp and size are checked on the opened file, so
    /// that what is read is what was checked.
    pub(crate) async fn get_with(
        &self,
        key: &str,
        options: &GetOptions<'_>,
    ) -> Result<Bytes, StorageError> {
        use std::io::Read;
        let path = self.path(key)?;
        let if_match = options.if_match.map(str::to_string);
        let limit = options.max_bytes;
        let range = options.range;
        blocking(move || {
            use std::io::{Seek, SeekFrom};
            let mut file = fs::File::open(&path).map_err(|e| io_error("read", &path, e))?;
            let meta = file.metadata().map_err(|e| io_error("stat", &path, e))?;
            if let Some(planned) = &if_match
                && stamp(&meta) != *planned
            {
                return Err(StorageError::new(
                    ErrorKind::Changed,
                    format!(
                        "changed since planning: {} has stamp {}, not the planned {planned}",
                        path.display(),
                        stamp(&meta)
                    ),
                ));
            }
            // As S3 answers a Range: cut at the end, refused when it starts past it.
            let (start, len) = match range {
                None => (0, meta.len()),
                Some(r) if r.end <= r.start => return Ok(Bytes::new()),
                Some(r) if r.start >= meta.len() => {
                    return Err(StorageError::new(
                        ErrorKind::Other,
                        format!(
                            "range not satisfiable: bytes {}-{} of {}, which has {}",
                            r.start,
                            r.end - 1,
                            path.display(),
                            meta.len()
                        ),
                    ));
                }
                Some(r) => (r.start, r.end.min(meta.len()) - r.start),
            };
            file.seek(SeekFrom::Start(start))
                .map_err(|e| io_error("read", &path, e))?;
            let cap = limit.unwrap_or(u64::MAX);
            let too_large = || {
                StorageError::new(
                    ErrorKind::TooLarge,
                    format!(
                        "too large: {} is larger than the {cap}-byte limit",
                        path.display()
                    ),
                )
            };
            if len > cap {
                return Err(too_large());
            }
            let mut data = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
            file.take(len.min(cap.saturating_add(1)))
                .read_to_end(&mut data)
                .map_err(|e| io_error("read", &path, e))?;
            if data.len() as u64 > cap {
                return Err(too_large());
            }
            Ok(Bytes::from(data))
        })
        .await
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: m.len(),
                etag: Some(stamp(&m)),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("stat", &path, e)),
        }
    }

    /// Sends the objects under `prefix`, sorted, to `pages` in pages of [`CHILDREN_PAGE`];
    /// returns the number of requests (1: one walk). Stops early when the receiver is gone.
    pub(crate) async fn pages(
        &self,
        prefix: &str,
        pages: tokio::sync::mpsc::Sender<Vec<ObjectMeta>>,
    ) -> Result<u32, StorageError> {
        let listing = self.list(prefix).await?;
        let mut objects = listing.objects.into_iter();
        loop {
            let page: Vec<ObjectMeta> = objects.by_ref().take(CHILDREN_PAGE).collect();
            if page.is_empty() || pages.send(page).await.is_err() {
                break;
            }
        }
        Ok(listing.requests)
    }

    pub(crate) async fn probe(&self, prefix: &str) -> Result<Probe, StorageError> {
        let dir = match prefix.trim_end_matches('/') {
            "" => self.root.clone(),
            folder => self.path(folder)?,
        };
        let prefix = prefix.to_string();
        blocking(move || {
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Probe::default()),
                Err(e) => return Err(io_error("list", &dir, e)),
            };
            let mut probe = Probe::default();
            for entry in entries {
                let entry = entry.map_err(|e| io_error("list", &dir, e))?;
                if probe.objects.len() + probe.prefixes.len() == CHILDREN_PAGE {
                    probe.truncated = true;
                    break;
                }
                // The same entries as a listing's walk: UTF-8 names, no temporary files,
                // symlinks followed, dangling ones skipped.
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let path = entry.path();
                let meta = match fs::metadata(&path) {
                    Ok(m) => m,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_error("stat", &path, e)),
                };
                if meta.is_dir() {
                    probe.prefixes.push(format!("{prefix}{name}/"));
                } else if meta.is_file() {
                    probe.objects.push(ObjectMeta {
                        key: format!("{prefix}{name}"),
                        size: meta.len(),
                        etag: Some(stamp(&meta)),
                    });
                }
            }
            probe.objects.sort_by(|a, b| a.key.cmp(&b.key));
            probe.prefixes.sort();
            Ok(probe)
        })
        .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_error("delete", &path, e)),
            _ => Ok(()),
        }
    }

    /// Writes a temporary file beside the target, syncs it, renames it over the target and
    /// syncs the folder: a reader sees the old object or the whole new one, never a part.
    pub(crate) async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        let path = self.path(key)?;
        blocking(move || write_atomic(&path, |f| f.write_all(&data))).await
    }

    pub(crate) async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        let path = self.path(key)?;
        let source = file.to_path_buf();
        blocking(move || {
            let mut from = fs::File::open(&source).map_err(|e| io_error("read", &source, e))?;
            write_atomic(&path, |f| std::io::copy(&mut from, f).map(drop))
        })
        .await
    }

    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        let listing = match self.list(prefix).await {
            Ok(l) => l,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let root = self.root.clone();
        blocking(move || {
            for o in &listing.objects {
                let path = root.join(&o.key);
                fs::remove_file(&path).map_err(|e| io_error("delete", &path, e))?;
                // Drop folders left empty, up to the root.
                let mut dir = path.parent();
                while let Some(d) = dir.filter(|d| *d != root) {
                    if fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
            Ok(listing.objects.len() as u64)
        })
        .await
    }
}

/// Writes `path` through `fill` into a temporary file beside it, then renames it into place, so
/// a reader sees the old file or the whole new one, never a part.
fn write_atomic(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> std::io::Result<()>,
) -> Result<(), StorageError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(|e| io_error("create folder", dir, e))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        "{TEMP_PREFIX}{}-{}-{name}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = fs::File::create(&tmp)?;
        fill(&mut f)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_error("write", path, e));
    }
    // Persist the rename itself; not every file system allows syncing a folder.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// A stamp that changes when the file is rewritten: modification time (ns) and size.
fn stamp(meta: &fs::Metadata) -> String {
    let nanos = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}", meta.len())
}

fn walk(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<ObjectMeta>,
) -> Result<(), StorageError> {
    if depth > MAX_DEPTH {
        return Err(StorageError::new(
            ErrorKind::Other,
            format!(
                "list {}: folders nested deeper than {MAX_DEPTH} (a symlink loop?)",
                dir.display()
            ),
        ));
    }
    let entries = fs::read_dir(dir).map_err(|e| io_error("list", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error("list", dir, e))?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            tracing::warn!(path = %path.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if name.starts_with(TEMP_PREFIX) {
            continue;
        }
        // Follows symlinks (Kubernetes volume mounts are made of them).
        let meta = match fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue, // dangling link
            Err(e) => return Err(io_error("stat", &path, e)),
        };
        if meta.is_dir() {
            walk(root, &path, depth + 1, out)?;
        } else if meta.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectMeta {
                key,
                size: meta.len(),
                etag: Some(stamp(&meta)),
            });
        }
    }
    Ok(())
}
