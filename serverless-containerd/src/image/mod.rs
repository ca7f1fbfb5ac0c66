//! Images: the [`ImageBuilder`] that writes OCI archives, and import into containerd.

mod archive;
mod builder;
mod import;

pub use builder::{BuildError, ImageBuilder};
pub(crate) use import::{import_archive, PreparedImage};
