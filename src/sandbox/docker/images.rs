//! Images: never pulled (offline devcontainers, and a pull is a supply-chain decision the policy
//! author makes, not the gateway); present or a clear error. The resolved digest goes to the audit
//! log so a record names exactly what ran.

use bollard::errors::Error as ApiError;
use bollard::Docker;

use super::{timed, DockerFailure, API_TIMEOUT};

/// What the engine knows about an image the policy names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image id (`sha256:...`), which is what `create` will actually use.
    pub id: String,
    /// `repo@sha256:...` when the image came from a registry; the content digest an auditor can
    /// look up. Locally built images have none.
    pub repo_digest: Option<String>,
}

impl ResolvedImage {
    /// The digest recorded for audit: the registry digest when there is one, else the image id.
    pub fn audit_digest(&self) -> String {
        self.repo_digest.clone().unwrap_or_else(|| self.id.clone())
    }
}

/// `Ok(None)` when the image is not present locally.
pub async fn resolve(docker: &Docker, image: &str) -> Result<Option<ResolvedImage>, DockerFailure> {
    match timed("image inspect", API_TIMEOUT, docker.inspect_image(image)).await {
        Ok(info) => Ok(Some(ResolvedImage {
            id: info.id.unwrap_or_default(),
            repo_digest: info.repo_digests.and_then(|d| d.into_iter().next()),
        })),
        Err(DockerFailure::Api {
            source:
                ApiError::DockerResponseServerError {
                    status_code: 404, ..
                },
            ..
        }) => Ok(None),
        Err(e) => Err(e),
    }
}
