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
//! | `boost.rs` | the startup CPU boost: the budget of boosted instances, their permits, and the wait that applies the slot when an instance listens |
//! | `standby.rs` | standbys: made, taken, refilled, released (state in `standby_state.rs`) |
//! | `spare_shim.rs` | the spare shim: keepers made, claimed, removed (state in `shim_pool.rs`) |
//! | `stop.rs` | one container stopped and removed: `teardown`, `terminate`, `delete_objects`, `forget` |
//! | `adopt.rs` | `adopt`: a previous run's running instances of unchanged apps taken over |
//! | `reconcile.rs` | `reconcile` (a previous run's leftovers) and `shutdown` |
//! | `task.rs`, `ids.rs` | the task records (`Created`, `Instance`); id checks and standby ids |
//!
//! No cycles: each file uses only files of the layers before its own, in this order — the
//! records and state (`task`, `ids`, `standby_state`, `shim_pool`); `handle`; `images` and
//! `stop`; `spare_shim` (uses `stop`); `start` (uses `images`, `spare_shim`); `standby` (uses
//! `start`, `stop`); `adopt` (uses `handle`); `reconcile` (uses `stop`, `standby`, `spare_shim`); `builder` and
//! `trait_impl` on top. This module only declares and re-exports.

mod adopt;
mod boost;
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

pub use adopt::Adopted;
pub use builder::{Builder, DEFAULT_MAX_UNPACKED_BYTES};
pub use handle::ContainerdBackend;
