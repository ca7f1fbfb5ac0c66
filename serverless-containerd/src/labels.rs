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
/// On an instance's container: [`spec_hash`] of the spec and image it was made from. A new
/// gateway adopts a running instance only when its app's spec and image hash the same.
pub(crate) const SPEC_HASH: &str = "serverless.spec-hash";

/// What decides whether a running instance still matches its app: the [`AppSpec`] as JSON
/// (image reference, slot, env, command, port, limits, network, security, …; not `hosts` and
/// `scale`, which change routing and the pool, not the instance) and the prepared image's
/// chain id and config (a rebuilt image under the same reference hashes differently).
/// SHA-256, the first 16 bytes in hex.
///
/// [`AppSpec`]: serverless_core::AppSpec
pub(crate) fn spec_hash(
    app: &serverless_core::AppSpec,
    image: &crate::image::PreparedImage,
) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut spec = serde_json::to_value(app).unwrap_or_default();
    if let Some(fields) = spec.as_object_mut() {
        fields.remove("hosts");
        fields.remove("scale");
    }
    h.update(spec.to_string());
    h.update(b"\n");
    h.update(image.chain_id.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(&image.config).unwrap_or_default());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
