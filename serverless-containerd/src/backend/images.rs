//! The app's image, prepared once per backend: imported from its archive (again when the file
//! changed) or pulled from its registry, then reused by every start; with a user namespace
//! also its layers' copy owned by the engine's id range (made once, see `image/remap.rs`).

use std::sync::Arc;

use serverless_core::{AppSpec, BackendError, ImageRef};

use super::handle::ContainerdBackend;
use crate::image::{import_archive, pull_image, remapped, PreparedImage};

impl ContainerdBackend {
    /// The app's image, ready for its instances: the host checked for what the app's sandbox
    /// needs, the image imported or pulled, and with `security.userns` its remapped layers.
    pub(super) async fn prepared(&self, app: &AppSpec) -> Result<Arc<PreparedImage>, BackendError> {
        crate::host_support::check(app, self.inner.userns).await?;
        let image = self.image(app).await?;
        if app.security.userns {
            let inner = &self.inner;
            image
                .remapped
                .get_or_try_init(|| {
                    remapped(
                        &inner.client,
                        &inner.snapshotter,
                        &image.name,
                        &image.chain_id,
                        inner.userns,
                    )
                })
                .await?;
        }
        Ok(image)
    }

    /// The app's image, imported or pulled on first use (an archive also when its size or
    /// modification time changed since).
    async fn image(&self, app: &AppSpec) -> Result<Arc<PreparedImage>, BackendError> {
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
