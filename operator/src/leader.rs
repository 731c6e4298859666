//! Leader election on a `coordination.k8s.io/v1` Lease, so that two replicas can run and only
//! one reconciles.
//!
//! The protocol is Kubernetes' own (client-go's leader election):
//! - The holder renews the Lease every third of its duration, and leads only until a renew
//!   deadline (two thirds of the duration) after the start of its last successful renewal, on
//!   its own monotonic clock: a renewal that has not answered by then, or a process that was
//!   paused past it, stops leading ([`Leadership::is_leading`], checked before every reconcile)
//!   and the process exits, so that Kubernetes restarts it as a standby.
//! - A standby never compares the holder's `renewTime` with its own clock (the two clocks may
//!   disagree): it takes the Lease once the Lease has not changed, as it observed it, for a
//!   whole duration on its own clock.
//! - Every write carries the `resourceVersion` it read, so two replicas racing for an expired
//!   Lease cannot both win: the loser gets a conflict.
//! - On shutdown the holder releases the Lease so that the standby takes over at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::time::Instant;

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

/// The decision for `lease`, read by the replica `me`, which has seen it unchanged for
/// `unchanged_for` on its own clock.
pub fn decide(lease: Option<&Lease>, me: &str, unchanged_for: Duration) -> Decision {
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
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
    if unchanged_for >= duration {
        Decision::Take
    } else {
        Decision::Follow { holder }
    }
}

/// What tells one version of a Lease from another: its holder, renewal and transitions.
type Record = (Option<String>, Option<String>, Option<i32>);

/// The [`Record`] of a Lease.
fn record(lease: Option<&Lease>) -> Option<Record> {
    let spec = lease?.spec.clone().unwrap_or_default();
    Some((
        spec.holder_identity,
        spec.renew_time.map(|t| t.0.to_string()),
        spec.lease_transitions,
    ))
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
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The Lease as last read, and when (on this replica's clock) it was last seen to change.
    observed: Mutex<(Option<Record>, Instant)>,
    leadership: Leadership,
}

/// Whether this replica leads now: until the renew deadline of its last successful renewal
/// (or always, without leader election). Cheap to clone and to ask; the controller asks it
/// before every reconcile.
#[derive(Clone, Debug, Default)]
pub struct Leadership {
    always: bool,
    until: Arc<Mutex<Option<Instant>>>,
}

impl Leadership {
    /// Leadership that never ends (leader election off).
    pub fn always() -> Self {
        Self {
            always: true,
            ..Self::default()
        }
    }

    fn set(&self, until: Option<Instant>) {
        *self.until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    /// The end of the current leadership, if any.
    pub fn until(&self) -> Option<Instant> {
        *self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this replica may act now.
    pub fn is_leading(&self) -> bool {
        self.always || self.until().is_some_and(|until| Instant::now() < until)
    }
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
            observed: Mutex::new((None, Instant::now())),
            leadership: Leadership::default(),
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

    /// How long after the start of its last successful renewal the holder may lead: two
    /// thirds of the duration, so that it stops before a standby may take over.
    pub fn renew_deadline(&self) -> Duration {
        self.duration * 2 / 3
    }

    /// The handle the controller asks before acting.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Reads the Lease and acquires or renews it if it may. `Ok(true)` when this replica holds
    /// the Lease afterwards; a lost race (a conflict) is `Ok(false)`.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let started = Instant::now();
        let current = self.api.get_opt(&self.name).await?;
        let unchanged_for = {
            let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
            let seen = record(current.as_ref());
            if observed.0 != seen {
                *observed = (seen, started);
            }
            started.saturating_duration_since(observed.1)
        };
        let decision = decide(current.as_ref(), &self.identity, unchanged_for);
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
            Ok(written) => {
                *self.observed.lock().unwrap_or_else(|e| e.into_inner()) =
                    (record(Some(&written)), started);
                self.leadership.set(Some(started + self.renew_deadline()));
                Ok(true)
            }
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

    /// Renews the Lease until it is lost: returns when another replica holds it, or when the
    /// renew deadline passed without a successful renewal (a renewal still waiting for an
    /// answer then is abandoned). From then on [`Leadership::is_leading`] is false.
    pub async fn hold(&self) -> String {
        loop {
            tokio::time::sleep(self.renew_every()).await;
            let deadline = self.leadership.until().unwrap_or_else(Instant::now);
            match tokio::time::timeout_at(deadline, self.try_lead()).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    self.leadership.set(None);
                    return format!("another replica took the Lease {}", self.name);
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, lease = %self.name, "renewing the leader Lease failed");
                }
                Err(_) => {}
            }
            if !self.leadership.is_leading() {
                self.leadership.set(None);
                return format!(
                    "the Lease {} was not renewed within {:?}",
                    self.name,
                    self.renew_deadline()
                );
            }
        }
    }

    /// Gives the Lease up (on shutdown) so that a standby takes it without waiting for it to
    /// expire. Does nothing if this replica does not hold it.
    pub async fn release(&self) -> Result<(), kube::Error> {
        self.leadership.set(None);
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
        let seen = |secs| Duration::from_secs(secs);
        let cases = [
            (None, seen(0), Decision::Create),
            (
                Some(lease(Some("a"), Some(100), 15)),
                seen(0),
                Decision::Renew,
            ),
            (Some(lease(None, Some(100), 15)), seen(0), Decision::Take),
            (
                Some(lease(Some(""), Some(100), 15)),
                seen(0),
                Decision::Take,
            ),
            (
                Some(lease(Some("b"), Some(100), 15)),
                seen(14),
                Decision::Follow { holder: "b".into() },
            ),
            // Unchanged for a whole duration on our clock: expired, whatever its renewTime says
            // (here far in the future of ours, as a skewed clock would write it).
            (
                Some(lease(Some("b"), Some(i64::from(i32::MAX)), 15)),
                seen(15),
                Decision::Take,
            ),
            (Some(lease(Some("b"), None, 15)), seen(15), Decision::Take),
        ];
        for (lease, unchanged, want) in cases {
            assert_eq!(decide(lease.as_ref(), "a", unchanged), want, "{lease:?}");
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
