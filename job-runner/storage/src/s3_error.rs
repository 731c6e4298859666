//! Classification of AWS SDK errors into [`StorageError`]s with a useful message.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use crate::error::{ErrorKind, StorageError};

/// What an S3 request was doing, for error messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Context<'a> {
    /// IAM action name, such as `s3:ListObjectsV2`.
    pub op: &'static str,
    /// The bucket.
    pub bucket: &'a str,
    /// The full key, when the request is about one object.
    pub key: Option<&'a str>,
    /// The region the client signs for.
    pub region: &'a str,
}

impl Context<'_> {
    fn target(&self) -> String {
        match self.key {
            Some(key) => format!(
                "{} on s3://{}/{key} (bucket {:?}, region {})",
                self.op, self.bucket, self.bucket, self.region
            ),
            None => format!(
                "{} on bucket {:?} (region {})",
                self.op, self.bucket, self.region
            ),
        }
    }
}

/// Error codes that mean the credentials or their permissions are wrong.
const AUTH_CODES: &[&str] = &[
    "AccessDenied",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "InvalidSecurity",
];

/// Error codes that mean "slow down".
const THROTTLING_CODES: &[&str] = &[
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
];

/// Error codes that mean "later": server trouble.
const TRANSIENT_CODES: &[&str] = &[
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
];

/// Classifies a status code and an S3 error code (either may be missing).
pub(crate) fn classify(status: Option<u16>, code: Option<&str>) -> ErrorKind {
    match (status, code) {
        (_, Some(c)) if AUTH_CODES.contains(&c) => ErrorKind::AccessDenied,
        (_, Some("NoSuchBucket")) => ErrorKind::NoSuchBucket,
        (_, Some("NoSuchKey" | "NotFound" | "NoSuchUpload")) => ErrorKind::NotFound,
        (_, Some("PreconditionFailed")) | (Some(412), _) => ErrorKind::Changed,
        (_, Some(c)) if THROTTLING_CODES.contains(&c) => ErrorKind::Throttled,
        (_, Some(c)) if TRANSIENT_CODES.contains(&c) => ErrorKind::Transient,
        (Some(401 | 403), _) => ErrorKind::AccessDenied,
        (Some(404), _) => ErrorKind::NotFound,
        (Some(429 | 503), _) => ErrorKind::Throttled,
        (Some(408), _) => ErrorKind::Transient,
        (Some(s), _) if s >= 500 => ErrorKind::Transient,
        (_, Some("InvalidArgument" | "InvalidBucketName" | "InvalidRequest")) => ErrorKind::Invalid,
        _ => ErrorKind::Other,
    }
}

/// The message of each error in `err`'s source chain, joined by `: `.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// A credentials-provider failure somewhere in the chain, if any.
fn credentials_error<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a CredentialsError> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CredentialsError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// Turns an SDK error into a [`StorageError`] naming the operation, bucket and region.
pub(crate) fn from_sdk<E>(ctx: Context<'_>, err: SdkError<E>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let target = ctx.target();
    let (kind, detail) = match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code();
            let kind = classify(Some(status), code);
            let detail = match (code, se.err().message()) {
                (Some(c), Some(m)) => format!("{c} (HTTP {status}): {m}"),
                (Some(c), None) => format!("{c} (HTTP {status})"),
                (None, _) => format!("HTTP {status}"),
            };
            (kind, detail)
        }
        SdkError::ResponseError(re) => {
            let status = re.raw().status().as_u16();
            let kind = match classify(Some(status), None) {
                // A 2xx whose body could not be read or parsed: the connection broke.
                ErrorKind::Other if status < 300 => ErrorKind::Transient,
                k => k,
            };
            (kind, format!("HTTP {status}: {}", chain(&err)))
        }
        SdkError::TimeoutError(_) => (ErrorKind::Transient, format!("timed out: {}", chain(&err))),
        SdkError::DispatchFailure(df) => {
            let kind = if let Some(c) = credentials_error(&err) {
                match c {
                    CredentialsError::ProviderTimedOut(_) | CredentialsError::ProviderError(_) => {
                        ErrorKind::Transient
                    }
                    _ => ErrorKind::AccessDenied,
                }
            } else if df.is_user() {
                ErrorKind::Invalid
            } else {
                // I/O (refused, reset), timeouts and other connector failures.
                ErrorKind::Transient
            };
            (kind, chain(&err))
        }
        SdkError::ConstructionFailure(_) => (ErrorKind::Invalid, chain(&err)),
        _ => (ErrorKind::Other, chain(&err)),
    };
    let hint = match err.as_service_error().and_then(|e| e.code()) {
        Some("SignatureDoesNotMatch") => " (the secret key does not match the access key id)",
        Some("InvalidAccessKeyId") => " (the access key id is unknown to the server)",
        Some("ExpiredToken") => " (the session token has expired)",
        _ => "",
    };
    let message = match kind {
        ErrorKind::AccessDenied => format!(
            "access denied: {target}: {detail}{hint}; check the credentials (environment, profile, \
             IRSA or Pod Identity role, or the credentials secret) and the bucket policy"
        ),
        ErrorKind::NoSuchBucket => format!(
            "no such bucket: {target}: {detail}; check the URI, the region and the endpoint"
        ),
        ErrorKind::NotFound => format!("not found: {target}: {detail}"),
        ErrorKind::Transient | ErrorKind::Throttled => {
            format!("S3 request failed, may pass on retry: {target}: {detail}")
        }
        ErrorKind::Changed => format!("changed since planning: {target}: {detail}"),
        ErrorKind::TooLarge | ErrorKind::Invalid | ErrorKind::Other => {
            format!("S3 request failed: {target}: {detail}")
        }
    };
    StorageError::new(kind, message).with_source(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes_and_statuses() {
        use ErrorKind::*;
        let cases: &[(Option<u16>, Option<&str>, ErrorKind)] = &[
            (Some(403), Some("AccessDenied"), AccessDenied),
            (Some(403), Some("InvalidAccessKeyId"), AccessDenied),
            (Some(403), Some("SignatureDoesNotMatch"), AccessDenied),
            (Some(400), Some("ExpiredToken"), AccessDenied),
            (Some(403), None, AccessDenied),
            (Some(404), Some("NoSuchBucket"), NoSuchBucket),
            (Some(404), Some("NoSuchKey"), NotFound),
            (Some(404), None, NotFound),
            (Some(503), Some("SlowDown"), Throttled),
            (Some(503), None, Throttled),
            (Some(400), Some("Throttling"), Throttled),
            (Some(500), Some("InternalError"), Transient),
            (Some(502), None, Transient),
            (Some(429), None, Throttled),
            (Some(412), Some("PreconditionFailed"), Changed),
            (Some(412), None, Changed),
            (Some(400), Some("RequestTimeout"), Transient),
            (Some(400), Some("InvalidArgument"), Invalid),
            (Some(301), Some("PermanentRedirect"), Other),
            (Some(409), Some("BucketAlreadyExists"), Other),
        ];
        for (status, code, want) in cases {
            assert_eq!(classify(*status, *code), *want, "{status:?} {code:?}");
        }
    }

    #[test]
    fn target_names_operation_bucket_and_region() {
        let ctx = Context {
            op: "s3:ListObjectsV2",
            bucket: "fruits",
            key: None,
            region: "eu-west-3",
        };
        assert_eq!(
            ctx.target(),
            r#"s3:ListObjectsV2 on bucket "fruits" (region eu-west-3)"#
        );
    }
}
