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
    engine: &str,
) -> String {
    hash_parts(app, &image.chain_id, &image.config, engine)
}

/// `engine`: the engine-wide settings the instance is made with (see
/// `ContainerdBackend::engine_inputs`).
fn hash_parts(
    app: &serverless_core::AppSpec,
    chain_id: &str,
    config: &Option<oci_spec::image::Config>,
    engine: &str,
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
    h.update(chain_id.as_bytes());
    h.update(b"\n");
    h.update(serde_json::to_vec(config).unwrap_or_default());
    h.update(b"\n");
    h.update(engine.as_bytes());
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use serverless_core::{AppSpec, ImageRef, Slot};

    use super::hash_parts;

    /// What changes the instance changes the hash; routing and scaling do not.
    #[test]
    fn spec_hash_follows_what_the_instance_runs() {
        let app = AppSpec::new("a", ImageRef::Registry("example/a:1".into()));
        let hash = |app: &AppSpec, chain: &str| hash_parts(app, chain, &None, "");
        let base = hash(&app, "sha256:1");
        assert_eq!(base.len(), 32);
        assert_eq!(base, hash(&app.clone(), "sha256:1"), "stable");
        let mut routed = app.clone();
        routed.hosts.push("other.example".into());
        routed.scale.max += 1;
        routed.scale.min = 1;
        assert_eq!(
            base,
            hash(&routed, "sha256:1"),
            "hosts and scale do not count"
        );
        let mut env = app.clone();
        env.env.insert("K".into(), "v".into());
        let mut slot = app.clone();
        slot.slot = "c.250-m512".parse::<Slot>().unwrap();
        let mut limits = app.clone();
        limits.limits.max_concurrent_requests += 1;
        for (what, changed) in [
            ("env", hash(&env, "sha256:1")),
            ("slot", hash(&slot, "sha256:1")),
            ("limits", hash(&limits, "sha256:1")),
            ("image layers", hash(&app, "sha256:2")),
            (
                "engine settings",
                hash_parts(&app, "sha256:1", &None, "userns 1 2"),
            ),
        ] {
            assert_ne!(base, changed, "{what} counts");
        }
    }
}
