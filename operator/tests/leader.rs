//! Leader election between two replicas over one Lease, against the mocked API server, on
//! tokio's paused clock: time moves only when every task waits, so no test sleeps for real.

mod common;

use std::time::Duration;

use common::fake_api::FakeApi;
use http::Method;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use pomona_operator::leader::LeaderElector;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/pomona-system/leases/pomona-operator";

fn holder(api: &FakeApi) -> Option<String> {
    api.object(LEASE)?["spec"]["holderIdentity"]
        .as_str()
        .map(String::from)
}

#[tokio::test(start_paused = true)]
async fn one_replica_leads_and_the_other_takes_over_when_it_stops() {
    let (api, client) = FakeApi::start();
    let leases: Api<Lease> = Api::namespaced(client, "pomona-system");
    let duration = Duration::from_secs(1);
    let a = LeaderElector::new(leases.clone(), "pomona-operator", "pod-a", duration);
    let b = LeaderElector::new(leases, "pomona-operator", "pod-b", duration);

    assert!(
        a.try_lead().await.unwrap(),
        "the first replica creates the Lease"
    );
    assert!(!b.try_lead().await.unwrap(), "the second one follows");
    assert!(a.try_lead().await.unwrap(), "the leader renews");
    assert_eq!(holder(&api).as_deref(), Some("pod-a"));

    // A write that lost a race (stale resourceVersion) is a refusal, not an error.
    api.fail_next(Method::PUT, LEASE, 409);
    assert!(!a.try_lead().await.unwrap());

    // The leader stops cleanly: it releases the Lease and the standby takes it at once.
    a.release().await.unwrap();
    assert!(b.try_lead().await.unwrap());
    assert_eq!(holder(&api).as_deref(), Some("pod-b"));
    let transitions = api.object(LEASE).unwrap()["spec"]["leaseTransitions"].clone();
    assert_eq!(
        transitions, 0,
        "taking a released Lease is not a transition from a holder"
    );
    // Releasing a Lease one does not hold leaves it alone.
    a.release().await.unwrap();
    assert_eq!(holder(&api).as_deref(), Some("pod-b"));

    // The new leader dies without releasing. The other replica judges expiry on its own clock,
    // never by the holder's renewTime: it sees this version of the Lease now, and takes it once
    // it has seen it unchanged for a whole duration.
    assert!(!a.try_lead().await.unwrap(), "just seen: followed");
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!a.try_lead().await.unwrap(), "not yet a whole duration");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(a.try_lead().await.unwrap());
    assert_eq!(holder(&api).as_deref(), Some("pod-a"));
    assert_eq!(
        api.object(LEASE).unwrap()["spec"]["leaseTransitions"],
        1,
        "an expired holder's Lease taken over counts a transition"
    );
    // The old leader was past its renew deadline long before: it no longer acts, and its
    // renewal loop returns at once, saying why.
    assert!(!b.leadership().is_leading());
    let lost = tokio::time::timeout(Duration::from_secs(5), b.hold())
        .await
        .expect("hold returns once the Lease is lost");
    assert!(lost.contains("not renewed within"), "{lost}");
    // A leader that renews on time but finds the Lease taken says so.
    assert!(a.try_lead().await.unwrap());
    api.fail_next(Method::PUT, LEASE, 409);
    let lost = tokio::time::timeout(Duration::from_secs(5), a.hold())
        .await
        .expect("hold returns once the Lease is lost");
    assert!(lost.contains("another replica"), "{lost}");
}

#[tokio::test(start_paused = true)]
async fn a_leader_stops_acting_at_its_renew_deadline_even_when_its_renewal_hangs() {
    let (api, client) = FakeApi::start();
    let leases: Api<Lease> = Api::namespaced(client, "pomona-system");
    let duration = Duration::from_secs(3);
    let a = LeaderElector::new(leases, "pomona-operator", "pod-a", duration);
    assert!(a.try_lead().await.unwrap());
    let leadership = a.leadership();
    assert!(leadership.is_leading());
    // Two thirds of the duration after the renewal started, without another one: it stops.
    tokio::time::sleep(Duration::from_millis(1990)).await;
    assert!(leadership.is_leading());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!leadership.is_leading(), "past the renew deadline");

    // A renewal that never answers cannot keep it leading: hold() gives up at the deadline.
    assert!(a.try_lead().await.unwrap());
    api.hang_next(Method::GET, LEASE);
    let lost = tokio::time::timeout(Duration::from_secs(10), a.hold())
        .await
        .expect("hold returns at the renew deadline");
    assert!(lost.contains("not renewed within"), "{lost}");
    assert!(!leadership.is_leading());
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_until_the_lease_is_free() {
    let (api, client) = FakeApi::start();
    let leases: Api<Lease> = Api::namespaced(client, "pomona-system");
    let duration = Duration::from_millis(900);
    let a = LeaderElector::new(leases.clone(), "pomona-operator", "pod-a", duration);
    let b = LeaderElector::new(leases, "pomona-operator", "pod-b", duration);
    assert!(a.try_lead().await.unwrap());
    let mut contacts = 0;
    let waited = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), b.acquire(|| contacts += 1))
        .await
        .expect("b leads once a stops renewing");
    assert!(
        waited.elapsed() >= Duration::from_millis(600),
        "{:?}",
        waited.elapsed()
    );
    assert!(contacts >= 2, "readiness is signalled while following");
    assert_eq!(holder(&api).as_deref(), Some("pod-b"));
}
