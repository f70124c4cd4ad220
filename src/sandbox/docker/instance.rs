//! One running server container: how its exit is described, and how it is stopped and removed
//! (with its network lease released) when the supervisor kills it or drops it.

use super::*;

pub(super) struct ContainerInstance {
    pub(super) rt: DockerRuntime,
    pub(super) id: String,
    pub(super) name: String,
    pub(super) memory_bytes: u64,
    pub(super) removed: bool,
    /// The server's network; released once the container is gone.
    pub(super) lease: Option<Lease>,
}

impl ContainerInstance {
    async fn exit_reason(&self) -> String {
        let waited = self
            .rt
            .docker
            .wait_container(
                &self.id,
                Some(
                    WaitContainerOptionsBuilder::new()
                        .condition("not-running")
                        .build(),
                ),
            )
            .next()
            .await;
        // A long poll by design: it returns when the container stops, however long that is.
        let code = match waited {
            Some(Ok(r)) => Some(r.status_code),
            Some(Err(ApiError::DockerContainerWaitError { code, .. })) => Some(code),
            Some(Err(ApiError::DockerResponseServerError {
                status_code: 404, ..
            })) => return "removed".to_owned(),
            Some(Err(e)) => return format!("lost track of its container: {e}"),
            None => None,
        };
        let state = timed(
            "container inspect",
            API_TIMEOUT,
            self.rt
                .docker
                .inspect_container(&self.id, None::<InspectContainerOptions>),
        )
        .await;
        match state {
            Ok(info) => {
                let state = info.state.unwrap_or_default();
                if state.oom_killed == Some(true) {
                    format!(
                        "OOM-killed (memory limit {} MiB)",
                        self.memory_bytes / (1024 * 1024)
                    )
                } else {
                    describe_exit(state.exit_code.or(code))
                }
            }
            Err(e) if e.is_not_found() => "removed".to_owned(),
            Err(_) => describe_exit(code),
        }
    }
}

pub(super) fn describe_exit(code: Option<i64>) -> String {
    match code {
        // The init process reports a child killed by signal N as 128+N.
        Some(c @ 129..=159) => format!("exited with status {c} (killed by signal {})", c - 128),
        Some(c) => format!("exited with status {c}"),
        None => "stopped".to_owned(),
    }
}

impl Instance for ContainerInstance {
    fn describe(&self) -> String {
        format!("container {} ({})", self.name, short(&self.id))
    }

    fn wait(&mut self) -> BoxFuture<'_, String> {
        Box::pin(self.exit_reason())
    }

    fn kill(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.removed {
                return;
            }
            match remove(&self.rt.docker, &self.id).await {
                Ok(()) => {
                    self.removed = true;
                    self.rt.forget(&self.id);
                    if let Some(l) = self.lease.take() {
                        l.release().await;
                    }
                }
                // Still tracked: `shutdown` tries again.
                Err(e) => {
                    tracing::warn!(container = %self.name, error = %e, "could not remove container")
                }
            }
        })
    }
}

impl Drop for ContainerInstance {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Dropped without kill (an error path, a cancelled task): remove it in the background
        // rather than leak a running container.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let rt = self.rt.clone();
            let id = std::mem::take(&mut self.id);
            let lease = self.lease.take();
            handle.spawn(async move {
                match remove(&rt.docker, &id).await {
                    Ok(()) => {
                        rt.forget(&id);
                        if let Some(l) = lease {
                            l.release().await;
                        }
                    }
                    // The lease goes with this task: the network cannot be removed while the
                    // container exists, and `shutdown` sweeps both.
                    Err(e) => tracing::warn!(container = %short(&id), error = %e, "could not remove dropped container"),
                }
            });
        }
    }
}
