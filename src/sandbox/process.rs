//! The `process` runtime: the server is a child process of the gateway.
//!
//! The child gets a scrubbed environment (the gateway's own variables may hold credentials), its
//! own process group (so that killing it also kills whatever it forked), and is killed when the
//! gateway drops it.

use std::process::Stdio;

use tokio::process::{Child, Command};

use super::{BoxFuture, Instance, Runtime, SandboxError, Spawned};
use crate::policy::{Runtime as RuntimeSpec, Server};

/// Variables passed through from the gateway's environment: what interpreters need to run, and
/// nothing that could carry a credential.
const INHERITED_ENV: [&str; 6] = ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"];

#[derive(Debug, Default)]
pub struct ProcessRuntime;

impl Runtime for ProcessRuntime {
    fn spawn<'a>(
        &'a self,
        server: &'a Server,
        ctx: &'a super::SpawnContext,
    ) -> BoxFuture<'a, Result<Spawned, SandboxError>> {
        Box::pin(async move { spawn(server, &ctx.secrets) })
    }
}

fn spawn(server: &Server, extra_env: &[(String, String)]) -> Result<Spawned, SandboxError> {
    let RuntimeSpec::Process(spec) = &server.runtime else {
        return Err(SandboxError::Unsupported {
            server: server.name.clone(),
            runtime: "process",
        });
    };
    let mut cmd = Command::new(&spec.command);
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
    };
    Ok(Spawned {
        info,
        stdin: Box::new(stdin),
        stdout: Box::new(stdout),
        stderr: stderr.map(|s| Box::new(s) as super::BoxRead),
        instance: Box::new(ChildInstance { child }),
    })
}

struct ChildInstance {
    child: Child,
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
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            let _ = self.child.kill().await;
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
