//! Operator settings: command-line flags, each with an environment-variable fallback so that a
//! Helm chart can set them on the Deployment.

use clap::Args;
use pomona_crds::contract::cost::CostRates;

use crate::policy::Policy;
use crate::residency::AllowedRegions;

/// The runner image used when a resource does not name one: the `pomona` image of the same
/// release as this operator.
pub const DEFAULT_RUNNER_IMAGE: &str =
    concat!("ghcr.io/pomona-dev/pomona:", env!("CARGO_PKG_VERSION"));

/// The field manager of every server-side apply the operator makes.
pub const DEFAULT_FIELD_MANAGER: &str = "pomona-operator";

/// How the operator is configured.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct Settings {
    /// Regions a run's storage may live in, comma-separated (`*` allows every region).
    /// Default: the AWS regions in EU member states.
    #[arg(
        long,
        env = "POMONA_ALLOWED_REGIONS",
        default_value_t = AllowedRegions::default(),
        value_parser = parse_regions
    )]
    pub allowed_regions: AllowedRegions,

    /// Runner image for resources that leave `spec.runner.image` unset. An empty value makes
    /// `spec.runner.image` required.
    #[arg(long, env = "POMONA_RUNNER_IMAGE", default_value = DEFAULT_RUNNER_IMAGE)]
    pub runner_image: String,

    /// Service account of the runner pods of resources that leave
    /// `spec.runner.serviceAccountName` unset (it must exist in the resource's namespace; the
    /// Helm chart creates one with no API rights). Empty: the namespace's default.
    #[arg(long, env = "POMONA_RUNNER_SERVICE_ACCOUNT", default_value = "")]
    pub runner_service_account: String,

    /// Runner images resources may name besides the default, comma-separated patterns (`*`
    /// matches any run of characters). Empty: only the default image.
    #[arg(long, env = "POMONA_ALLOWED_IMAGES", default_value = "", value_parser = parse_list)]
    pub allowed_images: List,

    /// Service accounts runner pods may use besides the default, comma-separated. Empty: only
    /// the default.
    #[arg(long, env = "POMONA_ALLOWED_SERVICE_ACCOUNTS", default_value = "", value_parser = parse_list)]
    pub allowed_service_accounts: List,

    /// S3-compatible endpoints runs may use, comma-separated (AWS S3 of an allowed region needs
    /// no entry). Empty: AWS S3 only.
    #[arg(long, env = "POMONA_ALLOWED_ENDPOINTS", default_value = "", value_parser = parse_list)]
    pub allowed_endpoints: List,

    /// Field manager name of the operator's server-side applies.
    #[arg(long, env = "POMONA_FIELD_MANAGER", default_value = DEFAULT_FIELD_MANAGER)]
    pub field_manager: String,

    /// Price of one requested core for one hour, for the runs' `status.cost.estimated`; with
    /// `--cost-per-gib-hour` and `--cost-currency`. Unset: no amount is estimated.
    #[arg(
        long,
        env = "POMONA_COST_PER_CORE_HOUR",
        value_parser = parse_rate,
        requires_all = ["cost_per_gib_hour", "cost_currency"]
    )]
    pub cost_per_core_hour: Option<f64>,

    /// Price of one requested GiB of memory for one hour.
    #[arg(
        long,
        env = "POMONA_COST_PER_GIB_HOUR",
        value_parser = parse_rate,
        requires_all = ["cost_per_core_hour", "cost_currency"]
    )]
    pub cost_per_gib_hour: Option<f64>,

    /// Currency of the prices (`EUR`, `USD`, …).
    #[arg(
        long,
        env = "POMONA_COST_CURRENCY",
        requires_all = ["cost_per_core_hour", "cost_per_gib_hour"]
    )]
    pub cost_currency: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            allowed_regions: AllowedRegions::default(),
            runner_image: DEFAULT_RUNNER_IMAGE.to_string(),
            runner_service_account: String::new(),
            allowed_images: List::default(),
            allowed_service_accounts: List::default(),
            allowed_endpoints: List::default(),
            field_manager: DEFAULT_FIELD_MANAGER.to_string(),
            cost_per_core_hour: None,
            cost_per_gib_hour: None,
            cost_currency: None,
        }
    }
}

impl Settings {
    /// The default runner image, or `None` when the operator has none.
    pub fn default_image(&self) -> Option<&str> {
        let image = self.runner_image.trim();
        (!image.is_empty()).then_some(image)
    }

    /// The default service account of runner pods, or `None` for the namespace's default.
    pub fn default_service_account(&self) -> Option<&str> {
        let name = self.runner_service_account.trim();
        (!name.is_empty()).then_some(name)
    }

    /// What resources may name: the defaults and the lists above.
    pub fn policy(&self) -> Policy {
        Policy {
            default_image: self.default_image().map(String::from),
            allowed_images: self.allowed_images.0.clone(),
            default_service_account: self.default_service_account().map(String::from),
            allowed_service_accounts: self.allowed_service_accounts.0.clone(),
            allowed_endpoints: self.allowed_endpoints.0.clone(),
        }
    }
}

impl Settings {
    /// The prices of a run's cost, when the admin set them all.
    pub fn cost_rates(&self) -> Option<CostRates> {
        Some(CostRates {
            per_core_hour: self.cost_per_core_hour?,
            per_gib_hour: self.cost_per_gib_hour?,
            currency: self.cost_currency.clone()?,
        })
    }
}

fn parse_rate(rate: &str) -> Result<f64, String> {
    match rate.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err(format!("{rate:?} is not a price: a number, 0 or more")),
    }
}

/// A comma-separated list of a setting, blanks dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct List(pub Vec<String>);

fn parse_list(list: &str) -> Result<List, String> {
    Ok(List(
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
    ))
}

fn parse_regions(list: &str) -> Result<AllowedRegions, String> {
    let regions = AllowedRegions::parse(list);
    if regions.regions().is_empty() {
        return Err("the allowed regions must name at least one region (or `*`)".into());
    }
    Ok(regions)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        settings: Settings,
    }

    #[test]
    fn defaults_match_the_default_settings() {
        let cli = Cli::try_parse_from(["op"]).unwrap();
        assert_eq!(cli.settings, Settings::default());
        assert!(DEFAULT_RUNNER_IMAGE.ends_with(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn flags_override_and_empty_lists_are_refused() {
        let cli = Cli::try_parse_from([
            "op",
            "--allowed-regions",
            "eu-west-2,eu-west-3",
            "--runner-image",
            "",
            "--field-manager",
            "x",
        ])
        .unwrap();
        assert_eq!(
            cli.settings.allowed_regions.regions(),
            ["eu-west-2", "eu-west-3"]
        );
        assert_eq!(cli.settings.default_image(), None);
        assert_eq!(cli.settings.field_manager, "x");
        assert!(Cli::try_parse_from(["op", "--allowed-regions", " , "]).is_err());
        let cli = Cli::try_parse_from([
            "op",
            "--allowed-images",
            "registry.example.com/pomona:*, ,ghcr.io/x:1",
            "--allowed-endpoints",
            "http://minio:9000",
        ])
        .unwrap();
        let policy = cli.settings.policy();
        assert_eq!(
            policy.allowed_images,
            ["registry.example.com/pomona:*", "ghcr.io/x:1"]
        );
        assert_eq!(policy.allowed_endpoints, ["http://minio:9000"]);
        assert_eq!(policy.default_image, Some(DEFAULT_RUNNER_IMAGE.into()));
    }

    #[test]
    fn cost_rates_come_all_together_or_not_at_all() {
        assert_eq!(Settings::default().cost_rates(), None);
        let cli = Cli::try_parse_from([
            "op",
            "--cost-per-core-hour",
            "0.0316",
            "--cost-per-gib-hour",
            "0.0035",
            "--cost-currency",
            "EUR",
        ])
        .unwrap();
        assert_eq!(
            cli.settings.cost_rates(),
            Some(CostRates {
                per_core_hour: 0.0316,
                per_gib_hour: 0.0035,
                currency: "EUR".into(),
            })
        );
        // A partial set is refused rather than completed with a guess.
        assert!(Cli::try_parse_from(["op", "--cost-per-core-hour", "0.03"]).is_err());
        assert!(
            Cli::try_parse_from([
                "op",
                "--cost-per-core-hour",
                "-1",
                "--cost-per-gib-hour",
                "0",
                "--cost-currency",
                "EUR"
            ])
            .is_err()
        );
    }
}
