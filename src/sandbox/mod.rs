//! How MCP servers run: the `Runtime` trait and its backends.
//!
//! A runtime turns a server's policy into a running instance with stdio pipes. What happens on
//! those pipes (MCP) is the upstream layer's business.

pub mod backends;
pub mod confine;
pub mod docker;
pub mod firewall;
pub mod hidden;
pub mod leases;
pub mod process;
mod process_net;

use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// A started server instance with its stdio.
pub struct Spawned {
    pub stdin: BoxWrite,
    pub stdout: BoxRead,
    pub stderr: Option<BoxRead>,
    pub instance: Box<dyn Instance>,
    pub info: InstanceInfo,
}

/// What the audit log records about an instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceInfo {
    /// A process id or a container id.
    pub id: String,
    /// The resolved image digest (`sha256:...`) for containers.
    pub image_digest: Option<String>,
}

/// Why an instance is being started, recorded in container labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Shared,
    Session,
    Call,
    /// Started ahead of time for the warm pool.
    Pool,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Shared => "shared",
            Purpose::Session => "per-session",
            Purpose::Call => "per-call",
            Purpose::Pool => "pool",
        }
    }
}

/// Everything a runtime needs besides the server's policy to start one instance.
#[derive(Clone, Default)]
pub struct SpawnContext {
    /// Resolved secret values as environment variables. Never logged.
    pub secrets: Vec<(String, String)>,
    /// The client session the instance is dedicated to, if any.
    pub session: Option<std::sync::Arc<str>>,
    /// Hash of the policy that asked for the instance (labels, audit).
    pub policy_hash: String,
    pub purpose: Option<Purpose>,
}

impl std::fmt::Debug for SpawnContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secret values must never reach a log line, even through Debug.
        f.debug_struct("SpawnContext")
            .field(
                "secrets",
                &self
                    .secrets
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("session", &self.session)
            .field("policy_hash", &self.policy_hash)
            .field("purpose", &self.purpose)
            .finish()
    }
}

/// A running instance the gateway owns: it can wait for it to end and stop it.
pub trait Instance: Send {
    /// A short identifier for logs (a pid, a container id).
    fn describe(&self) -> String;
    /// Resolves when the instance has exited, with a human-readable reason.
    fn wait(&mut self) -> BoxFuture<'_, String>;
    /// Stops the instance and everything it started.
    fn kill(&mut self) -> BoxFuture<'_, ()>;
}

/// A backend able to start instances of servers.
pub trait Runtime: Send + Sync {
    fn spawn<'a>(
        &'a self,
        server: &'a crate::policy::Server,
        ctx: &'a SpawnContext,
    ) -> BoxFuture<'a, Result<Spawned, SandboxError>>;

    /// Stops every running instance of `server` at once (its egress enforcement is gone, or the
    /// server was removed from the policy). Supervisors see the instances end and restart
    /// them through the same checks as any start. Returns how many were stopped.
    fn stop_server<'a>(&'a self, _server: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async { 0 })
    }
}

/// Picks the backend each server's policy names.
pub struct Runtimes {
    pub process: std::sync::Arc<dyn Runtime>,
    /// `None` when Docker is not available; docker servers then fail to start with a clear error.
    pub docker: Option<std::sync::Arc<dyn Runtime>>,
}

impl Runtime for Runtimes {
    fn spawn<'a>(
        &'a self,
        server: &'a crate::policy::Server,
        ctx: &'a SpawnContext,
    ) -> BoxFuture<'a, Result<Spawned, SandboxError>> {
        use crate::policy::Runtime as Spec;
        match (&server.runtime, &self.docker) {
            (Spec::Process(_), _) => self.process.spawn(server, ctx),
            (Spec::Docker(_), Some(docker)) => docker.spawn(server, ctx),
            (Spec::Docker(_), None) => Box::pin(async move {
                Err(SandboxError::Unsupported {
                    server: server.name.clone(),
                    runtime: "docker (the Docker engine is not reachable)",
                })
            }),
            (Spec::Remote(_) | Spec::OpenApi(_), _) => Box::pin(async move {
                Err(SandboxError::Unsupported {
                    server: server.name.clone(),
                    runtime: "remote or openapi (not a sandboxed runtime)",
                })
            }),
        }
    }

    fn stop_server<'a>(&'a self, server: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let mut n = self.process.stop_server(server).await;
            if let Some(d) = &self.docker {
                n += d.stop_server(server).await;
            }
            n
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("server `{server}`: cannot start `{command}`: {source}{hint}")]
    Spawn {
        server: String,
        command: String,
        hint: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("server `{server}`: runtime `{runtime}` cannot start it")]
    Unsupported {
        server: String,
        runtime: &'static str,
    },
    #[error("the Docker engine is not reachable: {reason}; start dockerd (or mount /var/run/docker.sock into the gateway's container) and run `portcullis doctor`")]
    EngineUnreachable { reason: String },
    #[error("server `{server}`: image `{image}` is not in the local Docker engine and Portcullis never pulls; build it (`docker build -t {image} .`) or load it (`docker load -i image.tar`) first")]
    ImageMissing { server: String, image: String },
    /// Egress could not be enforced for the server, so its sandbox was not started.
    #[error("server `{server}`: egress enforcement failed, so it was not started (fail closed): {reason}")]
    Egress { server: String, reason: String },
    #[error("server `{server}` has egress rules, but the gateway does not run as root, so they cannot be enforced on a `process` server; run the gateway as root, move the server to runtime = \"docker\", or set `allow_unconfined_process = true` in [egress] to run it on the host's network without enforcement")]
    Unenforceable { server: String },
    /// A Docker API call failed. `reason` comes from the engine, which never echoes env values.
    #[error("server `{server}`: Docker {op} failed: {reason}")]
    Docker {
        server: String,
        op: &'static str,
        reason: String,
    },
}
