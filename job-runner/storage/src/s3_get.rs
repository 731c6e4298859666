//! GetObject: conditioned on the planned ETag, bounded in size, cut when it stalls, retried
//! as a whole (request and body) by the storage's retry loop.

use std::time::Duration;

use bytes::Bytes;

use crate::body::{BodyError, BoundedBody, etag_differs};
use crate::error::{ErrorKind, StorageError};
use crate::retry::retry;
use crate::s3::S3Store;
use crate::s3_error::{Context, from_sdk};
use crate::storage::GetOptions;

impl S3Store {
    pub(crate) async fn get_with(
        &self,
        key: &str,
        options: &GetOptions<'_>,
    ) -> Result<Bytes, StorageError> {
        let full = self.full(key);
        let ctx = self.ctx("s3:GetObject", Some(&full));
        retry(self.retry(), self.counters(), "s3:GetObject", || {
            self.get_once(ctx, options)
        })
        .await
    }

    /// One attempt: the request, then the body piece by piece, each within the timeout.
    async fn get_once(
        &self,
        ctx: Context<'_>,
        options: &GetOptions<'_>,
    ) -> Result<Bytes, StorageError> {
        let full = ctx.key.unwrap_or_default();
        let timeout = self.request_timeout();
        let mut request = self.client().get_object().bucket(ctx.bucket).key(full);
        if let Some(etag) = options.if_match {
            request = request.if_match(etag);
        }
        if let Some(range) = options.range {
            // HTTP ranges are inclusive; an empty one reads nothing and needs no request.
            if range.end <= range.start {
                return Ok(Bytes::new());
            }
            request = request.range(format!("bytes={}-{}", range.start, range.end - 1));
        }
        let out = match tokio::time::timeout(timeout, request.send()).await {
            Ok(result) => result.map_err(|e| from_sdk(ctx, e))?,
            Err(_) => return Err(self.timed_out(ctx, "no response", timeout)),
        };
        if etag_differs(options.if_match, out.e_tag()) {
            return Err(StorageError::new(
                ErrorKind::Changed,
                format!(
                    "changed since planning: s3://{}/{full} has ETag {}, not the planned {}",
                    ctx.bucket,
                    out.e_tag().unwrap_or_default(),
                    options.if_match.unwrap_or_default()
                ),
            ));
        }
        let declared = out.content_length().and_then(|n| u64::try_from(n).ok());
        let mut body =
            BoundedBody::new(declared, options.max_bytes).map_err(|e| body_error(ctx, e))?;
        let mut stream = out.body;
        loop {
            match tokio::time::timeout(timeout, stream.next()).await {
                Err(_) => return Err(self.timed_out(ctx, "the body stalled", timeout)),
                Ok(None) => break,
                Ok(Some(Ok(chunk))) => body.push(chunk).map_err(|e| body_error(ctx, e))?,
                // A body cut short is a broken connection: retryable, by this same loop.
                Ok(Some(Err(e))) => {
                    return Err(StorageError::new(
                        ErrorKind::Transient,
                        format!("reading the body of s3://{}/{full} failed: {e}", ctx.bucket),
                    )
                    .with_source(e));
                }
            }
        }
        body.finish().map_err(|e| body_error(ctx, e))
    }

    fn timed_out(&self, ctx: Context<'_>, what: &str, after: Duration) -> StorageError {
        self.counters().timeout();
        StorageError::new(
            ErrorKind::Transient,
            format!(
                "s3:GetObject on s3://{}/{}: {what} for {after:?} (the request timeout)",
                ctx.bucket,
                ctx.key.unwrap_or_default()
            ),
        )
    }
}

fn body_error(ctx: Context<'_>, e: BodyError) -> StorageError {
    let object = format!("s3://{}/{}", ctx.bucket, ctx.key.unwrap_or_default());
    match e {
        BodyError::TooLarge { limit } => StorageError::new(
            ErrorKind::TooLarge,
            format!("too large: {object} is larger than the {limit}-byte limit"),
        ),
        BodyError::Short { declared, received } => StorageError::new(
            ErrorKind::Transient,
            format!("the body of {object} ended after {received} of {declared} bytes"),
        ),
    }
}
