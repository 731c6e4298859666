//! A container's environment, resolved as a kubelet resolves it: the image's `ENV`, then the
//! API server's address (`KUBERNETES_SERVICE_*`), then `envFrom`, then `env` in order, with
//! `$(NAME)` references, the downward API (`fieldRef`, `resourceFieldRef`) and keys of Secrets
//! and ConfigMaps. Pure: the Secrets and ConfigMaps are read beforehand ([`references`]).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod};

use super::quantity;

/// Secrets and ConfigMaps of the pod's namespace, by name then key, as the kubelet read them.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// Secret name → key → value.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// ConfigMap name → key → value.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
}

/// What the kubelet knows of the pod beyond its object.
#[derive(Clone, Debug)]
pub struct PodFacts {
    /// The pod's address.
    pub pod_ip: String,
    /// The node's address.
    pub host_ip: String,
    /// `KUBERNETES_SERVICE_HOST` and `_PORT`: where the API server answers pods.
    pub api_host: String,
    /// See `api_host`.
    pub api_port: u16,
    /// Millicores and bytes the node can give, for `resourceFieldRef` of an unset limit.
    pub node_cpu_millis: u64,
    /// See `node_cpu_millis`.
    pub node_memory_bytes: u64,
}

/// The names of the Secrets and ConfigMaps a container's environment refers to.
pub fn references(c: &Container) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut secrets = BTreeSet::new();
    let mut config_maps = BTreeSet::new();
    for from in c.env_from.iter().flatten() {
        if let Some(s) = &from.secret_ref {
            secrets.insert(s.name.clone());
        }
        if let Some(m) = &from.config_map_ref {
            config_maps.insert(m.name.clone());
        }
    }
    for source in c.env.iter().flatten().filter_map(|e| e.value_from.as_ref()) {
        if let Some(s) = &source.secret_key_ref {
            secrets.insert(s.name.clone());
        }
        if let Some(m) = &source.config_map_key_ref {
            config_maps.insert(m.name.clone());
        }
    }
    (secrets, config_maps)
}

/// The environment of container `c` of `pod`, or the reason it cannot be made (the kubelet's
/// `CreateContainerConfigError`).
pub fn resolve(
    pod: &Pod,
    c: &Container,
    image_env: &BTreeMap<String, String>,
    sources: &Sources,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, String> {
    // What `$(NAME)` may refer to: the variables the pod defines, not the image's.
    let mut defined: BTreeMap<String, String> = BTreeMap::new();
    defined.insert("KUBERNETES_SERVICE_HOST".into(), facts.api_host.clone());
    defined.insert("KUBERNETES_SERVICE_PORT".into(), facts.api_port.to_string());
    defined.insert(
        "KUBERNETES_SERVICE_PORT_HTTPS".into(),
        facts.api_port.to_string(),
    );
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let (kind, name, optional, data) = match (&from.secret_ref, &from.config_map_ref) {
            (Some(s), _) => ("secret", &s.name, s.optional, sources.secrets.get(&s.name)),
            (_, Some(m)) => (
                "configmap",
                &m.name,
                m.optional,
                sources.config_maps.get(&m.name),
            ),
            _ => continue,
        };
        match data {
            Some(data) => {
                for (k, v) in data {
                    defined.insert(format!("{prefix}{k}"), v.clone());
                }
            }
            None if optional == Some(true) => {}
            None => return Err(format!("{kind} \"{name}\" not found")),
        }
    }
    let mut order: Vec<String> = defined.keys().cloned().collect();
    for var in c.env.iter().flatten() {
        let value = match &var.value_from {
            None => expand(var.value.as_deref().unwrap_or(""), &defined),
            Some(source) => {
                if let Some(f) = &source.field_ref {
                    field(pod, &f.field_path, facts)?
                } else if let Some(r) = &source.resource_field_ref {
                    resource(pod, c, r, facts)?
                } else if let Some(s) = &source.secret_key_ref {
                    let optional = s.optional == Some(true);
                    match key(&sources.secrets, "secret", &s.name, &s.key, optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else if let Some(m) = &source.config_map_key_ref {
                    let optional = m.optional == Some(true);
                    match key(&sources.config_maps, "configmap", &m.name, &m.key, optional)? {
                        Some(v) => v,
                        None => continue,
                    }
                } else {
                    return Err(format!("env {}: an empty valueFrom", var.name));
                }
            }
        };
        if !defined.contains_key(&var.name) {
            order.push(var.name.clone());
        }
        defined.insert(var.name.clone(), value);
    }
    let mut env: Vec<(String, String)> = image_env
        .iter()
        .filter(|(k, _)| !defined.contains_key(*k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    env.extend(order.into_iter().map(|k| {
        let v = defined[&k].clone();
        (k, v)
    }));
    Ok(env)
}

/// A key of a Secret or ConfigMap: `Ok(None)` when absent and `optional`, else an error naming
/// what is missing, in the kubelet's words.
fn key(
    all: &BTreeMap<String, BTreeMap<String, String>>,
    kind: &str,
    name: &str,
    key: &str,
    optional: bool,
) -> Result<Option<String>, String> {
    match all.get(name).map(|data| data.get(key)) {
        Some(Some(value)) => Ok(Some(value.clone())),
        _ if optional => Ok(None),
        None => Err(format!("{kind} \"{name}\" not found")),
        Some(None) => Err(format!("couldn't find key {key} in {kind} \"{name}\"")),
    }
}

/// The downward API's `fieldRef` paths.
fn field(pod: &Pod, path: &str, facts: &PodFacts) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.clone().unwrap_or_default();
    let in_map = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let k = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(
            map.as_ref()
                .and_then(|m| m.get(k))
                .cloned()
                .unwrap_or_default(),
        )
    };
    let value = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => {
            return in_map(&meta.labels, "metadata.labels['")
                .or_else(|| in_map(&meta.annotations, "metadata.annotations['"))
                .ok_or_else(|| format!("unsupported fieldRef path {path:?}"));
        }
    };
    Ok(value)
}

/// The downward API's `resourceFieldRef`: a request or limit of a container, in whole units of
/// its divisor (rounded up); an unset limit is the node's allocatable.
fn resource(
    pod: &Pod,
    own: &Container,
    r: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    facts: &PodFacts,
) -> Result<String, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let c = match r.container_name.as_deref() {
        Some(name) => spec
            .containers
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| format!("resourceFieldRef: no container {name:?}"))?,
        None => own,
    };
    let resources = c.resources.clone().unwrap_or_default();
    let (which, kind) = r
        .resource
        .split_once('.')
        .ok_or_else(|| format!("unsupported resource {:?}", r.resource))?;
    let list = match which {
        "limits" => resources.limits,
        "requests" => resources.requests.or(resources.limits),
        _ => return Err(format!("unsupported resource {:?}", r.resource)),
    };
    let set = list.and_then(|l| l.get(kind).map(|q| q.0.clone()));
    let is_cpu = kind == "cpu";
    let value = match (set, is_cpu) {
        (Some(q), true) => quantity::millicores(&q),
        (Some(q), false) => quantity::units(&q),
        (None, true) => Some(facts.node_cpu_millis),
        (None, false) => Some(facts.node_memory_bytes),
    }
    .ok_or_else(|| format!("resourceFieldRef {}: a malformed quantity", r.resource))?;
    let divisor = match (r.divisor.as_ref().map(|d| d.0.as_str()), is_cpu) {
        (None, true) => 1000,
        (None, false) => 1,
        (Some(d), true) => quantity::millicores(d).unwrap_or(1000),
        (Some(d), false) => quantity::units(d).unwrap_or(1),
    }
    .max(1);
    Ok(value.div_ceil(divisor).to_string())
}

/// Kubernetes' `$(NAME)` expansion: a defined name is replaced, an undefined one is left as
/// written, and `$$` stands for a literal `$`.
pub fn expand(input: &str, defined: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(open) = after.strip_prefix('(')
            && let Some(close) = open.find(')')
        {
            let name = &open[..close];
            match defined.get(name) {
                Some(v) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &open[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> PodFacts {
        PodFacts {
            pod_ip: "10.244.0.7".into(),
            host_ip: "10.244.0.1".into(),
            api_host: "10.244.0.1".into(),
            api_port: 6443,
            node_cpu_millis: 2000,
            node_memory_bytes: 1 << 30,
        }
    }

    fn pod() -> (Pod, Container) {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p-0", "namespace": "ns", "uid": "u1",
                          "labels": { "batch.kubernetes.io/job-completion-index": "4" } },
            "spec": { "nodeName": "n", "serviceAccountName": "runner", "containers": [{
                "name": "c",
                "resources": { "limits": { "cpu": "1500m", "memory": "1Gi" } },
                "env": [
                    { "name": "A", "value": "a" },
                    { "name": "B", "value": "$(A)-$(NOPE)-$$(A)" },
                    { "name": "INDEX", "valueFrom": { "fieldRef": {
                        "fieldPath": "metadata.labels['batch.kubernetes.io/job-completion-index']" } } },
                    { "name": "IP", "valueFrom": { "fieldRef": { "fieldPath": "status.podIP" } } },
                    { "name": "KEY", "valueFrom": { "secretKeyRef": { "name": "s3", "key": "id" } } },
                    { "name": "OPT", "valueFrom": { "configMapKeyRef": {
                        "name": "cm", "key": "missing", "optional": true } } },
                    { "name": "CPUS", "valueFrom": { "resourceFieldRef": { "resource": "limits.cpu" } } },
                    { "name": "MEM", "valueFrom": { "resourceFieldRef": {
                        "resource": "limits.memory", "divisor": "1Mi" } } },
                    { "name": "PATH", "value": "/bin" }
                ]
            }]}
        }))
        .expect("a pod");
        let c = pod.spec.as_ref().expect("a spec").containers[0].clone();
        (pod, c)
    }

    #[test]
    fn the_environment_as_a_kubelet_makes_it() {
        let (pod, c) = pod();
        assert_eq!(references(&c).0, BTreeSet::from(["s3".to_string()]));
        let sources = Sources {
            secrets: BTreeMap::from([("s3".into(), BTreeMap::from([("id".into(), "AK".into())]))]),
            config_maps: BTreeMap::from([("cm".into(), BTreeMap::new())]),
        };
        let image_env = BTreeMap::from([
            ("PATH".to_string(), "/usr/bin".to_string()),
            ("ORT".to_string(), "/lib/ort.so".to_string()),
        ]);
        let env: BTreeMap<String, String> = resolve(&pod, &c, &image_env, &sources, &facts())
            .expect("resolves")
            .into_iter()
            .collect();
        assert_eq!(env["B"], "a-$(NOPE)-$(A)");
        assert_eq!(env["INDEX"], "4");
        assert_eq!(env["IP"], "10.244.0.7");
        assert_eq!(env["KEY"], "AK");
        assert!(
            !env.contains_key("OPT"),
            "an optional missing key is left out"
        );
        assert_eq!(env["CPUS"], "2", "1500m rounds up to 2 cores");
        assert_eq!(env["MEM"], "1024");
        assert_eq!(env["PATH"], "/bin", "the pod's env wins over the image's");
        assert_eq!(env["ORT"], "/lib/ort.so");
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.244.0.1");

        let missing = resolve(&pod, &c, &image_env, &Sources::default(), &facts());
        assert_eq!(missing, Err("secret \"s3\" not found".into()));
        let no_key = Sources {
            secrets: BTreeMap::from([("s3".into(), BTreeMap::new())]),
            ..Sources::default()
        };
        let err = resolve(&pod, &c, &image_env, &no_key, &facts()).expect_err("no key id");
        assert!(err.contains("couldn't find key id"), "{err}");
    }
}
