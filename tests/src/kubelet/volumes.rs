//! A pod's volumes on the host, under its folder: `emptyDir` as an empty folder, `secret`,
//! `configMap` and `projected` (service-account token from the TokenRequest API, bound to the
//! pod; ConfigMap and Secret keys; the downward API's namespace and labels) as files written
//! once at start, owned by the pod's `fsGroup`. Other volume kinds are refused with the reason.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, KeyToPath, Pod, Secret, ServiceAccount, Volume};
use kube::Client;
use kube::api::{Api, PostParams};

/// Makes every volume of `pod` under `dir`; returns volume name → host path.
pub async fn prepare(
    client: &Client,
    pod: &Pod,
    dir: &Path,
    fs_group: Option<i64>,
) -> Result<BTreeMap<String, PathBuf>> {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let mut made = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let at = dir.join("volumes").join(&volume.name);
        std::fs::create_dir_all(&at).with_context(|| format!("make {}", at.display()))?;
        fill(client, pod, &ns, volume, &at)
            .await
            .with_context(|| format!("volume {:?}", volume.name))?;
        own(&at, fs_group, volume.empty_dir.is_some())?;
        made.insert(volume.name.clone(), at);
    }
    Ok(made)
}

/// Writes the content of one volume into `at`.
async fn fill(client: &Client, pod: &Pod, ns: &str, v: &Volume, at: &Path) -> Result<()> {
    if v.empty_dir.is_some() {
        return Ok(());
    }
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = secret(client, ns, &name, s.optional == Some(true)).await?;
        return write_keys(at, &data, s.items.as_deref(), &format!("secret {name}"));
    }
    if let Some(c) = &v.config_map {
        let data = config_map(client, ns, &c.name, c.optional == Some(true)).await?;
        return write_keys(
            at,
            &data,
            c.items.as_deref(),
            &format!("configmap {}", c.name),
        );
    }
    if let Some(p) = &v.projected {
        for source in p.sources.iter().flatten() {
            if let Some(t) = &source.service_account_token {
                let token = token(client, pod, t.audience.clone(), t.expiration_seconds).await?;
                std::fs::write(at.join(&t.path), token)?;
            }
            if let Some(c) = &source.config_map {
                let data = config_map(client, ns, &c.name, c.optional == Some(true)).await?;
                write_keys(
                    at,
                    &data,
                    c.items.as_deref(),
                    &format!("configmap {}", c.name),
                )?;
            }
            if let Some(s) = &source.secret {
                let data = secret(client, ns, &s.name, s.optional == Some(true)).await?;
                write_keys(at, &data, s.items.as_deref(), &format!("secret {}", s.name))?;
            }
            if let Some(d) = &source.downward_api {
                for item in d.items.iter().flatten() {
                    let Some(f) = &item.field_ref else {
                        bail!("downwardAPI item {}: only fieldRef is supported", item.path);
                    };
                    let meta = &pod.metadata;
                    let value = match f.field_path.as_str() {
                        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
                        "metadata.name" => meta.name.clone().unwrap_or_default(),
                        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
                        "metadata.labels" => lines(meta.labels.as_ref()),
                        "metadata.annotations" => lines(meta.annotations.as_ref()),
                        other => bail!("downwardAPI fieldRef {other:?} is not supported"),
                    };
                    std::fs::write(at.join(&item.path), value)?;
                }
            }
            if source.cluster_trust_bundle.is_some() {
                bail!("projected clusterTrustBundle volumes are not supported");
            }
        }
        return Ok(());
    }
    Err(anyhow!(
        "the local kubelet supports emptyDir, secret, configMap and projected volumes only"
    ))
}

/// `key="value"` lines, as the downward API writes labels and annotations.
fn lines(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v:?}\n"))
        .collect()
}

/// A token of the pod's service account, bound to the pod (what a kubelet asks the
/// TokenRequest API for a projected `serviceAccountToken`).
async fn token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let sa = spec
        .service_account_name
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: audience.into_iter().collect(),
            expiration_seconds: Some(expiration.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        },
        ..TokenRequest::default()
    };
    let issued = Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .with_context(|| format!("a token for service account {ns}/{sa}"))?;
    issued
        .status
        .map(|s| s.token)
        .ok_or_else(|| anyhow!("the TokenRequest for {ns}/{sa} returned no token"))
}

/// A Secret's data (empty when absent and optional).
pub async fn secret(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, String>> {
    let found = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .with_context(|| format!("read secret {ns}/{name}"))?;
    match found {
        Some(s) => {
            let mut data: BTreeMap<String, String> = s.string_data.unwrap_or_default();
            for (k, v) in s.data.unwrap_or_default() {
                data.insert(k, String::from_utf8_lossy(&v.0).into_owned());
            }
            Ok(data)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("secret \"{name}\" not found"),
    }
}

/// A ConfigMap's data (empty when absent and optional).
pub async fn config_map(
    client: &Client,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, String>> {
    let found = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .with_context(|| format!("read configmap {ns}/{name}"))?;
    match found {
        Some(c) => Ok(c.data.unwrap_or_default()),
        None if optional => Ok(BTreeMap::new()),
        None => bail!("configmap \"{name}\" not found"),
    }
}

/// Writes `data` (or the `items` of it) as files under `at`.
fn write_keys(
    at: &Path,
    data: &BTreeMap<String, String>,
    items: Option<&[KeyToPath]>,
    what: &str,
) -> Result<()> {
    let pairs: Vec<(String, String)> = match items {
        None => data.keys().map(|k| (k.clone(), k.clone())).collect(),
        Some(items) => items
            .iter()
            .map(|i| (i.key.clone(), i.path.clone()))
            .collect(),
    };
    for (key, path) in pairs {
        let value = data
            .get(&key)
            .ok_or_else(|| anyhow!("{what} has no key {key:?}"))?;
        let file = at.join(&path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, value)?;
    }
    Ok(())
}

/// Gives a volume to the pod's `fsGroup` (files group-readable, folders group-writable);
/// an `emptyDir` is writable by all, as Kubernetes makes it.
fn own(at: &Path, fs_group: Option<i64>, empty_dir: bool) -> Result<()> {
    let mode = if empty_dir { 0o777 } else { 0o755 };
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(mode))?;
    let Some(group) = fs_group else {
        return Ok(());
    };
    let mut stack = vec![at.to_path_buf()];
    while let Some(path) = stack.pop() {
        std::os::unix::fs::chown(&path, None, Some(group as u32))?;
        if path.is_dir() {
            for entry in std::fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        } else {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640))?;
        }
    }
    Ok(())
}
