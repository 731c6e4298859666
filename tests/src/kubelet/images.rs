//! The local kubelet's "images": no registry and no container filesystem, only a table that says,
//! for each image repository, what its image config would (entrypoint, command, environment,
//! user) and which host file stands for each executable inside it. A pod whose image is not in
//! the table cannot be pulled, exactly as on a node that cannot reach the image's registry.
//!
//! The table is a JSON file written by `scripts/local-cluster.sh`:
//!
//! ```json
//! { "ghcr.io/pomona-dev/pomona": {
//!     "entrypoint": ["/usr/local/bin/pomona"], "cmd": ["--help"], "user": "65532:65532",
//!     "env": { "PATH": "/usr/local/bin:/usr/bin:/bin", "ORT_DYLIB_PATH": "/…/libonnxruntime.so" },
//!     "files": { "/usr/local/bin/pomona": "/…/target/debug/pomona" } } }
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

/// One image's config, as a Dockerfile would set it, and its executables on the host.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Image {
    /// `ENTRYPOINT`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// `CMD`.
    #[serde(default)]
    pub cmd: Vec<String>,
    /// `ENV` (including `PATH`, searched for a command without a slash).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `USER` as `uid[:gid]` (numeric); root when absent.
    #[serde(default)]
    pub user: Option<String>,
    /// `WORKDIR`; `/` when absent.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Path inside the image → host file that runs in its place.
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
}

/// Every image the node "has", by repository (registry host and path, without tag or digest).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct Images(pub BTreeMap<String, Image>);

/// Why a container cannot start, in the words and codes a kubelet and runc use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The image is not in the table: `ErrImagePull`, and the pod stays Pending.
    ImagePull(String),
    /// The command is not an executable of the image: `StartError`, exit code 128.
    NotFound(String),
}

/// What to execute: the host program (also its argv[0]) and the arguments after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    /// Host file that runs.
    pub program: PathBuf,
    /// argv[1..].
    pub args: Vec<String>,
}

/// The repository of an image reference: `ghcr.io/a/b:1.0@sha256:…` → `ghcr.io/a/b`. A port in
/// the registry host (`localhost:5000/x`) is kept.
pub fn repository(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    match without_digest.rfind(':') {
        Some(colon) if !without_digest[colon..].contains('/') => &without_digest[..colon],
        _ => without_digest,
    }
}

impl Images {
    /// The image of `reference`, or [`StartError::ImagePull`].
    pub fn get(&self, reference: &str) -> Result<&Image, StartError> {
        self.0.get(repository(reference)).ok_or_else(|| {
            StartError::ImagePull(format!(
                "failed to pull image \"{reference}\": not in the local kubelet's image table \
                 (it knows {})",
                self.0.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

impl Image {
    /// The process of a container with this `command` and `args` (already `$(VAR)`-expanded),
    /// by the rules of Kubernetes: `command` replaces the entrypoint and drops the image's `CMD`;
    /// `args` alone replaces `CMD`.
    pub fn exec(&self, command: &[String], args: &[String]) -> Result<Exec, StartError> {
        let mut argv: Vec<String> = if command.is_empty() {
            self.entrypoint.clone()
        } else {
            command.to_vec()
        };
        if !args.is_empty() {
            argv.extend(args.iter().cloned());
        } else if command.is_empty() {
            argv.extend(self.cmd.iter().cloned());
        }
        let Some(first) = argv.first().cloned() else {
            return Err(StartError::NotFound(
                "no command specified: the image has no entrypoint and the container no command"
                    .into(),
            ));
        };
        let program = self.lookup(&first).ok_or_else(|| {
            StartError::NotFound(format!(
                "exec: \"{first}\": executable file not found in $PATH"
            ))
        })?;
        Ok(Exec {
            program: program.clone(),
            args: argv[1..].to_vec(),
        })
    }

    /// The host file of `command`: by its path when it has a slash, else through `PATH`.
    fn lookup(&self, command: &str) -> Option<&PathBuf> {
        if command.contains('/') {
            return self.files.get(command);
        }
        let path = self.env.get("PATH").map(String::as_str).unwrap_or("");
        path.split(':').filter(|d| !d.is_empty()).find_map(|dir| {
            self.files
                .get(&format!("{}/{command}", dir.trim_end_matches('/')))
        })
    }

    /// `(uid, gid)` of the image's `USER`; `(0, 0)` when unset. A non-numeric user is an error.
    pub fn user(&self) -> Result<(i64, i64), String> {
        let Some(user) = self.user.as_deref() else {
            return Ok((0, 0));
        };
        let mut parts = user.splitn(2, ':');
        let uid = parts.next().unwrap_or_default();
        let parse = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| format!("image USER {user:?} is not numeric"))
        };
        let uid = parse(uid)?;
        let gid = parts.next().map(parse).transpose()?.unwrap_or(uid);
        Ok((uid, gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runner() -> Image {
        Image {
            entrypoint: vec!["/usr/local/bin/pomona".into()],
            cmd: vec!["--help".into()],
            env: BTreeMap::from([("PATH".into(), "/usr/local/bin:/usr/bin".into())]),
            user: Some("65532:65532".into()),
            working_dir: None,
            files: BTreeMap::from([(
                "/usr/local/bin/pomona".into(),
                PathBuf::from("/host/pomona"),
            )]),
        }
    }

    #[test]
    fn repositories_drop_tags_and_digests_but_keep_ports() {
        assert_eq!(
            repository("ghcr.io/pomona-dev/pomona:0.1.0"),
            "ghcr.io/pomona-dev/pomona"
        );
        assert_eq!(repository("ghcr.io/a/b:1@sha256:abc"), "ghcr.io/a/b");
        assert_eq!(repository("ghcr.io/a/b@sha256:abc"), "ghcr.io/a/b");
        assert_eq!(repository("localhost:5000/x"), "localhost:5000/x");
        assert_eq!(repository("localhost:5000/x:2"), "localhost:5000/x");
    }

    #[test]
    fn command_and_args_follow_kubernetes_rules() {
        let image = runner();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let run = |c: &[&str], a: &[&str]| image.exec(&s(c), &s(a)).map(|e| e.args);
        assert_eq!(run(&[], &[]), Ok(s(&["--help"])));
        assert_eq!(run(&[], &["plan"]), Ok(s(&["plan"])));
        assert_eq!(run(&["pomona"], &[]), Ok(s(&[])), "a command drops CMD");
        assert_eq!(
            run(&["pomona"], &["extract", "-v"]),
            Ok(s(&["extract", "-v"]))
        );
        assert_eq!(
            image.exec(&s(&["pomona"]), &[]).map(|e| e.program),
            Ok(PathBuf::from("/host/pomona"))
        );
        assert!(matches!(run(&["sh"], &[]), Err(StartError::NotFound(m)) if m.contains("\"sh\"")));
        assert!(matches!(
            run(&["/bin/pomona"], &[]),
            Err(StartError::NotFound(_))
        ));
    }

    #[test]
    fn unknown_images_cannot_be_pulled() {
        let images = Images(BTreeMap::from([(
            "ghcr.io/pomona-dev/pomona".into(),
            runner(),
        )]));
        assert!(images.get("ghcr.io/pomona-dev/pomona:1.2.3").is_ok());
        assert!(
            matches!(images.get("busybox:1"), Err(StartError::ImagePull(m)) if m.contains("busybox:1"))
        );
    }

    #[test]
    fn users() {
        assert_eq!(runner().user(), Ok((65532, 65532)));
        assert_eq!(Image::default().user(), Ok((0, 0)));
        let named = Image {
            user: Some("nonroot".into()),
            ..Image::default()
        };
        assert!(named.user().is_err());
        let uid_only = Image {
            user: Some("1000".into()),
            ..Image::default()
        };
        assert_eq!(uid_only.user(), Ok((1000, 1000)));
    }
}
