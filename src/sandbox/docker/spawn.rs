//! Starting one container of a docker server: the image resolved and its pin checked, the
//! server network and (in sidecar mode) its egress agent, the hardened container created and
//! attached to, then started; tracked so that shutdown and reconcile find it.

use bollard::query_parameters::CreateContainerOptionsBuilder;

use super::instance::ContainerInstance;
use super::{
    attach, images, labels, random_hex, spec, stdio_attach, timed, DockerFailure, DockerRuntime,
    API_TIMEOUT, CREATE_TIMEOUT,
};
use crate::policy::{Runtime as RuntimeSpec, Server};
use crate::sandbox::{InstanceInfo, PinMismatch, SandboxError, SpawnContext, Spawned};

impl DockerRuntime {
    pub(super) async fn spawn_container(
        &self,
        server: &Server,
        ctx: &SpawnContext,
    ) -> Result<Spawned, SandboxError> {
        let RuntimeSpec::Docker(spec) = &server.runtime else {
            return Err(SandboxError::Unsupported {
                server: server.name.clone(),
                runtime: "docker",
            });
        };
        // The engine echoes some invalid input back in its errors; never let that be a secret.
        let redactor = crate::secrets::Redactor::new(
            ctx.secrets.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let failed = |op: &'static str| {
            let redactor = &redactor;
            move |e: DockerFailure| SandboxError::Docker {
                server: server.name.clone(),
                op,
                reason: redactor.redact(&e.to_string()).into_owned(),
            }
        };
        let image = match images::resolve_pinned(&self.docker, &spec.image)
            .await
            .map_err(failed("image inspect"))?
        {
            images::Pinned::Image(i) => i,
            images::Pinned::Missing => {
                return Err(SandboxError::ImageMissing {
                    server: server.name.clone(),
                    image: spec.image.clone(),
                })
            }
            images::Pinned::Mismatch { expected, found } => {
                crate::metrics::global().lock_mismatch(&server.name, "image", "image");
                return Err(SandboxError::ImagePin(Box::new(PinMismatch {
                    server: server.name.clone(),
                    image: spec.image.clone(),
                    expected,
                    found,
                    source_of_pin: "policy's image reference".to_owned(),
                    hint: "pin the new digest in `image`".to_owned(),
                })));
            }
        };
        if let Some(pin) = ctx.image_pin.as_ref().filter(|p| !image.is(&p.digest)) {
            crate::metrics::global().lock_mismatch(&server.name, "image", "image");
            return Err(SandboxError::ImagePin(Box::new(PinMismatch {
                server: server.name.clone(),
                image: spec.image.clone(),
                expected: pin.digest.clone(),
                found: image.id.clone(),
                source_of_pin: pin.source.clone(),
                hint: format!(
                    "`portcullis tools lock --update --server {}`, then SIGHUP the gateway",
                    server.name
                ),
            })));
        }
        let mut labels = labels::for_container(&server.name, ctx, &self.gateway, &self.scope);
        labels.insert(labels::IMAGE.to_owned(), spec.image.clone());
        // The rules exist before the container does; on any error below, dropping the lease
        // takes them down again once the container is gone.
        let (network, lease) = self.network(server).await?;
        // Create from the resolved id, so that a tag moved after the lookup cannot swap the image
        // the audit log names.
        let config = spec::container_config(
            spec,
            &server.limits,
            spec::Inputs {
                image: &image.id,
                labels,
                secrets: &ctx.secrets,
                network,
            },
        );
        let name = format!("portcullis-{}-{}", server.name, random_hex(4));
        let created = timed(
            "container create",
            CREATE_TIMEOUT,
            self.docker.create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                config,
            ),
        )
        .await
        .map_err(failed("container create"))?;
        let id = created.id;
        self.track(&id, &server.name);
        let instance = ContainerInstance {
            rt: self.clone(),
            id: id.clone(),
            name,
            memory_bytes: server.limits.memory_bytes,
            removed: false,
            lease,
        };
        // From here on, dropping `instance` on an error path removes the container.
        let attached = timed(
            "container attach",
            API_TIMEOUT,
            self.docker.attach_container(&id, Some(stdio_attach())),
        )
        .await
        .map_err(failed("container attach"))?;
        // Attached before start: not one byte of the server's output can be missed.
        timed(
            "container start",
            API_TIMEOUT,
            self.docker.start_container(&id, None),
        )
        .await
        .map_err(failed("container start"))?;
        let (stdout, stderr) = attach::demux(server.name.clone(), attached.output);
        Ok(Spawned {
            stdin: Box::new(attached.input),
            stdout,
            stderr: Some(stderr),
            instance: Box::new(instance),
            info: InstanceInfo {
                id,
                image_digest: Some(image.audit_digest()),
                image_id: Some(image.id.clone()),
            },
        })
    }
}
