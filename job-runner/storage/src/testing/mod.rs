//! Test helpers (cargo feature `testing`): a real S3-compatible server, `s3s-fs`, started on
//! 127.0.0.1 for the duration of a test, a proxy that injects faults and latency in front of
//! it ([`proxy`]), and the shared test data.
//!
//! The server binary is found through `POMONA_S3S_FS`, else `$POMONA_TOOLS/bin/s3s-fs`, else
//! `<workspace>/.tools/bin/s3s-fs`; `scripts/test.sh` installs it (see `scripts/tools.sh`). A missing binary
//! fails the test with that advice: tests never skip silently.

use std::io::Read;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::{
    ErrorKind, GetOptions, RetryPolicy, S3Config, StaticCredentials, Storage, StorageError,
};

pub mod proxy;

/// The access key the test server accepts.
pub const ACCESS_KEY: &str = "pomona-test-access";
/// The secret key the test server accepts.
pub const SECRET_KEY: &str = "pomona-test-secret-0123456789";
/// The bucket every test server starts with.
pub const BUCKET: &str = "fruits";
/// The region test clients sign for.
pub const REGION: &str = "eu-west-3";

/// The shared folder: `POMONA_SHARED`, else `shared/` beside the repository.
pub fn shared_dir() -> PathBuf {
    std::env::var_os("POMONA_SHARED").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared"),
        PathBuf::from,
    )
}

/// The 1,260 Fruits-360 training images of the shared sample (21 folders of 60).
pub fn fruits_training() -> PathBuf {
    let dir = shared_dir().join("data/fruits-360-sample/Training");
    assert!(
        dir.is_dir(),
        "test data missing: {} (set POMONA_SHARED)",
        dir.display()
    );
    dir
}

/// The identity of a test run planned with `options`: a fixed model checksum and MobileNetV2's
/// preprocessing, no resource.
pub fn identity(options: &crate::plan::PlanOptions) -> pomona_crds::contract::RunIdentity {
    let preprocessing = pomona_crds::contract::Preprocessing {
        input_name: "input".into(),
        output_name: "features".into(),
        width: 224,
        height: 224,
        layout: pomona_crds::TensorLayout::NHWC,
        scale: 1.0 / 127.5,
        offset: -1.0,
        resize_filter: Default::default(),
    };
    options.identity(None, "0".repeat(64), preprocessing)
}

/// Where the `s3s-fs` binary is expected.
pub fn s3s_fs_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("POMONA_S3S_FS") {
        return PathBuf::from(p);
    }
    let tools = std::env::var_os("POMONA_TOOLS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.tools"),
        PathBuf::from,
    );
    tools.join("bin/s3s-fs")
}

/// A fresh empty folder under the system's temporary folder, removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<tmp>/pomona-<tag>-<pid>-<n>`.
    pub fn new(tag: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pomona-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temporary folder");
        Self(path)
    }

    /// The folder.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `s3s-fs` server with bucket [`BUCKET`]; stopped (by its PID) on drop.
#[derive(Debug)]
pub struct S3Server {
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    root: TempDir,
}

impl S3Server {
    /// Starts a server on a free port and waits until it accepts connections.
    ///
    /// # Panics
    /// When the binary is missing (with the command that installs it) or the server does not
    /// come up within 10 s.
    pub fn start() -> Self {
        let bin = s3s_fs_binary();
        assert!(
            bin.is_file(),
            "s3s-fs not found at {}: run `./scripts/test.sh`, which installs it (about 2.5 minutes, once) \
             or point POMONA_S3S_FS at the binary (or POMONA_TOOLS at its install root)",
            bin.display()
        );
        let root = TempDir::new("s3s");
        std::fs::create_dir(root.path().join(BUCKET)).expect("create the bucket folder");
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
                panic!("s3s-fs exited at start ({status}): {err}");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("s3s-fs did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Self {
            child: Some(child),
            endpoint: format!("http://127.0.0.1:{port}"),
            root,
        }
    }

    /// Client settings for this server with the right keys and fast retries.
    pub fn config(&self) -> S3Config {
        self.config_with_secret(SECRET_KEY)
    }

    /// Client settings with another secret key (to test rejected credentials).
    pub fn config_with_secret(&self, secret: &str) -> S3Config {
        S3Config {
            region: Some(REGION.into()),
            endpoint: Some(self.endpoint.clone()),
            credentials: Some(StaticCredentials {
                access_key_id: ACCESS_KEY.into(),
                secret_access_key: secret.into(),
                session_token: None,
            }),
            retry: RetryPolicy {
                max_attempts: 3,
                initial_backoff: Duration::from_millis(20),
                max_backoff: Duration::from_millis(100),
                budget: Duration::from_secs(5),
            },
            ..S3Config::default()
        }
    }

    /// `s3://fruits/<prefix>`.
    pub fn uri(&self, prefix: &str) -> String {
        format!("s3://{BUCKET}/{prefix}")
    }

    /// Storage at `s3://fruits/<prefix>` on this server.
    pub async fn storage(&self, prefix: &str) -> Storage {
        Storage::open(&self.uri(prefix), &self.config())
            .await
            .expect("open test storage")
    }

    /// The folder the server keeps its buckets in.
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }

    /// Stops the server (kills it by PID and reaps it).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Copies every object of `from` under `prefix` to `to`, `concurrency` at a time; returns the
/// number of objects copied.
pub async fn copy_all(
    from: &Storage,
    to: &Storage,
    prefix: &str,
    concurrency: usize,
) -> Result<usize, StorageError> {
    let objects = from.list(prefix).await?;
    let mut tasks = tokio::task::JoinSet::new();
    let mut copied = 0;
    for o in objects {
        while tasks.len() >= concurrency.max(1) {
            tasks
                .join_next()
                .await
                .expect("a task")
                .expect("copy task panicked")?;
            copied += 1;
        }
        let (from, to) = (from.clone(), to.clone());
        tasks.spawn(async move {
            let data: Bytes = from.get(&o.key).await?;
            to.put(&o.key, data).await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("copy task panicked")?;
        copied += 1;
    }
    Ok(copied)
}

/// Checks on `s` the ranged reads every storage answers as S3 does: the bytes asked for, cut
/// at the object's end, conditioned and bounded like whole reads; an empty range reads
/// nothing; a range starting past the end is refused.
///
/// # Panics
/// When the contract does not hold.
pub async fn assert_ranged_reads(s: &Storage) {
    let text = Bytes::from_static(b"0123456789abcdef");
    s.put("r.bin", text.clone()).await.unwrap();
    for (range, want) in [
        (0..16, &text[..]),
        (3..7, &text[3..7]),
        (10..99, &text[10..]),
        (15..16, &text[15..]),
        (5..5, &b""[..]),
    ] {
        let got = s.get_range("r.bin", range.clone()).await.unwrap();
        assert_eq!(&got[..], want, "{range:?}");
    }
    let planned = s.head("r.bin").await.unwrap().unwrap().etag.unwrap();
    let conditioned = GetOptions {
        if_match: Some(&planned),
        max_bytes: Some(4),
        range: Some((4..8).into()),
    };
    assert_eq!(
        &s.get_with("r.bin", &conditioned).await.unwrap()[..],
        b"4567"
    );
    let past = s.get_range("r.bin", 16..20).await.unwrap_err();
    assert!(!past.is_retryable(), "{past}");
    let missing = s.get_range("nothing.bin", 0..4).await.unwrap_err();
    assert_eq!(missing.kind(), ErrorKind::NotFound, "{missing}");
}

/// Checks on `s` the read contract every storage keeps: a read conditioned on the planned ETag
/// (or file stamp) and bounded in size returns the object; a bound below its size fails as
/// `TooLarge`; once the object is rewritten, the conditioned read fails as `Changed`. Returns
/// those two errors for the storage's own further checks.
///
/// # Panics
/// When the contract does not hold.
pub async fn assert_conditional_reads(s: &Storage) -> (StorageError, StorageError) {
    s.put("a.jpg", Bytes::from_static(b"first version"))
        .await
        .unwrap();
    let planned = s.head("a.jpg").await.unwrap().unwrap().etag.unwrap();
    let read = GetOptions {
        if_match: Some(&planned),
        max_bytes: Some(13),
        range: None,
    };
    assert_eq!(
        &s.get_with("a.jpg", &read).await.unwrap()[..],
        b"first version"
    );
    let small = GetOptions {
        if_match: None,
        max_bytes: Some(12),
        range: None,
    };
    let big = s.get_with("a.jpg", &small).await.unwrap_err();
    assert_eq!(big.kind(), ErrorKind::TooLarge, "{big}");

    // A rewrite a little later (a file's stamp has a resolution).
    std::thread::sleep(Duration::from_millis(5));
    s.put("a.jpg", Bytes::from_static(b"second version"))
        .await
        .unwrap();
    let changed = s.get_with("a.jpg", &read).await.unwrap_err();
    assert_eq!(changed.kind(), ErrorKind::Changed, "{changed}");
    assert!(
        changed.to_string().starts_with("changed since planning"),
        "{changed}"
    );
    (big, changed)
}
