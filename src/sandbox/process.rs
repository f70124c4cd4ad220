//! The `process` runtime: the server is a child process of the gateway.
//!
//! The child gets a scrubbed environment (the gateway's own variables may hold credentials), its
//! own process group (so that killing it also kills whatever it forked), and is killed when the
//! gateway drops it.
//!
//! Egress: a server with `egress.allow` rules gets its own network namespace behind the
//! firewall when the gateway runs as root ([`super::process_net`]); its only way out is what
//! the rules allow. When the gateway is not root that cannot be done, and such a server is
//! refused (fail closed) unless the policy sets `[egress] allow_unconfined_process = true`, in
//! which case it runs on the host's network with a loud warning. A server without rules is a
//! plain child process on the host's network (the process runtime is not a sandbox).

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::process::{Child, Command};

use super::firewall::Firewall;
use super::leases::Lease;
use super::process_net::ProcessNets;
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
        }
    }

    /// Removes the namespaces left (call after every child is gone); whether no child is left.
    pub async fn shutdown(&self) -> bool {
        self.nets.shutdown().await;
        self.children.lock().map(|c| c.is_empty()).unwrap_or(false)
    }

    /// Where the child's network comes from: a command prefix that enters its namespace and a
    /// lease on it, or nothing (host network).
    async fn network(&self, server: &Server) -> Result<(Vec<String>, Option<Lease>), SandboxError> {
        if server.egress.allow.is_empty() {
            return Ok((Vec::new(), None));
        }
        if !netns::is_root() {
            if self.nets.firewall().settings().allow_unconfined_process {
                tracing::warn!(
                    server = %server.name,
                    "!!! EGRESS NOT ENFORCED: the gateway is not root, so this process server runs on the host's network despite its egress rules (allow_unconfined_process = true) !!!"
                );
                return Ok((Vec::new(), None));
            }
            return Err(SandboxError::Unenforceable {
                server: server.name.clone(),
            });
        }
        let (prefix, lease) = self.nets.join(server).await?;
        Ok((prefix, Some(lease)))
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
            if !server.egress.allow.is_empty()
                && !program_exists(&spec.command, spec.cwd.as_deref())
            {
                return Err(not_found(server, &spec.command));
            }
            let (prefix, lease) = self.network(server).await?;
            // On an error below the lease is dropped, which releases it in the background.
            spawn(server, &ctx.secrets, &prefix, lease, self.children.clone())
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
/// or a name on the gateway's PATH). Checked before a namespaced start, where a missing program
/// would otherwise only show as `ip` failing.
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

fn spawn(
    server: &Server,
    extra_env: &[(String, String)],
    prefix: &[String],
    lease: Option<Lease>,
    children: Children,
) -> Result<Spawned, SandboxError> {
    let RuntimeSpec::Process(spec) = &server.runtime else {
        return Err(SandboxError::Unsupported {
            server: server.name.clone(),
            runtime: "process",
        });
    };
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(&spec.command);
            c
        }
        None => Command::new(&spec.command),
    };
    cmd.args(&spec.args)
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
    cmd.envs(&spec.env);
    cmd.envs(extra_env.iter().map(|(k, v)| (k, v)));
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
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
