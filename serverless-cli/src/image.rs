//! `image import` and `image pull`: prepare an image in the engine's containerd without serving.

use serverless_core::{AppSpec, Config, ContainerBackend, ImageRef};
use serverless_proxy::BoxError;

use crate::backend::backend;
use crate::cli::ImageCommand;

/// Imports or pulls the image, in the containerd the config names (or an embedded one, stopped
/// afterwards).
pub(crate) async fn run(command: ImageCommand) -> Result<(), BoxError> {
    let (config, image) = match command {
        ImageCommand::Import { file, config } => {
            let file =
                std::fs::canonicalize(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            (config, ImageRef::OciArchive(file))
        }
        ImageCommand::Pull { reference, config } => (config, ImageRef::parse(&reference)?),
    };
    let config = match config {
        Some(path) => Config::from_path(path)?,
        None => Config::default(),
    };
    // Only imports: no spare shim to make (and leave behind in a given containerd).
    let backend = backend(&config, false).await?;
    let app = AppSpec::new("image", image.clone());
    let result = backend.prepare(&app).await;
    if config.containerd.is_none() {
        backend.shutdown().await?;
    }
    result?;
    println!("{image}: ready");
    Ok(())
}
