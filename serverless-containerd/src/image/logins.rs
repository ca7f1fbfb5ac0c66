//! Registry credentials: given one by one ([`Builder::registry_auth`](crate::Builder::registry_auth))
//! or read from an auth file in the format `docker login` and `podman login` write
//! (`{"auths": {"ghcr.io": {"auth": base64("user:password")}}}`,
//! [`Builder::registry_auth_file`](crate::Builder::registry_auth_file)).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::Reference;
use serde::Deserialize;

/// Registry credentials by host (`host[:port]` as in image references); never printed.
#[derive(Clone, Default)]
pub(crate) struct RegistryLogins(HashMap<String, (String, String)>);

impl fmt::Debug for RegistryLogins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(host, (user, _))| (host, user)))
            .finish()
    }
}

/// An auth file that cannot be used; names the file and, for a bad entry, its key — never a
/// password.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuthFileError {
    /// The file cannot be read.
    #[error("reading {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    /// The file is not JSON of the auth file's shape.
    #[error("{} is not a registry auth file: {cause}", path.display())]
    Parse {
        path: PathBuf,
        cause: serde_json::Error,
    },
    /// An entry's `auth` is not base64 of `user:password`.
    #[error("{}: auths.{key:?}.auth is not base64 of user:password", path.display())]
    BadAuth { path: PathBuf, key: String },
    /// An entry has an empty user name.
    #[error("{}: auths.{key:?} has an empty user name", path.display())]
    EmptyUser { path: PathBuf, key: String },
}

#[derive(Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

impl RegistryLogins {
    /// Sets the credentials for `host`, replacing earlier ones.
    pub(crate) fn insert(&mut self, host: String, username: String, password: String) {
        self.0.insert(host, (username, password));
    }

    /// The user and password for `reference`'s registry (`docker.io` also names Docker Hub's
    /// `index.docker.io`).
    pub(crate) fn for_reference(&self, reference: &Reference) -> Option<&(String, String)> {
        self.0
            .get(reference.registry())
            .or_else(|| self.0.get(reference.resolve_registry()))
    }

    /// Adds the entries of an auth file, keeping credentials already set for a host (given one
    /// by one, they win). The error names the file and, for a bad entry, its key — never a
    /// password.
    pub(crate) fn add_auth_file(&mut self, path: &Path) -> Result<(), AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|cause| AuthFileError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let file: AuthFile = serde_json::from_str(&text).map_err(|cause| AuthFileError::Parse {
            path: path.to_owned(),
            cause,
        })?;
        for (key, entry) in file.auths {
            let (user, password) = match (entry.auth, entry.username, entry.password) {
                (Some(auth), _, _) => {
                    let decoded = base64::engine::general_purpose::STANDARD
                        .decode(auth.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    let Some((u, p)) = decoded.as_deref().and_then(|d| d.split_once(':')) else {
                        return Err(AuthFileError::BadAuth {
                            path: path.to_owned(),
                            key,
                        });
                    };
                    (u.to_owned(), p.to_owned())
                }
                (None, Some(u), Some(p)) => (u, p),
                // Identity tokens and credential helpers are not supported: such an entry is
                // skipped (the registry is pulled from anonymously and says so if it refuses).
                _ => {
                    tracing::warn!(file = %path.display(), registry = %key, "auth file entry without auth or username/password skipped");
                    continue;
                }
            };
            if user.is_empty() {
                return Err(AuthFileError::EmptyUser {
                    path: path.to_owned(),
                    key,
                });
            }
            self.0.entry(host_of(&key)).or_insert((user, password));
        }
        Ok(())
    }
}

/// The registry host of an auth file key: `ghcr.io`, `https://ghcr.io`,
/// `https://index.docker.io/v1/` (Docker Hub: `docker.io`), `127.0.0.1:5000/some/path`.
fn host_of(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = rest.split('/').next().unwrap_or(rest).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(s: &str) -> Reference {
        s.parse().unwrap()
    }

    #[test]
    fn auth_file_keys_and_entries() {
        let dir = std::env::temp_dir().join(format!("sl-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &path,
            serde_json::json!({
                "auths": {
                    "https://index.docker.io/v1/": {"auth": b64("hub:pw1")},
                    "ghcr.io": {"auth": b64("gh:pw:with:colons")},
                    "http://127.0.0.1:5000/v2/": {"username": "local", "password": "pw3"},
                    "quay.io": {"identitytoken": "x"},
                },
                "credsStore": "desktop",
            })
            .to_string(),
        )
        .unwrap();
        let mut logins = RegistryLogins::default();
        logins.insert("ghcr.io".into(), "explicit".into(), "wins".into());
        logins.add_auth_file(&path).unwrap();
        let user = |r: &str| logins.for_reference(&reference(r)).cloned();
        assert_eq!(user("busybox"), Some(("hub".into(), "pw1".into())));
        assert_eq!(
            user("ghcr.io/o/r:1"),
            Some(("explicit".into(), "wins".into()))
        );
        assert_eq!(
            user("127.0.0.1:5000/x:1"),
            Some(("local".into(), "pw3".into()))
        );
        assert_eq!(user("quay.io/o/r:1"), None);
        let debug = format!("{logins:?}");
        assert!(!debug.contains("pw") && !debug.contains("wins"), "{debug}");

        let mut only_file = RegistryLogins::default();
        only_file.add_auth_file(&path).unwrap();
        assert_eq!(
            only_file.for_reference(&reference("ghcr.io/o/r:1")),
            Some(&("gh".to_owned(), "pw:with:colons".to_owned()))
        );

        std::fs::write(&path, r#"{"auths": {"bad.io": {"auth": "%%%"}}}"#).unwrap();
        let err = RegistryLogins::default()
            .add_auth_file(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"bad.io\"") && err.contains("not base64"),
            "{err}"
        );
        std::fs::write(&path, "not json").unwrap();
        let err = RegistryLogins::default().add_auth_file(&path).unwrap_err();
        assert!(matches!(err, AuthFileError::Parse { .. }), "{err}");
        assert!(
            err.to_string().contains("is not a registry auth file"),
            "{err}"
        );
        let err = RegistryLogins::default()
            .add_auth_file(&dir.join("missing.json"))
            .unwrap_err();
        assert!(matches!(err, AuthFileError::Read { .. }), "{err}");
        assert!(
            err.to_string().contains("reading") && err.to_string().contains("missing.json"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
