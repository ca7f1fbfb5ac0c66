//! [`ContainerdBackend`]: the [`ContainerBackend`](serverless_core::ContainerBackend) over
//! containerd.
//!
//! The type is defined once (`handle.rs`); its `impl` blocks are spread by concern, one file
//! each:
//!
//! | file | holds |
//! |---|---|
//! | `handle.rs` | `ContainerdBackend`, its shared state `Inner`, and the accessors every part uses |
//! | `builder.rs` | `Builder` and the constructors (`builder`, `connect`, `embedded`) |
//! | `trait_impl.rs` | `impl ContainerBackend`: the entry points, which path a start takes, cleanup after a failed start |
//! | `images.rs` | the app's image, imported or pulled once (`prepared`) |
//! | `start.rs` | the cold start's mechanics: `create` (snapshot, container, task) and `run` (start, port) |
//! | `standby.rs` | standbys: made, taken, refilled, released (state in `standby_state.rs`) |
//! | `spare_shim.rs` | the spare shim: keepers made, claimed, removed (state in `shim_pool.rs`) |
//! | `stop.rs` | one container stopped and removed: `teardown`, `terminate`, `delete_objects`, `forget` |
//! | `reconcile.rs` | `reconcile` (a previous run's leftovers) and `shutdown` |
//! | `task.rs`, `ids.rs` | the task records (`Created`, `Instance`); id checks and standby ids |
//!
//! Dependencies point down this list, never up: `handle` needs only the state modules
//! (`standby_state`, `shim_pool`, `task`); `stop` only `handle`; `start` uses the spare shim,
//! `standby` uses `start` and `stop`, `reconcile` uses `stop`, `standby` and `spare_shim`; only
//! `trait_impl` and `builder` sit on top. This module only re-exports.

mod builder;
mod handle;
mod ids;
mod images;
mod reconcile;
mod shim_pool;
mod spare_shim;
mod standby;
mod standby_state;
mod start;
mod stop;
mod task;
mod trait_impl;

pub use builder::{Builder, DEFAULT_MAX_UNPACKED_BYTES};
pub use handle::ContainerdBackend;
