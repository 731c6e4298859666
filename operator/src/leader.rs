//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas can run and only
//! one reconciles.
//!
//! The holder renews the Lease every third of its duration. Another replica takes it once it
//! has not been renewed for a whole duration. Every write carries the `resourceVersion` it
//! read, so two replicas racing for an expired Lease cannot both win: the loser gets a conflict.
//! A leader that cannot renew in time stops acting (the process exits, and Kubernetes restarts
//! it as a standby); on shutdown it releases the Lease so that the standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};

/// What a replica does with the Lease it read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it, held by us.
    Create,
    /// Nobody holds it, or the holder stopped renewing it: take it.
    Take,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and renews it: wait.
    Follow {
        /// The current holder.
        holder: String,
    },
}

/// The decision for `lease`, read at `now`, by the replica `me`.
pub fn decide(lease: Option<&Lease>, me: &str, now: Timestamp) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.unwrap_or_default();
    if holder.is_empty() {
        return Decision::Take;
    }
    if holder == me {
        return Decision::Renew;
    }
    let renewed = spec.renew_time.or(spec.acquire_time).map(|t| t.0);
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(0)));
    match renewed {
        Some(at) if at + duration > now => Decision::Follow { holder },
        _ => Decision::Take,
    }
}

/// The Lease `me` writes for `decision` over `current` (the one read, with its
/// resourceVersion), or `None` when there is nothing to write.
pub fn next_lease(
    current: Option<&Lease>,
    decision: &Decision,
    name: &str,
    me: &str,
    duration: Duration,
    now: Timestamp,
) -> Option<Lease> {
    let mut lease = current.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let mut spec = lease.spec.take().unwrap_or_default();
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX).max(1);
    match decision {
        Decision::Follow { .. } => return None,
        Decision::Renew => {}
        Decision::Create | Decision::Take => {
            let changed_hands = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty());
            spec.lease_transitions =
                Some(spec.lease_transitions.unwrap_or(0) + i32::from(changed_hands));
            spec.holder_identity = Some(me.to_string());
            spec.acquire_time = Some(MicroTime(now));
        }
    }
    spec.lease_duration_seconds = Some(seconds);
    spec.renew_time = Some(MicroTime(now));
    lease.spec = Some(spec);
    Some(lease)
}

/// One replica's side of the election.
#[derive(Clone)]
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    /// An elector for the Lease `name` of `api`'s namespace, as the replica `identity` (its pod
    /// name), with Leases of `duration`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        Self {
            api,
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
        }
    }

    /// This replica's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// How often the holder renews: a third of the duration.
    pub fn renew_every(&self) -> Duration {
        self.duration / 3
    }

    /// Reads the Lease and acquires or renews it if it may. `Ok(true)` when this replica holds
    /// the Lease afterwards; a lost race (a conflict) is `Ok(false)`.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(current.as_ref(), &self.identity, Timestamp::now());
        let Some(lease) = next_lease(
            current.as_ref(),
            &decision,
            &self.name,
            &self.identity,
            self.duration,
            Timestamp::now(),
        ) else {
            return Ok(false);
        };
        let written = match decision {
            Decision::Create => self.api.create(&PostParams::default(), &lease).await,
            _ => {
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Waits until this replica leads, trying every [`Self::renew_every`]. `on_contact` is
    /// called after each answer of the API server (readiness).
    pub async fn acquire(&self, mut on_contact: impl FnMut()) {
        loop {
            match self.try_lead().await {
                Ok(true) => {
                    on_contact();
                    return;
                }
                Ok(false) => on_contact(),
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "reading the leader Lease failed")
                }
            }
            tokio::time::sleep(self.renew_every()).await;
        }
    }

    /// Renews the Lease until it is lost: returns when another replica holds it, or when no
    /// renewal succeeded for a whole Lease duration (this replica may no longer lead, and must
    /// stop acting).
    pub async fn hold(&self) -> String {
        let mut last_renewed = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.renew_every()).await;
            match self.try_lead().await {
                Ok(true) => last_renewed = tokio::time::Instant::now(),
                Ok(false) => return format!("another replica took the Lease {}", self.name),
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "renewing the leader Lease failed");
                }
            }
            if last_renewed.elapsed() >= self.duration {
                return format!(
                    "the Lease {} was not renewed for {:?}",
                    self.name, self.duration
                );
            }
        }
    }

    /// Gives the Lease up (on shutdown) so that a standby takes it without waiting for it to
    /// expire. Does nothing if this replica does not hold it.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: Option<i64>, seconds: i32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("pomona".into()),
                resource_version: Some("7".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                lease_duration_seconds: Some(seconds),
                renew_time: renewed.map(|s| MicroTime(Timestamp::from_second(s).unwrap())),
                lease_transitions: Some(2),
                ..LeaseSpec::default()
            }),
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn decisions() {
        let cases = [
            (None, Decision::Create),
            (Some(lease(Some("a"), Some(100), 15)), Decision::Renew),
            (Some(lease(None, Some(100), 15)), Decision::Take),
            (Some(lease(Some(""), Some(100), 15)), Decision::Take),
            (
                Some(lease(Some("b"), Some(100), 15)),
                Decision::Follow { holder: "b".into() },
            ),
            // Renewed 15 s ago with a 15 s duration: expired.
            (Some(lease(Some("b"), Some(95), 15)), Decision::Take),
            (Some(lease(Some("b"), None, 15)), Decision::Take),
        ];
        for (lease, want) in cases {
            assert_eq!(decide(lease.as_ref(), "a", at(110)), want, "{lease:?}");
        }
    }

    #[test]
    fn taking_counts_a_transition_and_keeps_the_resource_version() {
        let old = lease(Some("b"), Some(10), 15);
        let new = next_lease(
            Some(&old),
            &Decision::Take,
            "pomona",
            "a",
            Duration::from_secs(15),
            at(100),
        )
        .unwrap();
        let spec = new.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("a"));
        assert_eq!(spec.lease_transitions, Some(3));
        assert_eq!(spec.renew_time, Some(MicroTime(at(100))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(100))));
        assert_eq!(new.metadata.resource_version.as_deref(), Some("7"));

        let renewed = next_lease(
            Some(&lease(Some("a"), Some(90), 15)),
            &Decision::Renew,
            "pomona",
            "a",
            Duration::from_secs(15),
            at(100),
        )
        .unwrap()
        .spec
        .unwrap();
        assert_eq!(renewed.lease_transitions, Some(2));
        assert_eq!(renewed.acquire_time, None);
        assert_eq!(renewed.renew_time, Some(MicroTime(at(100))));

        let created = next_lease(
            None,
            &Decision::Create,
            "pomona",
            "a",
            Duration::from_secs(15),
            at(100),
        )
        .unwrap();
        assert_eq!(created.metadata.name.as_deref(), Some("pomona"));
        assert_eq!(created.spec.unwrap().lease_transitions, Some(0));
        assert!(
            next_lease(
                None,
                &Decision::Follow { holder: "b".into() },
                "pomona",
                "a",
                Duration::from_secs(15),
                at(100)
            )
            .is_none()
        );
    }
}
