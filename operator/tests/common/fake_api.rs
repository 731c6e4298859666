//! A small in-memory Kubernetes API server behind kube's mocked service (`tower_test`), for the
//! operator's scenario tests.
//!
//! It keeps objects by their API path and answers what the operator sends: GET of an object,
//! GET of a collection with an equality label selector, POST (create), PUT (replace, with the
//! optimistic-concurrency check on `resourceVersion`), PATCH — server-side apply (creates or
//! merges) and merge patch — on objects and on the `/status` subresource. Every request is
//! logged, so that tests assert which calls the operator made (one Job creation, no status write
//! when nothing changed…). Tests play the part of Kubernetes' own controllers by editing the
//! stored objects (a Job's status, its pods).
//!
//! [`FakeApi::serve_http`] serves the same state over HTTP on 127.0.0.1, for the operator
//! binary, with watches answered from the objects changed since the requested
//! `resourceVersion` (each watch request returns what changed, or nothing after a second, and
//! the client watches again).

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
    calls: Vec<Call>,
    version: u64,
    /// Requests to fail: (method, path) → HTTP status, used once each.
    failures: Vec<(Method, String, u16)>,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code
        }),
    )
}

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

fn labels_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v) = term.split_once('=').unwrap_or((term, ""));
        object["metadata"]["labels"][k].as_str() == Some(v)
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
                .replace("%2F", "/")
                .replace('+', " ")
        })
    })
}

impl FakeApi {
    /// A new server and a client whose requests it answers.
    pub fn start() -> (Self, Client) {
        let api = Self::default();
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = api.clone();
        tokio::spawn(async move {
            let mut handle = pin!(handle);
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
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

    fn handle(&self, parts: &http::request::Parts, bytes: &[u8]) -> (u16, Value) {
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
        match parts.method {
            Method::GET => Self::get(&state, &path, &query),
            Method::POST => {
                let mut object = body.expect("POST has a body");
                let name = object["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let key = format!("{path}/{name}");
                if state.objects.contains_key(&key) {
                    return status(409, "AlreadyExists", &format!("{name} already exists"));
                }
                Self::stamp(&mut state, &mut object);
                state.objects.insert(key, object.clone());
                (201, object)
            }
            Method::PUT => {
                let mut object = body.expect("PUT has a body");
                let Some(stored) = state.objects.get(&path) else {
                    return status(404, "NotFound", &format!("{path} not found"));
                };
                if object["metadata"]["resourceVersion"] != stored["metadata"]["resourceVersion"] {
                    return status(409, "Conflict", "the object has been modified");
                }
                Self::stamp(&mut state, &mut object);
                state.objects.insert(path, object.clone());
                (200, object)
            }
            Method::PATCH => {
                let patch = body.expect("PATCH has a body");
                let apply = content_type
                    .as_deref()
                    .is_some_and(|c| c.starts_with("application/apply-patch"));
                let (key, subresource) = match path.strip_suffix("/status") {
                    Some(object) => (object.to_string(), true),
                    None => (path.clone(), false),
                };
                let mut object = match state.objects.get(&key) {
                    Some(o) => o.clone(),
                    None if apply && !subresource => {
                        let mut created = patch.clone();
                        Self::stamp(&mut state, &mut created);
                        state.objects.insert(key, created.clone());
                        return (201, created);
                    }
                    None => return status(404, "NotFound", &format!("{key} not found")),
                };
                if subresource {
                    // The operator applies its whole status: it owns every field of it.
                    object["status"] = patch["status"].clone();
                } else {
                    merge(&mut object, &patch);
                }
                Self::stamp(&mut state, &mut object);
                state.objects.insert(key, object.clone());
                (200, object)
            }
            _ => status(405, "MethodNotAllowed", "not supported by the fake"),
        }
    }

    fn get(state: &State, path: &str, query: &str) -> (u16, Value) {
        if let Some(object) = state.objects.get(path) {
            return (200, object.clone());
        }
        // A collection: the objects directly under it (in every namespace for a cluster-wide
        // path).
        let selector = query_param(query, "labelSelector").unwrap_or_default();
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

    fn stamp(state: &mut State, object: &mut Value) {
        state.version += 1;
        let meta = &mut object["metadata"];
        meta["resourceVersion"] = json!(state.version.to_string());
        if meta["uid"].is_null() {
            meta["uid"] = json!(format!("uid-{}", state.version));
        }
        if meta["creationTimestamp"].is_null() {
            meta["creationTimestamp"] = json!("2026-11-25T10:00:00Z");
        }
        if meta["generation"].is_null() {
            meta["generation"] = json!(1);
        }
    }

    /// Stores `object` at `path` (as Kubernetes' controllers would), stamping its metadata.
    pub fn put(&self, path: &str, mut object: Value) -> Value {
        let mut state = self.lock();
        Self::stamp(&mut state, &mut object);
        state.objects.insert(path.to_string(), object.clone());
        object
    }

    /// Applies a JSON merge patch to the object at `path`.
    pub fn edit(&self, path: &str, patch: Value) -> Value {
        let mut state = self.lock();
        let mut object = state
            .objects
            .get(path)
            .cloned()
            .unwrap_or_else(|| panic!("{path} does not exist"));
        merge(&mut object, &patch);
        Self::stamp(&mut state, &mut object);
        state.objects.insert(path.to_string(), object.clone());
        object
    }

    /// Removes the object at `path`.
    pub fn remove(&self, path: &str) -> Option<Value> {
        self.lock().objects.remove(path)
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

    /// Objects of the collection at `path` changed after resource version `since`, as watch
    /// events (one JSON object per line).
    fn watch_events(&self, path: &str, query: &str, since: u64) -> String {
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let state = self.lock();
        let mut out = String::new();
        for (key, object) in &state.objects {
            let version: u64 = object["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if version > since && in_collection(key, path) && labels_match(object, &selector) {
                out.push_str(&json!({"type": "MODIFIED", "object": object}).to_string());
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
