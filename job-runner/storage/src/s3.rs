//! The S3 backend.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use crate::counters::Counters;
use crate::error::{ErrorKind, StorageError, io_error};
use crate::retry::{RetryPolicy, retry};
use crate::s3_error::{Context, from_sdk};
use crate::storage::{Listing, ObjectMeta, Probe, S3Config};

/// Region used to sign requests to a custom endpoint when none is configured.
const ENDPOINT_DEFAULT_REGION: &str = "us-east-1";

/// An S3 bucket and key prefix, with a client configured for them.
#[derive(Clone, Debug)]
pub(crate) struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    region: String,
    retry: RetryPolicy,
    request_timeout: Duration,
    counters: Counters,
    multipart_threshold: u64,
    part_size: u64,
}

impl S3Store {
    /// Builds a client from the default AWS configuration chain (environment, profile, web
    /// identity / IRSA, container / Pod Identity, instance metadata) overridden by `cfg`.
    pub(crate) async fn new(
        bucket: &str,
        prefix: &str,
        cfg: &S3Config,
    ) -> Result<Self, StorageError> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &cfg.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(c) = &cfg.credentials {
            loader = loader.credentials_provider(Credentials::new(
                c.access_key_id.clone(),
                c.secret_access_key.clone(),
                c.session_token.clone(),
                None,
                "pomona-static",
            ));
        }
        let shared = loader.load().await;
        let endpoint = cfg
            .endpoint
            .clone()
            .or_else(|| shared.endpoint_url().map(str::to_string));
        let region = match (shared.region(), &endpoint) {
            (Some(r), _) => r.to_string(),
            (None, Some(_)) => ENDPOINT_DEFAULT_REGION.to_string(),
            (None, None) => {
                return Err(StorageError::new(
                    ErrorKind::Invalid,
                    format!(
                        "no AWS region for bucket {bucket:?}: set the source/output region or \
                         AWS_REGION"
                    ),
                ));
            }
        };
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .region(Region::new(region.clone()))
            // One retry loop only: ours (see `crate::retry`).
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(10))
                    .read_timeout(Duration::from_secs(60))
                    .build(),
            )
            .force_path_style(cfg.force_path_style.unwrap_or(endpoint.is_some()));
        if let Some(endpoint) = &endpoint {
            builder = builder.endpoint_url(endpoint);
        }
        Ok(Self {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            region,
            retry: cfg.retry,
            request_timeout: cfg.request_timeout,
            counters: Counters::default(),
            multipart_threshold: cfg.multipart_threshold,
            part_size: cfg.part_size.max(5 * 1024 * 1024),
        })
    }

    /// The region requests are signed for.
    pub(crate) fn region(&self) -> &str {
        &self.region
    }

    pub(crate) fn client(&self) -> &Client {
        &self.client
    }

    pub(crate) fn retry(&self) -> &RetryPolicy {
        &self.retry
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn ctx<'a>(&'a self, op: &'static str, key: Option<&'a str>) -> Context<'a> {
        Context {
            op,
            bucket: &self.bucket,
            key,
            region: &self.region,
        }
    }

    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub(crate) async fn list(
        &self,
        prefix: &str,
        page_size: Option<i32>,
    ) -> Result<Listing, StorageError> {
        let (tx, mut rx) = tokio::sync::mpsc::channel(4);
        let collect = async {
            let mut objects = Vec::new();
            while let Some(page) = rx.recv().await {
                objects.extend(page);
            }
            objects
        };
        let (requests, mut objects) = tokio::join!(self.pages(prefix, page_size, tx), collect);
        let requests = requests?;
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.dedup_by(|a, b| a.key == b.key);
        Ok(Listing { objects, requests })
    }

    /// Lists every object under `prefix` page by page, in S3's order (by key), sending each
    /// page to `pages` as it arrives; returns the number of requests. Stops early, without an
    /// error, when the receiver is gone.
    pub(crate) async fn pages(
        &self,
        prefix: &str,
        page_size: Option<i32>,
        pages: tokio::sync::mpsc::Sender<Vec<ObjectMeta>>,
    ) -> Result<u32, StorageError> {
        let full_prefix = self.full(prefix);
        let mut token: Option<String> = None;
        let mut requests = 0;
        loop {
            let mut req = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix);
            if let Some(n) = page_size {
                req = req.max_keys(n);
            }
            if let Some(t) = &token {
                req = req.continuation_token(t);
            }
            let page = self.list_page(&req).await?;
            requests += 1;
            let objects = page
                .contents()
                .iter()
                .filter_map(|o| self.object(o))
                .collect();
            if pages.send(objects).await.is_err() {
                break;
            }
            token = page.next_continuation_token().map(str::to_string);
            if !page.is_truncated().unwrap_or(false) || token.is_none() {
                break;
            }
        }
        Ok(requests)
    }

    /// A listed object, keyed relative to the store's prefix; `None` for "folder" markers.
    fn object(&self, o: &aws_sdk_s3::types::Object) -> Option<ObjectMeta> {
        let key = o.key()?.strip_prefix(&self.prefix)?;
        if key.is_empty() || key.ends_with('/') {
            return None;
        }
        Some(ObjectMeta {
            key: key.to_string(),
            size: u64::try_from(o.size().unwrap_or(0)).unwrap_or(0),
            etag: o.e_tag().map(str::to_string),
        })
    }

    pub(crate) async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        let full = self.full(key);
        let ctx = self.ctx("s3:GetObject", Some(&full));
        let res = retry(&self.retry, &self.counters, "s3:HeadObject", || async {
            self.client
                .head_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| from_sdk(ctx, e))
        })
        .await;
        match res {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: u64::try_from(out.content_length().unwrap_or(0)).unwrap_or(0),
                etag: out.e_tag().map(str::to_string),
            })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// One ListObjectsV2 request, retried.
    async fn list_page(
        &self,
        req: &aws_sdk_s3::operation::list_objects_v2::builders::ListObjectsV2FluentBuilder,
    ) -> Result<aws_sdk_s3::operation::list_objects_v2::ListObjectsV2Output, StorageError> {
        retry(&self.retry, &self.counters, "s3:ListObjectsV2", || {
            let req = req.clone();
            async move {
                req.send()
                    .await
                    .map_err(|e| from_sdk(self.ctx("s3:ListObjectsV2", None), e))
            }
        })
        .await
    }

    pub(crate) async fn probe(&self, prefix: &str) -> Result<Probe, StorageError> {
        let full_prefix = self.full(prefix);
        let req = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&full_prefix)
            .delimiter("/")
            .max_keys(i32::try_from(crate::storage::CHILDREN_PAGE).unwrap_or(1000));
        let page = self.list_page(&req).await?;
        let mut objects: Vec<ObjectMeta> = page
            .contents()
            .iter()
            .filter_map(|o| self.object(o))
            .collect();
        let mut prefixes: Vec<String> = page
            .common_prefixes()
            .iter()
            .filter_map(|p| p.prefix()?.strip_prefix(&self.prefix))
            .filter(|p| p.len() > prefix.len())
            .map(String::from)
            .collect();
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        objects.dedup_by(|a, b| a.key == b.key);
        prefixes.sort();
        prefixes.dedup();
        Ok(Probe {
            objects,
            prefixes,
            truncated: page.is_truncated().unwrap_or(false),
        })
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let full = self.full(key);
        let ctx = self.ctx("s3:DeleteObject", Some(&full));
        retry(&self.retry, &self.counters, "s3:DeleteObject", || async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&full)
                .send()
                .await
                .map_err(|e| from_sdk(ctx, e))
        })
        .await?;
        Ok(())
    }

    pub(crate) async fn put(&self, key: &str, data: Bytes) -> Result<(), StorageError> {
        if data.len() as u64 > self.multipart_threshold {
            return self.put_multipart(key, &Parts::Memory(data)).await;
        }
        let full = self.full(key);
        let ctx = self.ctx("s3:PutObject", Some(&full));
        retry(&self.retry, &self.counters, "s3:PutObject", || async {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .body(ByteStream::from(data.clone()))
                .send()
                .await
                .map_err(|e| from_sdk(ctx, e))
        })
        .await
        .map(|_| ())
    }

    /// Uploads a local file; above the multipart threshold it is read one part at a time, so
    /// memory stays at one part whatever the file size.
    pub(crate) async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        let size = tokio::fs::metadata(file)
            .await
            .map_err(|e| io_error("read", file, e))?
            .len();
        if size > self.multipart_threshold {
            let parts = Parts::File {
                path: file.to_path_buf(),
                size,
            };
            return self.put_multipart(key, &parts).await;
        }
        let data = tokio::fs::read(file)
            .await
            .map_err(|e| io_error("read", file, e))?;
        self.put(key, Bytes::from(data)).await
    }

    /// Multipart upload: the object appears at its key only on CompleteMultipartUpload; on any
    /// failure the upload is aborted so no parts linger.
    async fn put_multipart(&self, key: &str, data: &Parts) -> Result<(), StorageError> {
        let full = self.full(key);
        let ctx = self.ctx("s3:PutObject", Some(&full));
        let created = retry(
            &self.retry,
            &self.counters,
            "s3:CreateMultipartUpload",
            || async {
                self.client
                    .create_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&full)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .send()
                    .await
                    .map_err(|e| from_sdk(ctx, e))
            },
        )
        .await?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self.upload_parts(&full, &upload_id, data).await;
        if result.is_err() {
            let abort = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
            if let Err(e) = abort {
                tracing::warn!(key = %full, error = %from_sdk(ctx, e), "aborting a multipart upload failed");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        full: &str,
        upload_id: &str,
        data: &Parts,
    ) -> Result<(), StorageError> {
        let ctx = self.ctx("s3:PutObject", Some(full));
        let len = data.len();
        // S3 allows 10,000 parts: grow the part size for very large objects.
        let part_size = self.part_size.max(len / 9_999 + 1);
        let mut parts = Vec::new();
        for (i, start) in (0..len)
            .step_by(usize::try_from(part_size).unwrap_or(usize::MAX))
            .enumerate()
        {
            let number = i32::try_from(i + 1).unwrap_or(i32::MAX);
            let chunk = data.part(start, part_size.min(len - start)).await?;
            let out = retry(&self.retry, &self.counters, "s3:UploadPart", || async {
                self.client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .part_number(number)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .body(ByteStream::from(chunk.clone()))
                    .send()
                    .await
                    .map_err(|e| from_sdk(ctx, e))
            })
            .await?;
            parts.push(
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
            );
        }
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(parts))
            .build();
        retry(
            &self.retry,
            &self.counters,
            "s3:CompleteMultipartUpload",
            || async {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(full)
                    .upload_id(upload_id)
                    .multipart_upload(completed.clone())
                    .send()
                    .await
                    .map_err(|e| from_sdk(ctx, e))
            },
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<u64, StorageError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        let listing = self.list(prefix, None).await?;
        let ctx = self.ctx("s3:DeleteObject", None);
        let invalid = |e: aws_sdk_s3::error::BuildError| {
            StorageError::new(
                ErrorKind::Invalid,
                format!("building a delete request: {e}"),
            )
        };
        for batch in listing.objects.chunks(1000) {
            let ids = batch
                .iter()
                .map(|o| ObjectIdentifier::builder().key(self.full(&o.key)).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let delete = Delete::builder()
                .set_objects(Some(ids))
                .quiet(true)
                .build()
                .map_err(invalid)?;
            let out = retry(&self.retry, &self.counters, "s3:DeleteObjects", || async {
                self.client
                    .delete_objects()
                    .bucket(&self.bucket)
                    .delete(delete.clone())
                    .send()
                    .await
                    .map_err(|e| from_sdk(ctx, e))
            })
            .await?;
            if let Some(err) = out.errors().first() {
                let kind = crate::s3_error::classify(None, err.code());
                return Err(StorageError::new(
                    kind,
                    format!(
                        "s3:DeleteObject on s3://{}/{} (region {}) failed: {} {}",
                        self.bucket,
                        err.key().unwrap_or_default(),
                        self.region,
                        err.code().unwrap_or_default(),
                        err.message().unwrap_or_default()
                    ),
                ));
            }
        }
        Ok(listing.objects.len() as u64)
    }
}

/// The content of a multipart upload: in memory, or a local file read one part at a time.
enum Parts {
    Memory(Bytes),
    File { path: PathBuf, size: u64 },
}

impl Parts {
    fn len(&self) -> u64 {
        match self {
            Parts::Memory(data) => data.len() as u64,
            Parts::File { size, .. } => *size,
        }
    }

    async fn part(&self, start: u64, len: u64) -> Result<Bytes, StorageError> {
        use tokio::io::{AsyncReadExt, AsyncSeekExt};
        match self {
            Parts::Memory(data) => Ok(data.slice(start as usize..(start + len) as usize)),
            Parts::File { path, .. } => {
                let read = async {
                    let mut file = tokio::fs::File::open(path).await?;
                    file.seek(std::io::SeekFrom::Start(start)).await?;
                    let mut buf = vec![0; len as usize];
                    file.read_exact(&mut buf).await?;
                    Ok(Bytes::from(buf))
                };
                read.await.map_err(|e| io_error("read", path, e))
            }
        }
    }
}
