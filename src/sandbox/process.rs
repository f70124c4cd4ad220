//! The `process` runtime: the server is a child process of the gateway.
//!
//! The child gets a scrubbed environment (the gateway's own variables may hold credentials), its
//! own process group (so that killing it also kills whatever it forked), and is killed when the
//! gateway drops it. It never runs with the gateway's privileges: the gateway starts its own
//! binary as the confinement helper ([`super::confine`]), which switches to the policy's `user`,
//! drops every capability, installs the seccomp filter and builds the private mount and PID
//! namespaces before it `exec`s the server. When the gateway is not root, the helper keeps the
//! gateway's uid inside an unprivileged user namespace (or, where the kernel refuses one, applies
//! only `no_new_privs`, the filter and closed descriptors, and says so).
//!
//! Egress: a server with `egress.allow` rules gets its own network namespace behind the
//! firewall when the gateway runs as root ([`super::process_net`]); its only way out is what
//! the rules allow. When the gateway is not root that cannot be done, and such a server is
//! refused (fail closed) unless the policy sets `[egress] allow_unconfined_process = true`, in
//! which case it runs on the host's network with a loud warning. A server without rules is a
//! plain child process on the host's network (the process runtime is not a sandbox).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock};

use tokio::process::{Child, Command};

use super::confine::{self, BindMount, Confinement};
use super::firewall::Firewall;
use super::leases::Lease;
use super::process_net::{NetPaths, ProcessNets};
use super::{BoxFuture, Instance, Runtime, SandboxError, Spawned};
use crate::egress::netns;
use crate::policy::{Runtime as RuntimeSpec, Server};

/// Variables passed through from the gateway's environment: what interpreters need to run, and
/// nothing that could carry a credential.
const INHERITED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

/// Live children: pid -> server, for [`Runtime::stop_server`].
type Children = Arc<Mutex<HashMap<u32, String>>>;

pub struct ProcessRuntime {
    nets: Arc<ProcessNets>,
    children: Children,
    /// Covered in every child's mount view ([`super::hidden`]); replaced at each policy load.
    hidden: RwLock<Vec<PathBuf>>,
    /// Servers whose `allow_root` was already announced (once per server, not per child).
    root_announced: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ProcessRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessRuntime").finish_non_exhaustive()
    }
}

impl ProcessRuntime {
    /// A runtime whose firewalled servers are enforced through `firewall`.
    pub fn new(firewall: Firewall) -> ProcessRuntime {
        ProcessRuntime {
            nets: ProcessNets::new(firewall),
            children: Arc::default(),
            hidden: RwLock::default(),
            root_announced: Mutex::default(),
        }
    }

    /// The paths children must not see, from the policy in force.
    pub fn set_hidden(&self, paths: Vec<PathBuf>) {
        if let Ok(mut h) = self.hidden.write() {
            *h = paths;
        }
    }

    fn confinement(&self, server: &Server, net: Option<&NetPaths>) -> Option<Confinement> {
        let RuntimeSpec::Process(spec) = &server.runtime else {
            return None;
        };
        let privileged = netns::is_root();
        if privileged && spec.user.uid == 0 {
            let first = self
                .root_announced
                .lock()
                .map(|mut a| a.insert(server.name.clone()))
                .unwrap_or(true);
            if first {
                tracing::warn!(
                    server = %server.name,
                    "!!! PROCESS SERVER RUNS AS ROOT (uid 0, allow_root = true): it has no capabilities, but it owns every root-owned file the read-only view shows !!!"
                );
            }
        }
        Some(Confinement {
            server: server.name.clone(),
            uid: spec.user.uid,
            gid: spec.user.gid,
            privileged,
            netns: net.map(|n| n.netns.clone()),
            resolv_conf: net.map(|n| n.resolv_conf.clone()),
            mounts: spec
                .mounts
                .iter()
                .map(|m| BindMount {
                    source: m.source.clone(),
                    target: m.target.clone(),
                    writable: !m.read_only,
                })
                .collect(),
            hide: self.hidden.read().map(|h| h.clone()).unwrap_or_default(),
            cwd: spec.cwd.clone(),
        })
    }

    /// Removes the namespaces left (call after every child is gone); whether no child is left.
    pub async fn shutdown(&self) -> bool {
        self.nets.shutdown().await;
        self.children.lock().map(|c| c.is_empty()).unwrap_or(false)
    }

    /// Where the child's network comes from: its namespace and a lease on it, or nothing
    /// (host network).
    async fn network(&self, server: &Server) -> Result<Option<(NetPaths, Lease)>, SandboxError> {
        if server.egress.allow.is_empty() {
            return Ok(None);
        }
        if !netns::is_root() {
            if self.nets.firewall().settings().allow_unconfined_process {
                tracing::warn!(
                    server = %server.name,
                    "!!! EGRESS NOT ENFORCED: the gateway is not root, so this process server runs on the host's network despite its egress rules (allow_unconfined_process = true) !!!"
                );
                return Ok(None);
            }
            return Err(SandboxError::Unenforceable {
                server: server.name.clone(),
            });
        }
        Ok(Some(self.nets.join(server).await?))
    }
}

impl Runtime for ProcessRuntime {
    fn spawn<'a>(
        &'a self,
        server: &'a Server,
        ctx: &'a super::SpawnContext,
    ) -> BoxFuture<'a, Result<Spawned, SandboxError>> {
        Box::pin(async move {
            let RuntimeSpec::Process(spec) = &server.runtime else {
                return Err(SandboxError::Unsupported {
                    server: server.name.clone(),
                    runtime: "process",
                });
            };
            // The helper always starts, so a missing program would only show as its exit.
            if !program_exists(&spec.command, spec.cwd.as_deref()) {
                return Err(not_found(server, &spec.command));
            }
            let (net, lease) = match self.network(server).await? {
                Some((paths, lease)) => (Some(paths), Some(lease)),
                None => (None, None),
            };
            let Some(confinement) = self.confinement(server, net.as_ref()) else {
                return Err(SandboxError::Unsupported {
                    server: server.name.clone(),
                    runtime: "process",
                });
            };
            // On an error below the lease is dropped, which releases it in the background.
            spawn(
                server,
                &ctx.secrets,
                &confinement,
                lease,
                self.children.clone(),
            )
        })
    }

    fn stop_server<'a>(&'a self, server: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let pids: Vec<u32> = match self.children.lock() {
                Ok(c) => c
                    .iter()
                    .filter(|(_, s)| s.as_str() == server)
                    .map(|(p, _)| *p)
                    .collect(),
                Err(_) => return 0,
            };
            for pid in &pids {
                kill_group(*pid);
            }
            pids.len()
        })
    }
}

/// Whether `command` names an executable (a path, relative to the child's working directory,
/// or a name on the gateway's PATH).
fn program_exists(command: &str, cwd: Option<&std::path::Path>) -> bool {
    let runnable = |p: &std::path::Path| p.is_file();
    if command.contains('/') {
        let path = std::path::Path::new(command);
        return match cwd {
            Some(dir) if path.is_relative() => runnable(&dir.join(path)),
            _ => runnable(path),
        };
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| runnable(&d.join(command))))
        .unwrap_or(false)
}

fn not_found(server: &Server, command: &str) -> SandboxError {
    SandboxError::Spawn {
        server: server.name.clone(),
        command: command.to_owned(),
        hint: " (not found: give an absolute path, or put it on the gateway's PATH)",
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    }
}

fn kill_group(pid: u32) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Where the helper comes from: the gateway's own binary, as the kernel knows it (still right
/// when the file was replaced on disk by an upgrade).
const HELPER: &str = "/proc/self/exe";

fn spawn(
    server: &Server,
    extra_env: &[(String, String)],
    confinement: &Confinement,
    lease: Option<Lease>,
    children: Children,
) -> Result<Spawned, SandboxError> {
    let RuntimeSpec::Process(spec) = &server.runtime else {
        return Err(SandboxError::Unsupported {
            server: server.name.clone(),
            runtime: "process",
        });
    };
    let mut cmd = Command::new(HELPER);
    cmd.arg0(format!("portcullis-confine:{}", server.name))
        .args(confine::helper_args(confinement, &spec.command, &spec.args))
        .env_clear()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for key in INHERITED_ENV {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    if confinement.privileged && confinement.uid != nix::unistd::getuid().as_raw() {
        // The gateway's home is not the server user's (and not readable for it); the private
        // /tmp is the one writable place it has. The policy's `env` may say otherwise.
        cmd.env("HOME", "/tmp");
    }
    cmd.envs(&spec.env);
    cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
    // The working directory is entered by the helper, as the server's user.
    let mut child = cmd.spawn().map_err(|source| SandboxError::Spawn {
        server: server.name.clone(),
        command: spec.command.clone(),
        hint: if source.kind() == std::io::ErrorKind::NotFound {
            " (not found: give an absolute path, or put it on the gateway's PATH)"
        } else {
            ""
        },
        source,
    })?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(SandboxError::Spawn {
            server: server.name.clone(),
            command: spec.command.clone(),
            hint: "",
            source: std::io::Error::other("stdio pipes were not created"),
        });
    };
    let stderr = child.stderr.take();
    let info = super::InstanceInfo {
        id: child.id().map(|p| format!("pid:{p}")).unwrap_or_default(),
        image_digest: None,
        image_id: None,
    };
    let pid = child.id();
    if let (Some(pid), Ok(mut c)) = (pid, children.lock()) {
        c.insert(pid, server.name.clone());
    }
    Ok(Spawned {
        info,
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        stderr: stderr.map(|s| Box::new(s) as super::BoxRead),
        instance: Box::new(ChildInstance {
            child,
            pid,
            children,
            lease,
        }),
    })
}

struct ChildInstance {
    child: Child,
    pid: Option<u32>,
    children: Children,
    /// The server's network namespace, released once this child is gone.
    lease: Option<Lease>,
}

impl ChildInstance {
    fn forget(&mut self) {
        if let (Some(pid), Ok(mut c)) = (self.pid.take(), self.children.lock()) {
            c.remove(&pid);
        }
    }
}

impl Drop for ChildInstance {
    fn drop(&mut self) {
        // Still running (not reaped): the whole group goes, before its namespace is released.
        if let Some(pid) = self.child.id() {
            kill_group(pid);
        }
        self.forget();
    }
}

impl Instance for ChildInstance {
    fn describe(&self) -> String {
        match self.child.id() {
            Some(pid) => format!("pid {pid}"),
            None => "exited process".to_owned(),
        }
    }

    fn wait(&mut self) -> BoxFuture<'_, String> {
        Box::pin(async move {
            match self.child.wait().await {
                Ok(status) => describe_exit(status),
                Err(e) => format!("could not wait for the process: {e}"),
            }
        })
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(pid) = self.child.id() {
                // The child leads its own process group; signal the group so grandchildren go too.
                kill_group(pid);
            }
            let _ = self.child.kill().await;
            self.forget();
            if let Some(l) = self.lease.take() {
                l.release().await;
            }
        })
    }
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        format!("exited with status {code}")
    } else if let Some(sig) = status.signal() {
        format!("killed by signal {sig}")
    } else {
        "exited".to_owned()
    }
}
