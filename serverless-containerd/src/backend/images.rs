//! The app's image, prepared once per backend: imported from its archive (again when the file
//! changed) or pulled from its registry, then reused by every start.

use std::sync::Arc;

use serverless_core::{AppSpec, BackendError, ImageRef};

use super::handle::ContainerdBackend;
use crate::image::{import_archive, pull_image, PreparedImage};

impl ContainerdBackend {
    /// The app's image, imported or pulled on first use (an archive also when its size or
    /// modification time changed since).
    pub(super) async fn prepared(&self, app: &AppSpec) -> Result<Arc<PreparedImage>, BackendError> {
        let fingerprint = match &app.image {
            ImageRef::OciArchive(path) => tokio::fs::metadata(path)
                .await
                .ok()
                .map(|m| (m.len(), m.modified().ok())),
            ImageRef::Registry(_) => None,
        };
        let mut images = self.inner.images.lock().await;
        if let Some((fp, image)) = images.get(&app.image) {
            if *fp == fingerprint {
                return Ok(image.clone());
            }
        }
        let image = match &app.image {
            ImageRef::OciArchive(path) => {
                let path = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                import_archive(
                    &self.inner.client,
                    &self.inner.snapshotter,
                    &format!("oci-archive:{}", path.display()),
                    &path,
                    self.inner.max_unpacked_bytes,
                )
                .await?
            }
            ImageRef::Registry(reference) => {
                pull_image(
                    &self.inner.client,
                    &self.inner.snapshotter,
                    reference,
                    &self.inner.pull_progress,
                    &self.inner.registry_logins,
                    self.inner.max_unpacked_bytes,
                )
                .await?
            }
        };
        let image = Arc::new(image);
        images.insert(app.image.clone(), (fingerprint, image.clone()));
        Ok(image)
    }
}
