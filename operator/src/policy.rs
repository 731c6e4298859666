//! The cluster admin's policy for what a run may name: runner images, service accounts and S3
//! endpoints. Checked before any Job of the run exists; pure.
//!
//! A user who may create a `FeatureExtraction` may not thereby run any image, act as any service
//! account of the namespace, or send the run's data to any endpoint: the operator creates the
//! pods, so it enforces what the admin allowed (in the chart's values).
//!
//! - Images: the release's runner image, and those matching `allowed_images` patterns (`*`
//!   matches any run of characters: `registry.example.com/pomona:*`).
//! - Service accounts: the chart's runner service account, and those listed.
//! - Endpoints: none set (AWS S3 of the run's region), an AWS S3 endpoint of that region, or one
//!   listed, so that residency also covers S3-compatible stores.

use thiserror::Error;

/// What the admin allows beyond the release's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// The runner image of the release, always allowed.
    pub default_image: Option<String>,
    /// Patterns of other images allowed.
    pub allowed_images: Vec<String>,
    /// The runner service account of the release, always allowed.
    pub default_service_account: Option<String>,
    /// Other service accounts allowed.
    pub allowed_service_accounts: Vec<String>,
    /// S3-compatible endpoints allowed besides AWS's own.
    pub allowed_endpoints: Vec<String>,
}

/// A resource names something the policy does not allow.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refused {
    /// The runner image.
    #[error(
        "spec.runner.image {image:?} is not allowed: the operator runs {allowed} \
         (the cluster admin widens this with config.runner.allowedImages)"
    )]
    Image {
        /// The image asked for.
        image: String,
        /// What is allowed, in words.
        allowed: String,
    },
    /// The service account.
    #[error(
        "spec.runner.serviceAccountName {name:?} is not allowed: runner pods may use {allowed} \
         (the cluster admin widens this with config.runner.allowedServiceAccounts)"
    )]
    ServiceAccount {
        /// The account asked for.
        name: String,
        /// What is allowed, in words.
        allowed: String,
    },
    /// The S3 endpoint.
    #[error(
        "spec.storage.endpoint {endpoint:?} is not allowed: runs use AWS S3 of their region{listed} \
         (the cluster admin allows other endpoints with config.allowedEndpoints)"
    )]
    Endpoint {
        /// The endpoint asked for.
        endpoint: String,
        /// The listed endpoints, in words (empty when none).
        listed: String,
    },
}

impl Refused {
    /// The reason of the Failed condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Refused::Image { .. } => "ImageNotAllowed",
            Refused::ServiceAccount { .. } => "ServiceAccountNotAllowed",
            Refused::Endpoint { .. } => "EndpointNotAllowed",
        }
    }
}

impl Policy {
    /// Accepts the image a resource names (`None`: the default).
    pub fn check_image(&self, image: Option<&str>) -> Result<(), Refused> {
        let Some(image) = image.map(str::trim).filter(|i| !i.is_empty()) else {
            return Ok(());
        };
        if self.default_image.as_deref() == Some(image)
            || self.allowed_images.iter().any(|p| glob(p, image))
        {
            return Ok(());
        }
        let mut allowed: Vec<String> = self.default_image.iter().cloned().collect();
        allowed.extend(self.allowed_images.iter().cloned());
        Err(Refused::Image {
            image: image.to_string(),
            allowed: describe(&allowed, "no image"),
        })
    }

    /// Accepts the service account a resource names (`None`: the default).
    pub fn check_service_account(&self, name: Option<&str>) -> Result<(), Refused> {
        let Some(name) = name.map(str::trim).filter(|n| !n.is_empty()) else {
            return Ok(());
        };
        if self.default_service_account.as_deref() == Some(name)
            || self.allowed_service_accounts.iter().any(|a| a == name)
        {
            return Ok(());
        }
        let mut allowed: Vec<String> = self.default_service_account.iter().cloned().collect();
        allowed.extend(self.allowed_service_accounts.iter().cloned());
        Err(Refused::ServiceAccount {
            name: name.to_string(),
            allowed: describe(&allowed, "only the namespace's default account"),
        })
    }

    /// Accepts the endpoint of a resource in `region` (`None`: AWS S3 of the region).
    pub fn check_endpoint(&self, endpoint: Option<&str>, region: &str) -> Result<(), Refused> {
        let Some(endpoint) = endpoint.map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(());
        };
        let wanted = normalize(endpoint);
        let aws = [
            format!("https://s3.{region}.amazonaws.com"),
            format!("https://s3.dualstack.{region}.amazonaws.com"),
        ];
        if aws.contains(&wanted)
            || self
                .allowed_endpoints
                .iter()
                .any(|e| normalize(e) == wanted)
        {
            return Ok(());
        }
        let listed = if self.allowed_endpoints.is_empty() {
            String::new()
        } else {
            format!(" or {}", self.allowed_endpoints.join(", "))
        };
        Err(Refused::Endpoint {
            endpoint: endpoint.to_string(),
            listed,
        })
    }
}

/// An endpoint as compared: lowercase, without a trailing `/`.
fn normalize(endpoint: &str) -> String {
    endpoint.trim().trim_end_matches('/').to_ascii_lowercase()
}

fn describe(allowed: &[String], none: &str) -> String {
    match allowed {
        [] => none.to_string(),
        [one] => one.clone(),
        many => format!("one of {}", many.join(", ")),
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters (an image
/// reference holds no other wildcard character).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            default_image: Some("ghcr.io/pomona-dev/pomona:0.1.0".into()),
            allowed_images: vec!["registry.example.com/pomona:*".into()],
            default_service_account: Some("pomona-runner".into()),
            allowed_service_accounts: vec!["fruits-runner".into()],
            allowed_endpoints: vec!["http://minio.minio.svc:9000/".into()],
        }
    }

    #[test]
    fn images_are_the_release_s_or_match_a_pattern() {
        let p = policy();
        for ok in [
            None,
            Some(""),
            Some("ghcr.io/pomona-dev/pomona:0.1.0"),
            Some("registry.example.com/pomona:1.2"),
            Some("registry.example.com/pomona:"),
        ] {
            assert_eq!(p.check_image(ok), Ok(()), "{ok:?}");
        }
        for refused in [
            "ghcr.io/pomona-dev/pomona:0.0.9",
            "evil.example.com/registry.example.com/pomona:1",
            "registry.example.com/pomona-debug:1",
        ] {
            let e = p.check_image(Some(refused)).unwrap_err();
            assert_eq!(e.reason(), "ImageNotAllowed");
            assert!(e.to_string().contains("config.runner.allowedImages"), "{e}");
        }
        assert!(glob("a*b*c", "a-x-b-y-c") && !glob("a*b*c", "a-x-c") && glob("*", ""));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn service_accounts_are_the_runner_s_or_listed() {
        let p = policy();
        assert!(p.check_service_account(None).is_ok());
        assert!(p.check_service_account(Some("pomona-runner")).is_ok());
        assert!(p.check_service_account(Some("fruits-runner")).is_ok());
        let e = p.check_service_account(Some("default")).unwrap_err();
        assert_eq!(e.reason(), "ServiceAccountNotAllowed");
        assert!(
            e.to_string().contains("pomona-runner, fruits-runner"),
            "{e}"
        );
    }

    #[test]
    fn endpoints_are_aws_of_the_region_or_listed() {
        let p = policy();
        assert!(p.check_endpoint(None, "eu-west-3").is_ok());
        assert!(
            p.check_endpoint(Some("https://s3.eu-west-3.amazonaws.com/"), "eu-west-3")
                .is_ok()
        );
        assert!(
            p.check_endpoint(Some("http://MINIO.minio.svc:9000"), "eu-west-3")
                .is_ok()
        );
        for refused in [
            "https://s3.us-east-1.amazonaws.com",
            "http://minio.minio.svc:9001",
            "https://attacker.example.com",
        ] {
            let e = p.check_endpoint(Some(refused), "eu-west-3").unwrap_err();
            assert_eq!(e.reason(), "EndpointNotAllowed", "{refused}");
        }
    }
}
