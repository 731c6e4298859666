//! Data residency: the regions a run's S3 locations may live in.
//!
//! Fruits! must keep its photos and everything derived from them on European servers (GDPR).
//! The operator therefore refuses a `FeatureExtraction` whose storage region is not in its
//! allowed list. The default list holds the AWS regions located in EU member states; London
//! (`eu-west-2`) and Zurich (`eu-central-2`) are outside the EU and must be added explicitly.

use thiserror::Error;

/// AWS regions in EU member states: Ireland, Paris, Frankfurt, Stockholm, Milan, Spain.
pub const EU_REGIONS: &[&str] = &[
    "eu-west-1",
    "eu-west-3",
    "eu-central-1",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
];

/// The regions a run may read from and write to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedRegions(Vec<String>);

/// A region the operator is not allowed to use.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error(
    "{what} is in region {region:?}, which is not in the operator's allowed regions ({allowed}); \
     data of this run must stay in those regions"
)]
pub struct RegionRefused {
    /// Which location was refused (`storage`, `source`, …).
    pub what: String,
    /// The refused region.
    pub region: String,
    /// The allowed regions, comma-separated.
    pub allowed: String,
}

impl Default for AllowedRegions {
    fn default() -> Self {
        Self(EU_REGIONS.iter().map(|r| r.to_string()).collect())
    }
}

impl std::fmt::Display for AllowedRegions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

impl AllowedRegions {
    /// Parses a comma-separated list (`eu-west-3,eu-central-1`); `*` allows every region.
    pub fn parse(list: &str) -> Self {
        Self(
            list.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(String::from)
                .collect(),
        )
    }

    /// The allowed regions.
    pub fn regions(&self) -> &[String] {
        &self.0
    }

    /// Accepts `region` for `what`, or says why not.
    pub fn check(&self, what: &str, region: &str) -> Result<(), RegionRefused> {
        if self.0.iter().any(|r| r == "*" || r == region) {
            return Ok(());
        }
        Err(RegionRefused {
            what: what.to_string(),
            region: region.to_string(),
            allowed: self.0.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eu_regions_pass_and_others_are_refused_with_the_reason() {
        let allowed = AllowedRegions::default();
        for region in EU_REGIONS {
            assert_eq!(allowed.check("storage", region), Ok(()));
        }
        for region in ["us-east-1", "eu-west-2", "eu-central-2", "ap-south-1", ""] {
            let refused = allowed.check("storage", region).unwrap_err();
            let message = refused.to_string();
            assert!(message.contains(&format!("{region:?}")), "{message}");
            assert!(message.contains("eu-west-3"), "{message}");
        }
    }

    #[test]
    fn the_list_is_an_operator_setting() {
        let allowed = AllowedRegions::parse(" eu-west-3 , eu-west-2,,");
        assert_eq!(allowed.regions(), ["eu-west-3", "eu-west-2"]);
        assert!(allowed.check("output", "eu-west-2").is_ok());
        assert!(allowed.check("output", "eu-central-1").is_err());
        assert!(
            AllowedRegions::parse("*")
                .check("source", "us-east-1")
                .is_ok()
        );
    }
}
