//! How MCP servers run: the `Runtime` trait and its backends.
//!
//! A runtime turns a server's policy into a running instance with stdio pipes. What happens on
//! those pipes (MCP) is the upstream layer's business.

pub mod process;

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
        env: &'a [(String, String)],
    ) -> BoxFuture<'a, Result<Spawned, SandboxError>>;
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
    #[error("server `{server}`: runtime `{runtime}` is not available in this build of Portcullis")]
    Unsupported {
        server: String,
        runtime: &'static str,
    },
}
