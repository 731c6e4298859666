//! A pod's sandbox and its containers' processes on this machine.
//!
//! - **Network:** each pod gets a network namespace of its own (`pomona-pod-<n>`), joined to the
//!   node's bridge by a veth pair, with its own address in the pod range: two replicas can both
//!   listen on port 8080, as on a real node. The node (and every service the pods reach: the API
//!   server, S3) answers on the bridge's address.
//! - **Filesystem:** a container sees the host's filesystem, except that in its own mount
//!   namespace its volumes are bind-mounted at their mount paths, and `/dev` is a folder of its
//!   own holding the usual devices and its termination-message file, as a container runtime
//!   lays it out. The kubelet reads that file after the process ends.
//! - **Identity:** the process runs as the pod's `runAsUser`/`runAsGroup` (else the image's
//!   `USER`), with its `fsGroup` and supplementary groups, no new privileges and no
//!   capabilities (`setpriv`).
//!
//! Every step is an `ip`, `mount` or `setpriv` command of the machine: the kubelet runs as root.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use tokio::process::{Child, Command};

const IP: &str = "/usr/sbin/ip";
const SH: &str = "/bin/sh";
const MOUNT: &str = "/usr/bin/mount";
const SETPRIV: &str = "/usr/bin/setpriv";
const ENV: &str = "/usr/bin/env";
/// The only environment of the root-run commands that set a container up.
const SETUP_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";
/// The devices a container's `/dev` holds, bound from the host's.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// The node's pod network: a bridge and a /16 of addresses.
#[derive(Clone, Debug)]
pub struct Network {
    /// The bridge the pods' veths join (made by `scripts/local-cluster.sh`).
    pub bridge: String,
    /// First two octets of the range (`[10, 244]`); the bridge has `.0.1`.
    pub prefix: [u8; 2],
}

/// A pod's network namespace and address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    /// The slot it was made from ([`Network::create`]).
    pub slot: u16,
    /// The namespace's name.
    pub netns: String,
    /// The pod's address.
    pub ip: String,
}

/// The name of slot `slot`'s namespace.
pub fn netns_name(slot: u16) -> String {
    format!("pomona-pod-{slot}")
}

impl Network {
    /// The bridge's address: where the node, and the services pods use, answer.
    pub fn gateway(&self) -> String {
        format!("{}.{}.0.1", self.prefix[0], self.prefix[1])
    }

    /// The address of slot `slot` (slots start at 1: `.0.2`, `.0.3`, …).
    pub fn address(&self, slot: u16) -> String {
        let host = u32::from(slot) + 1;
        format!(
            "{}.{}.{}.{}",
            self.prefix[0],
            self.prefix[1],
            host / 256,
            host % 256
        )
    }

    /// The slot of a pod address of this network, if it is one.
    pub fn slot_of(&self, ip: &str) -> Option<u16> {
        let octets: Vec<u8> = ip
            .split('.')
            .map(|o| o.parse().ok())
            .collect::<Option<_>>()?;
        match octets[..] {
            [a, b, c, d] if [a, b] == self.prefix => {
                let slot = (u32::from(c) * 256 + u32::from(d)).checked_sub(1)?;
                u16::try_from(slot).ok().filter(|s| *s > 0)
            }
            _ => None,
        }
    }

    /// Makes slot `slot`'s namespace: loopback up, `eth0` on the bridge, a default route
    /// through the node. A namespace left over from an earlier kubelet is removed first, with
    /// whatever still runs in it.
    pub async fn create(&self, slot: u16) -> Result<PodNetwork> {
        let netns = netns_name(slot);
        let ip = self.address(slot);
        let veth = format!("pmv{slot}");
        remove_netns(&netns).await;
        let _ = run(IP, &["link", "del", &veth]).await;
        let gateway = self.gateway();
        let cidr = format!("{ip}/16");
        let steps: [&[&str]; 7] = [
            &["netns", "add", &netns],
            &[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
            &["link", "set", &veth, "master", &self.bridge, "up"],
            &["-n", &netns, "link", "set", "lo", "up"],
            &["-n", &netns, "addr", "add", &cidr, "dev", "eth0"],
            &["-n", &netns, "link", "set", "eth0", "up"],
            &["-n", &netns, "route", "add", "default", "via", &gateway],
        ];
        for step in steps {
            if let Err(e) = run(IP, step).await {
                let _ = run(IP, &["netns", "del", &netns]).await;
                return Err(e.context(format!("pod network {netns}")));
            }
        }
        Ok(PodNetwork { slot, netns, ip })
    }

    /// Removes a pod's namespace, with any process left in it (its veth pair goes with it).
    pub async fn delete(&self, net: &PodNetwork) {
        remove_netns(&net.netns).await;
    }

    /// Removes every pod namespace an earlier kubelet left (it was killed), with the processes
    /// still in them: at start, no pod runs on the node.
    pub async fn sweep(&self) {
        let Ok(out) = Command::new(IP).args(["netns", "list"]).output().await else {
            return;
        };
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line
                .split_whitespace()
                .next()
                .filter(|n| n.starts_with("pomona-pod-"))
            {
                tracing::info!("removing {name}, left by an earlier run of the kubelet");
                remove_netns(name).await;
            }
        }
    }
}

/// Kills every process in network namespace `netns`, then removes it (absent: nothing to do).
async fn remove_netns(netns: &str) {
    let Ok(out) = Command::new(IP)
        .args(["netns", "pids", netns])
        .output()
        .await
    else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<u32>() {
            signal(pid, rustix::process::Signal::KILL);
            if let Some(p) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
    if out.status.success()
        && let Err(e) = run(IP, &["netns", "del", netns]).await
    {
        tracing::warn!("remove {netns}: {e:#}");
    }
}

/// Runs `program args` and fails with its stderr when it exits non-zero.
async fn run(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .with_context(|| format!("run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A volume as a container mounts it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The folder (or file) on the host.
    pub host: PathBuf,
    /// Where the container sees it.
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to start one container's process.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The pod's network namespace.
    pub netns: String,
    /// The host file that runs, and its arguments.
    pub program: PathBuf,
    /// See `program`.
    pub args: Vec<String>,
    /// The whole environment (nothing of the kubelet's leaks in).
    pub env: Vec<(String, String)>,
    /// User, group and supplementary groups.
    pub uid: i64,
    /// See `uid`.
    pub gid: i64,
    /// See `uid`.
    pub groups: Vec<i64>,
    /// The working folder inside the container.
    pub working_dir: String,
    /// The volumes.
    pub mounts: Vec<Mount>,
    /// The container's `/dev` folder on the host ([`prepare_dev`]).
    pub dev: PathBuf,
    /// The termination-message path inside the container.
    pub termination_path: String,
    /// stdout and stderr go here.
    pub log: PathBuf,
}

/// Lays out a container's `/dev` under `dir` (mount points for the devices, `shm`, the standard
/// links) and its termination-message file, owned by `uid`; returns the file's host path.
pub fn prepare_dev(dir: &Path, termination_path: &str, uid: i64, gid: i64) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("shm"))?;
    for device in DEVICES {
        std::fs::File::create(dir.join(device))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let at = dir.join(link);
        if std::fs::symlink_metadata(&at).is_err() {
            std::os::unix::fs::symlink(target, at)?;
        }
    }
    let file = match termination_path.strip_prefix("/dev/") {
        Some(rest) => dir.join(rest),
        None => dir.join(".termination-log"),
    };
    if let Some(parent) = file.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&file, b"")?;
    std::os::unix::fs::chown(&file, Some(uid as u32), Some(gid as u32))?;
    Ok(file)
}

/// Single-quotes `s` for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sh` script that sets up the container's mount namespace and `exec`s its process
/// ("$@") under its identity. Pure, so the layout can be read and tested.
pub fn script(l: &Launch) -> String {
    let dev = quote(&l.dev.display().to_string());
    let mut s = String::from("set -e\n");
    for device in DEVICES {
        s += &format!("{MOUNT} --bind /dev/{device} {dev}/{device}\n");
    }
    s += &format!("{MOUNT} -t tmpfs -o nosuid,nodev,mode=1777 shm {dev}/shm\n");
    s += &format!("{MOUNT} --rbind {dev} /dev\n");
    if !l.termination_path.starts_with("/dev/") {
        let at = quote(&l.termination_path);
        let file = quote(&l.dev.join(".termination-log").display().to_string());
        s += &format!("mkdir -p \"$(dirname {at})\"; [ -e {at} ] || : > {at}\n");
        s += &format!("{MOUNT} --bind {file} {at}\n");
    }
    for m in &l.mounts {
        let host = quote(&m.host.display().to_string());
        let at = quote(&m.path);
        if m.host.is_dir() {
            s += &format!("mkdir -p {at}\n");
        } else {
            s += &format!("mkdir -p \"$(dirname {at})\"; [ -e {at} ] || : > {at}\n");
        }
        s += &format!("{MOUNT} --bind {host} {at}\n");
        if m.read_only {
            s += &format!("{MOUNT} -o remount,bind,ro {at}\n");
        }
    }
    s += &format!("cd {}\n", quote(&l.working_dir));
    let groups: Vec<String> = l.groups.iter().map(i64::to_string).collect();
    // The container's environment reaches only its own process ("$@" is NAME=VALUE…, then
    // the program and its arguments): the commands above run as root with a fixed PATH and
    // nothing else (a pod's LD_PRELOAD must not run as root on the host). The assignments are
    // in the arguments of `sh` and `setpriv` for the moment of this set-up, then only in the
    // container's own environment.
    s += &format!(
        "exec {SETPRIV} --reuid={} --regid={} --groups={} --no-new-privs --inh-caps=-all \
         --bounding-set=-all -- {ENV} -i -- \"$@\"\n",
        l.uid,
        l.gid,
        groups.join(",")
    );
    s
}

/// Starts a container's process in its pod's namespaces. The child's pid is the container's
/// process itself (`ip netns exec`, `sh` and `setpriv` each `exec` the next), and it leads a
/// process group of its own, which [`signal`] addresses.
pub fn start(l: &Launch) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&l.log)
        .with_context(|| format!("open {}", l.log.display()))?;
    let mut cmd = Command::new(IP);
    cmd.args(["netns", "exec", &l.netns, SH, "-c", &script(l), "sh"])
        .args(l.env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(&l.program)
        .args(&l.args)
        .env_clear()
        .env("PATH", SETUP_PATH)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0);
    cmd.spawn()
        .with_context(|| format!("start {} in {}", l.program.display(), l.netns))
}

/// Sends `signal` to the process group of `pid` (gone already: nothing to do).
pub fn signal(pid: u32, signal: rustix::process::Signal) {
    let Some(pid) = rustix::process::Pid::from_raw(pid as i32) else {
        return;
    };
    if let Err(e) = rustix::process::kill_process_group(pid, signal)
        && e != rustix::io::Errno::SRCH
    {
        tracing::warn!("signal {signal:?} to process group {pid:?}: {e}");
    }
}

/// The exit code a runtime reports for a process: its own, or 128 + the signal that ended it.
pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names() {
        let net = Network {
            bridge: "pomona0".into(),
            prefix: [10, 244],
        };
        assert_eq!(net.gateway(), "10.244.0.1");
        assert_eq!(net.address(1), "10.244.0.2");
        assert_eq!(net.address(255), "10.244.1.0");
        assert_eq!(net.address(300), "10.244.1.45");
        assert_eq!(netns_name(7), "pomona-pod-7");
    }

    #[test]
    fn the_script_mounts_volumes_and_drops_privileges() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let volume = dir.path().join("scratch");
        std::fs::create_dir(&volume).expect("a volume");
        let l = Launch {
            netns: "pomona-pod-1".into(),
            program: "/bin/true".into(),
            args: vec![],
            env: vec![],
            uid: 65532,
            gid: 65532,
            groups: vec![65532],
            working_dir: "/".into(),
            mounts: vec![Mount {
                host: volume.clone(),
                path: "/scratch".into(),
                read_only: true,
            }],
            dev: dir.path().join("dev"),
            termination_path: "/dev/termination-log".into(),
            log: dir.path().join("log"),
        };
        let s = script(&l);
        assert!(
            s.contains(&format!("--bind '{}' '/scratch'", volume.display())),
            "{s}"
        );
        assert!(s.contains("remount,bind,ro '/scratch'"), "{s}");
        assert!(s.contains("--rbind"), "{s}");
        assert!(
            s.ends_with(
                "--reuid=65532 --regid=65532 --groups=65532 --no-new-privs --inh-caps=-all \
                 --bounding-set=-all -- /usr/bin/env -i -- \"$@\"\n"
            ),
            "{s}"
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
