//! A container's configuration, resolved for its start as a kubelet resolves it: the image, the
//! command, the environment (with the Secrets and ConfigMaps it names, read from the API), the
//! user and groups, and the volume mounts. What cannot be resolved says why the container waits
//! (`ErrImagePull`, `CreateContainerConfigError`) or cannot run at all (`StartError`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};

use super::Kubelet;
use super::env::{self, PodFacts, Sources};
use super::images::{Exec, StartError};
use super::sandbox::Mount;
use super::volumes;

/// Why a container did not start.
pub enum Failure {
    /// It waits and is retried: (reason, message).
    Waiting(String, String),
    /// It could not run at all (exit code 128).
    Start(String),
}

impl Failure {
    /// `CreateContainerConfigError`: something the container refers to is missing or wrong.
    pub fn config(message: String) -> Self {
        Failure::Waiting("CreateContainerConfigError".into(), message)
    }
}

impl From<StartError> for Failure {
    fn from(e: StartError) -> Self {
        match e {
            StartError::ImagePull(m) => Failure::Waiting("ErrImagePull".into(), m),
            StartError::NotFound(m) => Failure::Start(m),
        }
    }
}

/// What a container starts with.
pub struct Config {
    /// The host program and its arguments.
    pub exec: Exec,
    /// The whole environment.
    pub env: Vec<(String, String)>,
    /// User, group and supplementary groups.
    pub uid: i64,
    /// See `uid`.
    pub gid: i64,
    /// See `uid`.
    pub groups: Vec<i64>,
    /// The volumes as it mounts them.
    pub mounts: Vec<Mount>,
    /// Its working folder.
    pub working_dir: String,
}

/// The configuration of container `c` of `pod`, whose address is `pod_ip` and whose volumes
/// are at `volumes` (name → host path).
pub async fn resolve(
    k: &Kubelet,
    pod: &Pod,
    c: &Container,
    pod_ip: &str,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Config, Failure> {
    let spec = pod.spec.clone().unwrap_or_default();
    let image_ref = c.image.clone().unwrap_or_default();
    let image = k.images.get(&image_ref).map_err(Failure::from)?.clone();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let (secret_names, config_map_names) = env::references(c);
    let mut sources = Sources::default();
    for name in secret_names {
        let data = volumes::secret(&k.client, &ns, &name, true)
            .await
            .map_err(|e| Failure::config(format!("{e:#}")))?;
        if !data.is_empty() {
            sources.secrets.insert(name, data);
        }
    }
    for name in config_map_names {
        let data = volumes::config_map(&k.client, &ns, &name, true)
            .await
            .map_err(|e| Failure::config(format!("{e:#}")))?;
        if !data.is_empty() {
            sources.config_maps.insert(name, data);
        }
    }
    let facts = PodFacts {
        pod_ip: pod_ip.to_string(),
        host_ip: k.network.gateway(),
        api_host: k.api_host.clone(),
        api_port: k.api_port,
        node_cpu_millis: k.cpu_millis,
        node_memory_bytes: k.memory_bytes,
    };
    let environment =
        env::resolve(pod, c, &image.env, &sources, &facts).map_err(Failure::config)?;
    let defined: BTreeMap<String, String> = environment.iter().cloned().collect();
    let expand = |v: &Option<Vec<String>>| -> Vec<String> {
        v.iter()
            .flatten()
            .map(|s| env::expand(s, &defined))
            .collect()
    };
    let exec = image
        .exec(&expand(&c.command), &expand(&c.args))
        .map_err(Failure::from)?;

    let (image_uid, image_gid) = image.user().map_err(Failure::config)?;
    let pod_sc = spec.security_context.clone().unwrap_or_default();
    let sc = c.security_context.clone().unwrap_or_default();
    let uid = sc.run_as_user.or(pod_sc.run_as_user).unwrap_or(image_uid);
    let gid = sc.run_as_group.or(pod_sc.run_as_group).unwrap_or(image_gid);
    if sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true) && uid == 0 {
        return Err(Failure::config(
            "container has runAsNonRoot and image will run as root".into(),
        ));
    }
    let mut groups = vec![gid];
    groups.extend(pod_sc.fs_group);
    groups.extend(pod_sc.supplemental_groups.iter().flatten().copied());
    groups.sort_unstable();
    groups.dedup();

    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let host = volumes.get(&m.name).ok_or_else(|| {
            Failure::config(format!("volume {:?} is not defined in the pod", m.name))
        })?;
        let host = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
            Some(sub) => host.join(sub),
            None => host.clone(),
        };
        mounts.push(Mount {
            host,
            path: m.mount_path.clone(),
            read_only: m.read_only == Some(true),
        });
    }
    Ok(Config {
        exec,
        env: environment,
        uid,
        gid,
        groups,
        mounts,
        working_dir: c
            .working_dir
            .clone()
            .or(image.working_dir.clone())
            .unwrap_or_else(|| "/".into()),
    })
}
