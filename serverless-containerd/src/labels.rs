//! Label keys on our containers, snapshots, images and leases: how reconcile finds what we made.

/// On everything we create.
pub(crate) const MANAGED: &str = "serverless.managed";
/// The app an instance belongs to.
pub(crate) const APP: &str = "serverless.app";
/// The instance id (for a standby: its container id).
pub(crate) const INSTANCE: &str = "serverless.instance";
/// On a standby's container and snapshot: created for an app, not started yet.
pub(crate) const STANDBY: &str = "serverless.standby";
/// On a spare shim's keeper container (see `backend/spare_shim.rs`).
pub(crate) const SPARE_SHIM: &str = "serverless.spare-shim";
