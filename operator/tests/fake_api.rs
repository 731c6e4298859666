//! The in-memory API server's rules, each as a real kube-apiserver v1.34.4 was seen to apply
//! it (with kubectl, on FeatureExtraction objects and suspended Jobs): where the fake and the
//! real server disagree, the scenario tests prove nothing.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::fake_api::FakeApi;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

const FX: &str = "/apis/pomona.dev/v1alpha1/namespaces/ns/featureextractions/fx";
const JOB: &str = "/apis/batch/v1/namespaces/ns/jobs/j";

fn api(
    client: &kube::Client,
    group: &str,
    version: &str,
    kind: &str,
    plural: &str,
) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Api::namespaced_with(
        client.clone(),
        "ns",
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

fn fx_api(client: &kube::Client) -> Api<DynamicObject> {
    api(
        client,
        "pomona.dev",
        "v1alpha1",
        "FeatureExtraction",
        "featureextractions",
    )
}

fn job_api(client: &kube::Client) -> Api<DynamicObject> {
    api(client, "batch", "v1", "Job", "jobs")
}

fn code(err: kube::Error) -> u16 {
    match err {
        kube::Error::Api(status) => status.code,
        other => panic!("not an API error: {other}"),
    }
}

fn generation(o: &DynamicObject) -> Option<i64> {
    o.metadata.generation
}

fn version(o: &DynamicObject) -> String {
    o.metadata.resource_version.clone().unwrap()
}

fn forced(manager: &str) -> PatchParams {
    PatchParams::apply(manager).force()
}

fn fx() -> Value {
    json!({
        "apiVersion": "pomona.dev/v1alpha1", "kind": "FeatureExtraction",
        "metadata": {"name": "fx", "namespace": "ns", "labels": {"a": "1"}},
        "spec": {"suspend": true, "sharding": {"parallelism": 3}}
    })
}

fn job(completions: i64, parallelism: i64, max_failed: i64, image: &str) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "j", "namespace": "ns"},
        "spec": {
            "suspend": true, "completionMode": "Indexed",
            "completions": completions, "parallelism": parallelism,
            "backoffLimitPerIndex": 1, "maxFailedIndexes": max_failed,
            "template": {
                "metadata": {"labels": {"app": "x"}},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": image}]}
            }
        }
    })
}

#[tokio::test]
async fn generation_counts_spec_changes_and_status_is_a_subresource() {
    let (fake, client) = FakeApi::start();
    let api = fx_api(&client);
    let created = api
        .patch("fx", &forced("tester"), &Patch::Apply(fx()))
        .await
        .unwrap();
    assert_eq!(generation(&created), Some(1));

    // kubectl patch fx fx1 --subresource=status --type=merge -p '{"spec":…,"status":…}':
    // the status changes, the spec does not, the generation stays.
    let o = api
        .patch_status(
            "fx",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"suspend": false}, "status": {"message": "hello"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        (generation(&o), o.data["spec"]["suspend"].clone()),
        (Some(1), json!(true))
    );
    assert_eq!(o.data["status"]["message"], "hello");
    // A write of the object leaves its status alone; metadata does not count.
    let o = api
        .patch(
            "fx",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"message": "main"}, "metadata": {"labels": {"b": "2"}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        (generation(&o), o.data["status"]["message"].clone()),
        (Some(1), json!("hello"))
    );
    // A spec change counts; the same write again changes nothing, not even the version; a
    // generation sent by the client is ignored.
    let spec = Patch::Merge(json!({"spec": {"sharding": {"parallelism": 2}}}));
    let o = api
        .patch("fx", &PatchParams::default(), &spec)
        .await
        .unwrap();
    assert_eq!(generation(&o), Some(2));
    let again = api
        .patch("fx", &PatchParams::default(), &spec)
        .await
        .unwrap();
    assert_eq!(version(&again), version(&o));
    let o = api
        .patch(
            "fx",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"generation": 40}})),
        )
        .await
        .unwrap();
    assert_eq!(generation(&o), Some(2));
    // So does a spec change by server-side apply.
    let mut changed = fx();
    changed["spec"]["sharding"]["parallelism"] = json!(4);
    let o = api
        .patch("fx", &forced("tester"), &Patch::Apply(&changed))
        .await
        .unwrap();
    assert_eq!(generation(&o), Some(3));
    // Leases have no generation.
    let lease: Api<DynamicObject> = api_lease(&client);
    let l = lease
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(generation(&l), None);
    assert!(fake.object(FX).is_some());
}

fn api_lease(client: &kube::Client) -> Api<DynamicObject> {
    api(client, "coordination.k8s.io", "v1", "Lease", "leases")
}

#[tokio::test]
async fn a_stale_resource_version_is_a_conflict() {
    let (_fake, client) = FakeApi::start();
    let api = fx_api(&client);
    let o = api
        .patch("fx", &forced("tester"), &Patch::Apply(fx()))
        .await
        .unwrap();
    let seen = version(&o);
    api.patch(
        "fx",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"b": "2"}}})),
    )
    .await
    .unwrap();
    let mut stale = o.clone();
    assert_eq!(
        stale.metadata.resource_version.as_deref(),
        Some(seen.as_str())
    );
    stale.data["spec"]["suspend"] = json!(false);
    // kubectl replace, kubectl patch and kubectl apply --server-side with a stale
    // resourceVersion: 409 Conflict.
    assert_eq!(
        code(
            api.replace("fx", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        ),
        409
    );
    let merge =
        Patch::Merge(json!({"metadata": {"resourceVersion": seen}, "spec": {"suspend": false}}));
    assert_eq!(
        code(
            api.patch("fx", &PatchParams::default(), &merge)
                .await
                .unwrap_err()
        ),
        409
    );
    let mut apply = fx();
    apply["metadata"]["resourceVersion"] = json!(seen);
    assert_eq!(
        code(
            api.patch("fx", &forced("tester"), &Patch::Apply(&apply))
                .await
                .unwrap_err()
        ),
        409
    );
    // Without a resourceVersion a replace is unconditional.
    stale.metadata.resource_version = None;
    let o = api
        .replace("fx", &PostParams::default(), &stale)
        .await
        .unwrap();
    assert_eq!(o.data["spec"]["suspend"], false);
    // A replace of a missing resource is a 404; of a missing Lease, a creation.
    stale.metadata.name = Some("nothere".into());
    assert_eq!(
        code(
            api.replace("nothere", &PostParams::default(), &stale)
                .await
                .unwrap_err()
        ),
        404
    );
    let lease = api_lease(&client);
    let l: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "l"}, "spec": {"holderIdentity": "a"}
    }))
    .unwrap();
    lease
        .replace("l", &PostParams::default(), &l)
        .await
        .unwrap();
    assert_eq!(
        code(lease.create(&PostParams::default(), &l).await.unwrap_err()),
        409
    );
}

#[tokio::test]
async fn server_side_apply_owns_what_it_applies() {
    let (_fake, client) = FakeApi::start();
    let api = fx_api(&client);
    api.patch("fx", &forced("tester"), &Patch::Apply(fx()))
        .await
        .unwrap();
    // An unforced apply is not modelled (the real server checks field owners).
    let err = api
        .patch("fx", &PatchParams::apply("tester"), &Patch::Apply(fx()))
        .await
        .unwrap_err();
    assert_eq!(code(err), 400);
    // A label the manager stops applying goes; one another writer set stays.
    api.patch(
        "fx",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
    )
    .await
    .unwrap();
    let mut without = fx();
    without["metadata"]["labels"] = json!({});
    let o = api
        .patch("fx", &forced("tester"), &Patch::Apply(&without))
        .await
        .unwrap();
    assert_eq!(
        o.metadata.labels.unwrap().into_iter().collect::<Vec<_>>(),
        [("x".into(), "y".into())]
    );
    // An apply of the status ignores the spec; one of the object ignores the status.
    let mut body = fx();
    body["spec"]["suspend"] = json!(false);
    body["status"] = json!({"message": "from-apply"});
    let o = api
        .patch_status("fx", &forced("tester"), &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(
        (o.data["spec"]["suspend"].clone(), generation(&o)),
        (json!(true), Some(1))
    );
    body["status"] = json!({"message": "other"});
    let o = api
        .patch("fx", &forced("tester2"), &Patch::Apply(&body))
        .await
        .unwrap();
    assert_eq!(o.data["status"]["message"], "from-apply");
    assert_eq!(
        (o.data["spec"]["suspend"].clone(), generation(&o)),
        (json!(false), Some(2))
    );
    // An apply of the status of a missing object is a 404.
    body["metadata"]["name"] = json!("nothere");
    let err = api
        .patch_status("nothere", &forced("tester"), &Patch::Apply(&body))
        .await
        .unwrap_err();
    assert_eq!(code(err), 404);
}

#[tokio::test]
async fn a_job_refuses_changes_the_real_server_refuses() {
    let (_fake, client) = FakeApi::start();
    let api = job_api(&client);
    let apply = |j: Value| {
        let api = api.clone();
        async move { api.patch("j", &forced("op"), &Patch::Apply(j)).await }
    };
    // maxFailedIndexes > completions: 422, on creation as on update.
    assert_eq!(
        code(apply(job(3, 3, 5, "busybox:1")).await.unwrap_err()),
        422
    );
    let o = apply(job(3, 3, 0, "busybox:1")).await.unwrap();
    assert_eq!(generation(&o), Some(1));
    let o = apply(job(3, 1, 0, "busybox:1")).await.unwrap();
    assert_eq!(generation(&o), Some(2), "parallelism changes");
    // The pod template is immutable, but for scheduling directives of a suspended Job that
    // never started.
    assert_eq!(
        code(apply(job(3, 1, 0, "busybox:2")).await.unwrap_err()),
        422
    );
    let mut labelled = job(3, 1, 0, "busybox:1");
    labelled["spec"]["template"]["metadata"]["labels"]["app"] = json!("z");
    apply(labelled.clone()).await.unwrap();
    // completions of an Indexed Job change only together with parallelism.
    assert_eq!(
        code(apply(job(4, 1, 0, "busybox:1")).await.unwrap_err()),
        422
    );
    let mut elastic = labelled.clone();
    elastic["spec"]["completions"] = json!(4);
    elastic["spec"]["parallelism"] = json!(4);
    apply(elastic.clone()).await.unwrap();
    elastic["spec"]["maxFailedIndexes"] = json!(5);
    assert_eq!(code(apply(elastic.clone()).await.unwrap_err()), 422);
    elastic["spec"]["maxFailedIndexes"] = json!(0);
    elastic["spec"]["backoffLimitPerIndex"] = json!(4);
    assert_eq!(
        code(apply(elastic.clone()).await.unwrap_err()),
        422,
        "immutable"
    );
}

/// Once started (`status.startTime`), even a suspended Job's template labels are fixed.
#[tokio::test]
async fn a_started_job_keeps_its_template() {
    let (fake, client) = FakeApi::start();
    let api = job_api(&client);
    api.patch("j", &forced("op"), &Patch::Apply(job(3, 3, 0, "busybox:1")))
        .await
        .unwrap();
    fake.edit(
        JOB,
        json!({"status": {"startTime": "2026-11-25T10:01:00Z"}}),
    );
    let mut labelled = job(3, 3, 0, "busybox:1");
    labelled["spec"]["template"]["metadata"]["labels"]["app"] = json!("w");
    let err = api
        .patch("j", &forced("op"), &Patch::Apply(labelled))
        .await
        .unwrap_err();
    assert_eq!(code(err), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finalizer_holds_a_deletion_and_watches_see_the_last_object() {
    let (fake, client) = FakeApi::start();
    let api = fx_api(&client);
    let o = api
        .patch("fx", &forced("tester"), &Patch::Apply(fx()))
        .await
        .unwrap();
    let since = version(&o);
    api.patch(
        "fx",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
    )
    .await
    .unwrap();
    // kubectl delete: with a finalizer, the object stays with a deletionTimestamp and a new
    // generation; no finalizer may be added; removing the last one deletes it.
    api.delete("fx", &DeleteParams::default()).await.unwrap();
    let o = api.get("fx").await.unwrap();
    assert!(o.metadata.deletion_timestamp.is_some());
    assert_eq!(generation(&o), Some(2));
    let more = Patch::Merge(
        json!({"metadata": {"finalizers": ["example.com/hold", "example.com/other"]}}),
    );
    assert_eq!(
        code(
            api.patch("fx", &PatchParams::default(), &more)
                .await
                .unwrap_err()
        ),
        422
    );
    api.patch(
        "fx",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    assert_eq!(code(api.get("fx").await.unwrap_err()), 404);
    assert!(fake.object(FX).is_none());

    // kubectl get --watch: DELETED carries the last state of the object, at a new version.
    let addr = fake.serve_http().await;
    let collection = "/apis/pomona.dev/v1alpha1/namespaces/ns/featureextractions";
    let from = since.clone();
    let events = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "GET {collection}?watch=true&resourceVersion={from} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    let body = events.split_once("\r\n\r\n").unwrap().1;
    let events: Vec<Value> = body
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["type"], "DELETED");
    let last = &events[0]["object"]["metadata"];
    assert!(last["deletionTimestamp"].is_string(), "{last}");
    assert_eq!(last["finalizers"], json!(["example.com/hold"]));
    assert!(
        last["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > since.parse().unwrap()
    );
}
