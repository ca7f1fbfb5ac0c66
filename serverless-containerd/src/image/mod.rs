//! Images: the [`ImageBuilder`] that writes OCI archives, and import into containerd.

mod archive;
mod builder;
mod content;
mod executable;
mod import;
mod layer_size;
mod logins;
mod pull;
mod remap;
mod users;

pub use builder::{BuildError, ImageBuilder};
pub(crate) use import::{import_archive, PreparedImage};
pub(crate) use logins::RegistryLogins;
pub(crate) use pull::{pull_image, ProgressHook};
pub use pull::{PullProgress, PullProgressFn};
pub(crate) use remap::{remapped, IdMap};
pub(crate) use users::ImageUser;
