//! A small in-memory Kubernetes API server behind kube's mocked service (`tower_test`), for the
//! operator's scenario tests.
//!
//! It keeps objects by their API path and answers what the operator sends: GET of an object,
//! GET of a collection with an equality label selector, POST (create), PUT (replace), PATCH —
//! server-side apply and JSON merge patch — on objects and on the `/status` subresource, and
//! DELETE. Every request is logged, so that tests assert which calls the operator made (one Job
//! creation, no status write when nothing changed…). Tests play the part of Kubernetes' own
//! controllers by editing the stored objects (a Job's status, its pods).
//!
//! Its rules follow what a real kube-apiserver v1.34.4 was seen to do (checked with kubectl on
//! FeatureExtraction objects and suspended Jobs):
//! - `metadata.generation` exists on the resource, Jobs and Pods only (not on Leases, Events,
//!   Secrets); it is 1 on creation, grows by one when a write changes anything but `metadata`
//!   and `status` (whatever the kind of write, server-side apply included) and when a deletion
//!   sets `deletionTimestamp`; a generation sent by the client is ignored, as are `uid`,
//!   `creationTimestamp`, `deletionTimestamp` and `resourceVersion` (the server sets them).
//! - A write that changes nothing keeps the `resourceVersion` (and makes no watch event).
//! - A PUT, merge patch or apply carrying a `resourceVersion` other than the stored one is a
//!   409 Conflict; without one it is unconditional. A PUT of a missing object is a 404, except
//!   for Leases, which PUT creates.
//! - Status subresource (the resource, Jobs, Pods): a write of the object keeps the stored
//!   status, a write of `/status` changes the status only.
//! - Server-side apply: needs `fieldManager`, `apiVersion` and `kind` (else 400); creates a
//!   missing object (not through `/status`: 404); maps merge; the fields a manager applied
//!   before and no longer applies are removed; lists are replaced whole (the real server merges
//!   keyed lists such as `ownerReferences` or `conditions` item by item, keeping other
//!   managers' items: the fake assumes one manager per list). Only forced applies are modelled
//!   (the real server answers 409 when another manager owns a field the apply changes); an
//!   unforced apply is refused with a 400 that says so.
//! - Jobs (422 Invalid, as the real server): `spec.maxFailedIndexes` greater than
//!   `spec.completions`; a change of `spec.template`, except of its labels, annotations,
//!   nodeSelector, tolerations, affinity and schedulingGates while the Job is suspended and
//!   has never started (no `status.startTime`); a change of `completionMode`,
//!   `backoffLimitPerIndex`, `podFailurePolicy` or `selector`; a change of `completions`,
//!   except of an Indexed Job together with `parallelism` (new completions = new parallelism).
//! - Deletion: an object with finalizers gets `deletionTimestamp` (and
//!   `deletionGracePeriodSeconds: 0`) and stays until a write removes its last finalizer; no
//!   finalizer may be added meanwhile (422). Deleted objects give DELETED watch events that
//!   carry the last stored state of the object (when a write removed the last finalizer: the
//!   state before that write, finalizers included, which is also what the write answers), at a
//!   new resource version. Propagation policies
//!   (`Foreground`, `Orphan`) are not modelled and are refused.
//! - Label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`; set-based ones are refused (400).
//!
//! [`FakeApi::serve_http`] serves the same state over HTTP on 127.0.0.1, for the operator
//! binary, with watches answered from the objects changed since the requested
//! `resourceVersion` (ADDED, MODIFIED or DELETED, in resource version order, each object once
//! with its latest state; each watch request returns what changed, or nothing after a second,
//! and the client watches again).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

/// One request the operator made.
#[derive(Clone, Debug)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Path, without the query.
    pub path: String,
    /// The query string.
    pub query: String,
    /// Content type of the body, if any.
    pub content_type: Option<String>,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    objects: BTreeMap<String, Value>,
    /// The resource version each stored object was created at (ADDED or MODIFIED in watches).
    created: BTreeMap<String, u64>,
    /// Deleted objects as DELETED watch events carry them: resource version of the deletion,
    /// path, last state.
    deleted: Vec<(u64, String, Value)>,
    /// What each field manager last applied to each object: (path, manager) → applied fields.
    applied: BTreeMap<(String, String), Value>,
    calls: Vec<Call>,
    version: u64,
    /// Requests to fail: (method, path) → HTTP status, used once each.
    failures: Vec<(Method, String, u16)>,
    /// Requests left without an answer (see [`FakeApi::hang_next`]).
    hangs: Vec<(Method, String)>,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// An answer: HTTP status and JSON body.
type Reply = (u16, Value);

fn status(code: u16, reason: &str, message: &str) -> Reply {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code
        }),
    )
}

const CREATED_AT: &str = "2026-11-25T10:00:00Z";
const DELETED_AT: &str = "2026-11-25T11:00:00Z";

/// Merges `patch` into `target` (JSON merge patch rules: objects merge, `null` deletes, the rest
/// replaces).
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Removes from `object` what a manager applied before (`previous`) and no longer applies
/// (`now`): maps are followed, anything else goes whole.
fn prune(object: &mut Value, previous: &Value, now: &Value) {
    let (Value::Object(o), Value::Object(p)) = (object, previous) else {
        return;
    };
    for (k, before) in p {
        match now.get(k) {
            None => {
                o.remove(k);
            }
            Some(after) => {
                if let Some(current) = o.get_mut(k) {
                    prune(current, before, after);
                }
            }
        }
    }
}

/// Whether the fake understands `selector` (equality and existence terms only).
fn selector_supported(selector: &str) -> bool {
    !selector.contains('(') && !selector.contains(" in ") && !selector.contains(" notin ")
}

fn labels_match(object: &Value, selector: &str) -> bool {
    let labels = &object["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k].as_str() != Some(v)
        } else if let Some((k, v)) = term.split_once('=') {
            labels[k].as_str() == Some(v.trim_start_matches('='))
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k].is_null()
        } else {
            !labels[term].is_null()
        }
    })
}

/// Whether the object at `key` belongs to the collection at `path`: its namespaced collection
/// (`…/namespaces/NS/jobs`), or the cluster-wide one (`…/jobs`).
fn in_collection(key: &str, path: &str) -> bool {
    let Some((parent, _name)) = key.rsplit_once('/') else {
        return false;
    };
    if parent == path {
        return true;
    }
    match parent.split_once("/namespaces/") {
        Some((group, rest)) => match rest.split_once('/') {
            Some((_ns, resource)) => {
                !resource.contains('/') && format!("{group}/{resource}") == path
            }
            None => false,
        },
        None => false,
    }
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%2C", ",")
                .replace("%3D", "=")
                .replace("%21", "!")
                .replace("%2F", "/")
                .replace('+', " ")
        })
    })
}

/// Kinds with `metadata.generation` and a status subresource: the resource, Jobs and Pods.
fn has_spec(key: &str) -> bool {
    key.starts_with("/apis/pomona.dev/")
        || key.starts_with("/apis/batch/")
        || key.contains("/pods/")
}

/// What `generation` counts changes of: everything but metadata and status.
fn spec_part(object: &Value) -> Value {
    let mut part = object.clone();
    if let Some(map) = part.as_object_mut() {
        map.remove("metadata");
        map.remove("status");
    }
    part
}

fn finalizers(object: &Value) -> Vec<String> {
    serde_json::from_value(object["metadata"]["finalizers"].clone()).unwrap_or_default()
}

fn name_of(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or_default()
}

/// The 409 of a write carrying a `resourceVersion` other than the stored one.
fn stale(sent: &Value, stored: &Value, key: &str) -> Option<Reply> {
    let version = &sent["metadata"]["resourceVersion"];
    (!version.is_null() && *version != stored["metadata"]["resourceVersion"]).then(|| {
        status(
            409,
            "Conflict",
            &format!(
                "Operation cannot be fulfilled on \"{}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                name_of(key)
            ),
        )
    })
}

/// Why the real API server would refuse `new` (replacing `old`) as a Job, if it would.
fn job_invalid(old: Option<&Value>, new: &Value) -> Option<String> {
    let spec = &new["spec"];
    if let (Some(max), Some(completions)) = (
        spec["maxFailedIndexes"].as_i64(),
        spec["completions"].as_i64(),
    ) && max > completions
    {
        return Some(format!(
            "spec.maxFailedIndexes: Invalid value: {max}: must be less than or equal to completions"
        ));
    }
    let old = old?;
    let was = &old["spec"];
    for field in [
        "completionMode",
        "backoffLimitPerIndex",
        "podFailurePolicy",
        "selector",
    ] {
        if spec[field] != was[field] {
            return Some(format!("spec.{field}: field is immutable"));
        }
    }
    if spec["completions"] != was["completions"] {
        let elastic =
            spec["completionMode"] == "Indexed" && spec["completions"] == spec["parallelism"];
        if !elastic {
            return Some(format!(
                "spec.completions: Invalid value: {}: can only be modified in tandem with \
                 spec.parallelism",
                spec["completions"]
            ));
        }
    }
    // Scheduling directives stay mutable while the Job is suspended and has never started.
    let schedulable = was["suspend"] == true && old["status"]["startTime"].is_null();
    let template = |job: &Value| {
        let mut t = job["spec"]["template"].clone();
        if schedulable {
            for (part, field) in [
                ("metadata", "labels"),
                ("metadata", "annotations"),
                ("spec", "nodeSelector"),
                ("spec", "tolerations"),
                ("spec", "affinity"),
                ("spec", "schedulingGates"),
            ] {
                if let Some(map) = t[part].as_object_mut() {
                    map.remove(field);
                }
            }
        }
        t
    };
    (template(old) != template(new)).then(|| "spec.template: field is immutable".to_string())
}

impl FakeApi {
    /// A new server and a client whose requests it answers.
    pub fn start() -> (Self, Client) {
        let api = Self::default();
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = api.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            let mut unanswered = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                if server.take_hang(&parts.method, parts.uri.path()) {
                    unanswered.push(send);
                    continue;
                }
                let bytes = body.collect_bytes().await.expect("read the request body");
                let (code, value) = server.handle(&parts, &bytes);
                let response = Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&value).unwrap()))
                    .unwrap();
                send.send_response(response);
            }
        });
        (api, Client::new(service, "default"))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn handle(&self, parts: &http::request::Parts, bytes: &[u8]) -> Reply {
        let path = parts.uri.path().to_string();
        let query = parts.uri.query().unwrap_or_default().to_string();
        let body: Option<Value> = (!bytes.is_empty())
            .then(|| serde_json::from_slice(bytes).expect("the client sends JSON"));
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        let mut state = self.lock();
        state.calls.push(Call {
            method: parts.method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            body: body.clone(),
        });
        if let Some(i) = state
            .failures
            .iter()
            .position(|(m, p, _)| *m == parts.method && *p == path)
        {
            let (_, _, code) = state.failures.remove(i);
            return status(code, "InternalError", "injected failure");
        }
        let (key, subresource) = match path.strip_suffix("/status") {
            Some(object) => (object.to_string(), true),
            None => (path.clone(), false),
        };
        match parts.method {
            Method::GET => Self::get(&state, &path, &query),
            Method::POST => {
                let object = body.expect("POST has a body");
                let key = format!(
                    "{path}/{}",
                    object["metadata"]["name"].as_str().unwrap_or_default()
                );
                if state.objects.contains_key(&key) {
                    let name = name_of(&key);
                    return status(409, "AlreadyExists", &format!("\"{name}\" already exists"));
                }
                Self::commit(&mut state, &key, object)
            }
            Method::PUT => {
                let mut object = body.expect("PUT has a body");
                let Some(stored) = state.objects.get(&key).cloned() else {
                    if key.contains("/leases/") && !subresource {
                        return Self::commit(&mut state, &key, object);
                    }
                    return status(404, "NotFound", &format!("{key} not found"));
                };
                if let Some(conflict) = stale(&object, &stored, &key) {
                    return conflict;
                }
                if subresource {
                    let status = object["status"].take();
                    object = stored;
                    object["status"] = status;
                } else if has_spec(&key) {
                    object["status"] = stored["status"].clone();
                }
                Self::commit(&mut state, &key, object)
            }
            Method::PATCH => {
                let patch = body.expect("PATCH has a body");
                let content_type = content_type.unwrap_or_default();
                let apply = content_type.starts_with("application/apply-patch");
                if !apply && !content_type.starts_with("application/merge-patch+json") {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        &format!(
                            "the fake API server models apply and merge patches, not {content_type}"
                        ),
                    );
                }
                // The part of the body this write may change.
                let part = |v: &Value| -> Value {
                    if subresource {
                        json!({ "status": v["status"] })
                    } else {
                        let mut v = v.clone();
                        if has_spec(&key)
                            && let Some(map) = v.as_object_mut()
                        {
                            map.remove("status");
                        }
                        v
                    }
                };
                let change = part(&patch);
                let mut manager = String::new();
                if apply {
                    let Some(m) = query_param(&query, "fieldManager") else {
                        return status(
                            400,
                            "BadRequest",
                            "fieldManager is required for apply requests",
                        );
                    };
                    if query_param(&query, "force").as_deref() != Some("true") {
                        return status(
                            400,
                            "BadRequest",
                            "the fake API server models forced server-side apply only (force=true)",
                        );
                    }
                    if patch["apiVersion"].is_null() || patch["kind"].is_null() {
                        return status(
                            400,
                            "BadRequest",
                            "apiVersion and kind must be set in an apply patch",
                        );
                    }
                    if patch["metadata"]["name"]
                        .as_str()
                        .is_some_and(|name| name != name_of(&key))
                    {
                        return status(
                            400,
                            "BadRequest",
                            "the name of the object does not match the name on the URL",
                        );
                    }
                    manager = format!("{m}{}", if subresource { "/status" } else { "" });
                }
                let Some(stored) = state.objects.get(&key).cloned() else {
                    if apply && !subresource {
                        state.applied.insert((key.clone(), manager), change.clone());
                        return Self::commit(&mut state, &key, change);
                    }
                    return status(404, "NotFound", &format!("{key} not found"));
                };
                if let Some(conflict) = stale(&patch, &stored, &key) {
                    return conflict;
                }
                let mut object = stored;
                if apply {
                    let id = (key.clone(), manager);
                    if let Some(previous) = state.applied.get(&id) {
                        prune(&mut object, previous, &change);
                    }
                    state.applied.insert(id, change.clone());
                }
                merge(&mut object, &change);
                Self::commit(&mut state, &key, object)
            }
            Method::DELETE => {
                let policy = query_param(&query, "propagationPolicy").or_else(|| {
                    body.as_ref()?["propagationPolicy"]
                        .as_str()
                        .map(String::from)
                });
                if policy.is_some_and(|p| p != "Background") {
                    return status(
                        400,
                        "BadRequest",
                        "the fake API server models background deletion only",
                    );
                }
                Self::delete(&mut state, &key)
            }
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    fn get(state: &State, path: &str, query: &str) -> Reply {
        if let Some(object) = state.objects.get(path) {
            return (200, object.clone());
        }
        // A collection: the objects directly under it (in every namespace for a cluster-wide
        // path).
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        if !selector_supported(&selector) {
            return status(
                400,
                "BadRequest",
                &format!("the fake API server does not model set-based selectors: {selector}"),
            );
        }
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|(k, _)| in_collection(k, path))
            .map(|(_, v)| v.clone())
            .filter(|v| labels_match(v, &selector))
            .collect();
        let is_collection = path.rsplit('/').next().is_some_and(|last| {
            [
                "pods",
                "jobs",
                "featureextractions",
                "events",
                "leases",
                "secrets",
            ]
            .contains(&last)
        });
        if !is_collection {
            return status(404, "NotFound", &format!("{path} not found"));
        }
        (
            200,
            json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": items,
            }),
        )
    }

    /// Stores `new` at `key` as the API server does on every write: the metadata the server
    /// sets (uid, timestamps, generation, resource version) is kept from the stored object,
    /// not taken from the client; Jobs are validated; a write that changes nothing keeps the
    /// resource version; a deleting object that lost its last finalizer is deleted.
    fn commit(state: &mut State, key: &str, mut new: Value) -> Reply {
        let old = state.objects.get(key).cloned();
        if !new["metadata"].is_object() {
            new["metadata"] = json!({});
        }
        for field in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
        ] {
            match old.as_ref().map(|o| &o["metadata"][field]) {
                Some(v) if !v.is_null() => new["metadata"][field] = v.clone(),
                _ => {
                    new["metadata"].as_object_mut().unwrap().remove(field);
                }
            }
        }
        if let Some(old) = &old
            && !old["metadata"]["deletionTimestamp"].is_null()
        {
            let had = finalizers(old);
            if let Some(f) = finalizers(&new).iter().find(|f| !had.contains(f)) {
                return status(
                    422,
                    "Invalid",
                    &format!(
                        "metadata.finalizers: Forbidden: no new finalizers can be added if the \
                         object is being deleted, found new finalizers [{f}]"
                    ),
                );
            }
        }
        if key.starts_with("/apis/batch/")
            && let Some(message) = job_invalid(old.as_ref(), &new)
        {
            let name = name_of(key);
            return status(
                422,
                "Invalid",
                &format!("The Job \"{name}\" is invalid: {message}"),
            );
        }
        let tracked = has_spec(key);
        match &old {
            None => {
                let meta = &mut new["metadata"];
                meta["uid"] = json!(format!("uid-{}", state.version + 1));
                meta["creationTimestamp"] = json!(CREATED_AT);
                if tracked {
                    meta["generation"] = json!(1);
                }
            }
            Some(old) => {
                if tracked && spec_part(old) != spec_part(&new) {
                    let generation = old["metadata"]["generation"].as_i64().unwrap_or(0);
                    new["metadata"]["generation"] = json!(generation + 1);
                }
                if *old == new {
                    return (200, new);
                }
            }
        }
        state.version += 1;
        new["metadata"]["resourceVersion"] = json!(state.version.to_string());
        if old.is_none() {
            state.created.insert(key.to_string(), state.version);
        }
        let deleting = !new["metadata"]["deletionTimestamp"].is_null();
        if let Some(old) = old
            .as_ref()
            .filter(|_| deleting && finalizers(&new).is_empty())
        {
            // As the real server: the answer is the object as it was, and the DELETED event
            // carries that state (finalizers included) at the new resource version.
            let mut last = old.clone();
            last["metadata"]["resourceVersion"] = new["metadata"]["resourceVersion"].clone();
            Self::forget(state, key, last);
            return (200, old.clone());
        }
        state.objects.insert(key.to_string(), new.clone());
        (if old.is_none() { 201 } else { 200 }, new)
    }

    /// Deletes the object at `key` as the API server does: one with finalizers only gets its
    /// `deletionTimestamp` (and a new generation); one without goes, with a DELETED event.
    fn delete(state: &mut State, key: &str) -> Reply {
        let Some(mut object) = state.objects.get(key).cloned() else {
            return status(404, "NotFound", &format!("{key} not found"));
        };
        if !object["metadata"]["deletionTimestamp"].is_null() {
            return (200, object);
        }
        state.version += 1;
        if finalizers(&object).is_empty() {
            object["metadata"]["resourceVersion"] = json!(state.version.to_string());
            Self::forget(state, key, object.clone());
            return (200, object);
        }
        let meta = &mut object["metadata"];
        meta["deletionTimestamp"] = json!(DELETED_AT);
        meta["deletionGracePeriodSeconds"] = json!(0);
        meta["resourceVersion"] = json!(state.version.to_string());
        if has_spec(key) {
            meta["generation"] = json!(meta["generation"].as_i64().unwrap_or(0) + 1);
        }
        state.objects.insert(key.to_string(), object.clone());
        (200, object)
    }

    /// Removes the object at `key`, keeping its last state for the DELETED watch event.
    fn forget(state: &mut State, key: &str, last: Value) {
        state.objects.remove(key);
        state.created.remove(key);
        state.applied.retain(|(k, _), _| k != key);
        let version = state.version;
        state.deleted.push((version, key.to_string(), last));
    }

    /// Stores `object` at `path` (as Kubernetes' controllers would), through the API server's
    /// rules for a create or a replace (status included); panics if it refuses.
    pub fn put(&self, path: &str, object: Value) -> Value {
        let mut state = self.lock();
        match Self::commit(&mut state, path, object) {
            (200 | 201, object) => object,
            (_, refusal) => panic!("the API server refuses to store {path}: {refusal}"),
        }
    }

    /// Applies a JSON merge patch to the object at `path` (spec and status alike), through the
    /// API server's rules; panics if it refuses.
    pub fn edit(&self, path: &str, patch: Value) -> Value {
        let mut object = self
            .object(path)
            .unwrap_or_else(|| panic!("{path} does not exist"));
        merge(&mut object, &patch);
        self.put(path, object)
    }

    /// Deletes the object at `path` as the API server does (an object with finalizers stays,
    /// with a `deletionTimestamp`); returns the deleted or deleting object.
    pub fn remove(&self, path: &str) -> Option<Value> {
        match Self::delete(&mut self.lock(), path) {
            (200, object) => Some(object),
            _ => None,
        }
    }

    /// The object at `path`.
    pub fn object(&self, path: &str) -> Option<Value> {
        self.lock().objects.get(path).cloned()
    }

    /// Paths of the stored objects under `prefix`.
    pub fn paths(&self, prefix: &str) -> Vec<String> {
        self.lock()
            .objects
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Forgets the logged requests.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// Requests that change something (everything but GET).
    pub fn writes(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method != Method::GET)
            .collect()
    }

    /// Fails the next `method` request to `path` with `code`.
    pub fn fail_next(&self, method: Method, path: &str, code: u16) {
        self.lock().failures.push((method, path.to_string(), code));
    }

    /// Leaves the next `method` request to `path` without an answer, as a stalled API server
    /// would (on the mocked service of [`FakeApi::start`]).
    pub fn hang_next(&self, method: Method, path: &str) {
        self.lock().hangs.push((method, path.to_string()));
    }

    fn take_hang(&self, method: &Method, path: &str) -> bool {
        let mut state = self.lock();
        match state
            .hangs
            .iter()
            .position(|(m, p)| m == method && p == path)
        {
            Some(i) => {
                state.hangs.remove(i);
                true
            }
            None => false,
        }
    }

    /// Objects of the collection at `path` created, changed or deleted after resource version
    /// `since`, as watch events (one JSON object per line, in resource version order).
    fn watch_events(&self, path: &str, query: &str, since: u64) -> String {
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let state = self.lock();
        let version = |object: &Value| -> u64 {
            object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let mut events: Vec<(u64, &str, &Value)> = Vec::new();
        for (key, object) in &state.objects {
            if version(object) > since && in_collection(key, path) {
                let added = state.created.get(key).is_some_and(|&c| c > since);
                events.push((
                    version(object),
                    if added { "ADDED" } else { "MODIFIED" },
                    object,
                ));
            }
        }
        for (deleted_at, key, object) in &state.deleted {
            if *deleted_at > since && in_collection(key, path) {
                events.push((*deleted_at, "DELETED", object));
            }
        }
        events.sort_by_key(|e| e.0);
        let mut out = String::new();
        for (_, kind, object) in events {
            if labels_match(object, &selector) {
                out.push_str(&json!({"type": kind, "object": object}).to_string());
                out.push('\n');
            }
        }
        out
    }

    /// Serves the fake over HTTP on 127.0.0.1; returns its address.
    pub async fn serve_http(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let api = self.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = api.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let api = api.clone();
                            async move {
                                let (parts, body) = req.into_parts();
                                let bytes = body.collect().await?.to_bytes();
                                Ok::<_, hyper::Error>(api.answer_http(&parts, &bytes).await)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        addr
    }

    async fn answer_http(
        &self,
        parts: &http::request::Parts,
        bytes: &[u8],
    ) -> Response<Full<Bytes>> {
        let query = parts.uri.query().unwrap_or_default().to_string();
        let body = if query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1") {
            let since = query_param(&query, "resourceVersion")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut events = String::new();
            for _ in 0..20 {
                events = self.watch_events(parts.uri.path(), &query, since);
                if !events.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (200, events.into_bytes())
        } else {
            let (code, value) = self.handle(parts, bytes);
            (code, serde_json::to_vec(&value).unwrap())
        };
        Response::builder()
            .status(StatusCode::from_u16(body.0).unwrap())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.1)))
            .unwrap()
    }
}
