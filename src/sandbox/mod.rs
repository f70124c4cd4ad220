//! How MCP servers run: the `Runtime` trait and its backends.
//!
//! A runtime turns a server's policy into a running instance with stdio pipes. What happens on
//! those pipes (MCP) is the upstream layer's business.

pub mod backends;
pub mod capset;
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
    /// The image id (`sha256:...`) the container was created from.
    pub image_id: Option<String>,
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

/// The image a docker server must run, from a source other than its policy's `image` (which a
/// runtime reads itself): the lock file in `enforce` mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePin {
    /// The image id (`sha256:...`) or registry digest the resolved image must have.
    pub digest: String,
    /// Where the pin comes from, for the error (`lock file /x/policy.toml.lock`).
    pub source: String,
}

/// Image pins by server, replaced whole when the lock file is (re)loaded; read at each start.
#[derive(Debug, Default)]
pub struct ImagePins(std::sync::RwLock<std::collections::HashMap<String, ImagePin>>);

impl ImagePins {
    pub fn get(&self, server: &str) -> Option<ImagePin> {
        self.0.read().ok()?.get(server).cloned()
    }

    pub fn replace(&self, pins: std::collections::HashMap<String, ImagePin>) {
        match self.0.write() {
            Ok(mut p) => *p = pins,
            Err(e) => *e.into_inner() = pins,
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
    /// The image must be this one (besides any digest the policy's `image` names).
    pub image_pin: Option<ImagePin>,
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
            .field("image_pin", &self.image_pin)
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

/// A docker server's image is not the one pinned for it.
#[derive(Debug, thiserror::Error)]
#[error("server `{server}` was not started: image `{image}` resolves to {found}, but the {source_of_pin} pins {expected}; rebuild or load the pinned image, or approve the new one ({hint})")]
pub struct PinMismatch {
    pub server: String,
    pub image: String,
    pub expected: String,
    pub found: String,
    pub source_of_pin: String,
    pub hint: String,
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
    /// The image found is not the one the policy or the lock file pins.
    #[error("{0}")]
    ImagePin(Box<PinMismatch>),
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
