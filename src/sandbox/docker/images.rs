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
    /// Whether this is the image `digest` (`sha256:...`) names: its id, or its registry digest.
    pub fn is(&self, digest: &str) -> bool {
        self.id == digest
            || self
                .repo_digest
                .as_deref()
                .and_then(|d| d.rsplit_once('@'))
                .is_some_and(|(_, d)| d == digest)
    }

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

/// An image reference resolved with the digest it may pin (`name[:tag]@sha256:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pinned {
    /// Present, and the pinned one when the reference pins one.
    Image(ResolvedImage),
    /// Nothing by that name or digest.
    Missing,
    /// The reference pins a digest, and the name resolves to another image (`found`).
    Mismatch { expected: String, found: String },
}

/// Resolves `image`. A pinned reference is tried as a registry digest (what the engine knows
/// for pulled images), then as an image id (what locally built images have); when neither
/// exists but the name does, that is a mismatch, not a missing image.
pub async fn resolve_pinned(docker: &Docker, image: &str) -> Result<Pinned, DockerFailure> {
    let Some((name, digest)) = image.rsplit_once('@') else {
        return Ok(resolve(docker, image)
            .await?
            .map_or(Pinned::Missing, Pinned::Image));
    };
    if let Some(found) = resolve(docker, image).await? {
        return Ok(Pinned::Image(found));
    }
    if let Some(found) = resolve(docker, digest).await?.filter(|f| f.is(digest)) {
        return Ok(Pinned::Image(found));
    }
    Ok(match resolve(docker, name).await? {
        Some(other) => Pinned::Mismatch {
            expected: digest.to_owned(),
            found: other.id,
        },
        None => Pinned::Missing,
    })
}
