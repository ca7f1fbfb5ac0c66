//! An app built from a Dockerfile: `image = "build:DIR"` and `build = { context, dockerfile,
//! target, args, timeout }` in an `[[apps]]` entry.
//!
//! The spec only says what to build; building is `serverless-build`'s job, done before the
//! image is imported (by `serverless serve` at startup and by `serverless deploy`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::check::{duration_in, duration_str, RawDuration};
use crate::spec::ImageRef;
use crate::ConfigError;

/// The `image` prefix of an app built from a Dockerfile: `image = "build:./app"`.
pub const BUILD_PREFIX: &str = "build:";

/// Shortest and longest build time allowed (`build.timeout`).
pub const BUILD_TIMEOUT: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(7200));

/// What to build an app's image from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildSpec {
    /// The build context: the folder the Dockerfile's `COPY`/`ADD` read from (its
    /// `.dockerignore` is honoured). Relative paths are resolved against the config file's
    /// folder.
    pub context: PathBuf,
    /// The Dockerfile, relative to the context (default `Dockerfile`).
    pub dockerfile: PathBuf,
    /// The stage to build (`--target`); default the last one.
    pub target: Option<String>,
    /// Build arguments (`--build-arg NAME=VALUE`).
    pub args: BTreeMap<String, String>,
    /// The whole build's time budget (default 10 min); a build that takes longer is stopped.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
}

impl BuildSpec {
    /// The default build of `context`: its `Dockerfile`, last stage, no arguments, 10 min.
    pub fn new(context: impl Into<PathBuf>) -> Self {
        Self {
            context: context.into(),
            dockerfile: PathBuf::from("Dockerfile"),
            target: None,
            args: BTreeMap::new(),
            timeout: Duration::from_secs(600),
        }
    }

    /// The Dockerfile's path: [`dockerfile`](Self::dockerfile) under the context unless
    /// absolute.
    pub fn dockerfile_path(&self) -> PathBuf {
        self.context.join(&self.dockerfile)
    }

    /// The image reference a built app has until its image is built: the tag the builder gives
    /// it (`localhost/serverless-build/NAME:latest`).
    pub fn image_tag(app: &str) -> String {
        format!("localhost/serverless-build/{app}:latest")
    }

    /// Resolves a relative context against `dir` (the config file's folder).
    pub(crate) fn resolve(&mut self, dir: &Path) {
        if self.context.is_relative() {
            self.context = dir.join(&self.context);
        }
    }
}

/// `build = { … }` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBuild {
    context: Option<PathBuf>,
    dockerfile: Option<PathBuf>,
    target: Option<String>,
    args: Option<BTreeMap<String, String>>,
    timeout: Option<RawDuration>,
}

/// The app's image and build from its `image` and `build` keys: `image = "build:DIR"`, or a
/// `build` table (with no `image`, or `image = "build:"`…), or a plain image without `build`.
pub(crate) fn parse(
    prefix: &str,
    app: &str,
    image: Option<String>,
    build: Option<RawBuild>,
) -> Result<(ImageRef, Option<BuildSpec>), ConfigError> {
    let f = |name: &str| format!("{prefix}{name}");
    let from_image = match image.as_deref() {
        Some(text) => {
            match text.strip_prefix(BUILD_PREFIX) {
                Some(dir) => Some(dir.to_owned()),
                // A built app's normalized form (an `AppSpec` serialized): the builder's tag
                // for the app next to its build table.
                None if build.is_some() && text == BuildSpec::image_tag(app) => None,
                None => {
                    if build.is_some() {
                        return Err(ConfigError::invalid(
                        f("build"),
                        "(a build table next to a ready image)",
                        format!("only with image = \"build:DIR\" or without image; image is {text:?}"),
                    ));
                    }
                    let image = ImageRef::parse(text).map_err(|expected| {
                        ConfigError::invalid(
                            f("image"),
                            format!("{text:?}"),
                            format!("{expected}, or build:DIR to build DIR/Dockerfile"),
                        )
                    })?;
                    return Ok((image, None));
                }
            }
        }
        None if build.is_none() => {
            return Err(ConfigError::invalid(
                f("image"),
                "(missing)",
                "oci-archive:PATH, a registry reference, or build:DIR (or a build table)",
            ))
        }
        None => None,
    };
    let raw = build.unwrap_or_default();
    let context = match (from_image, raw.context) {
        (Some(dir), None) if dir.is_empty() => {
            return Err(ConfigError::invalid(
                f("image"),
                "\"build:\"",
                "build:DIR, the folder holding the Dockerfile (e.g. \"build:./app\")",
            ))
        }
        (Some(dir), None) => PathBuf::from(dir),
        (Some(dir), Some(_)) if !dir.is_empty() => {
            return Err(ConfigError::invalid(
                f("build.context"),
                "(given twice)",
                format!("the folder in one place: image = \"build:{dir}\" or build.context"),
            ))
        }
        (_, Some(context)) => context,
        (None, None) => PathBuf::from("."),
    };
    if context.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            f("build.context"),
            "\"\"",
            "a folder, e.g. \".\" or \"./app\"",
        ));
    }
    let mut spec = BuildSpec::new(context);
    if let Some(dockerfile) = raw.dockerfile {
        if dockerfile.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                f("build.dockerfile"),
                "\"\"",
                "a file relative to the context, e.g. \"Dockerfile\"",
            ));
        }
        spec.dockerfile = dockerfile;
    }
    if let Some(target) = raw.target {
        let ok = !target.is_empty()
            && target.len() <= 128
            && target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(ConfigError::invalid(
                f("build.target"),
                format!("{target:?}"),
                "a stage name (FROM … AS NAME): letters, digits, '-', '_', '.', 1..=128 characters",
            ));
        }
        spec.target = Some(target);
    }
    if let Some(args) = raw.args {
        for (k, v) in &args {
            let ok = !k.is_empty()
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !v.contains('\0');
            if !ok {
                return Err(ConfigError::invalid(
                    f(&format!("build.args.{k}")),
                    format!("{v:?}"),
                    "an ARG name (letters, digits, '_') and a value without NUL",
                ));
            }
        }
        spec.args = args;
    }
    spec.timeout = duration_in(
        &f("build.timeout"),
        raw.timeout,
        spec.timeout,
        BUILD_TIMEOUT.0,
        BUILD_TIMEOUT.1,
    )?;
    Ok((ImageRef::Registry(BuildSpec::image_tag(app)), Some(spec)))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::{Config, ImageRef};

    fn err(toml: &str) -> String {
        Config::from_toml(toml).expect_err(toml).to_string()
    }

    #[test]
    fn build_dir_in_image() {
        let c = Config::from_toml("[[apps]]\nname = \"a\"\nimage = \"build:./app\"\n").unwrap();
        let build = c.apps[0].build.as_ref().expect("a build");
        assert_eq!(build.context, PathBuf::from("./app"));
        assert_eq!(build.dockerfile_path(), PathBuf::from("./app/Dockerfile"));
        assert_eq!(build.timeout, Duration::from_secs(600));
        assert_eq!(
            c.apps[0].image,
            ImageRef::Registry("localhost/serverless-build/a:latest".into())
        );
    }

    /// A built app's spec, serialized (as the admin API and the fuzz target do), parses back
    /// to the same spec: its image is the builder's tag, next to its build table. Found by
    /// the config fuzz target (`image = "build:ghive:./hello.tar"`).
    #[test]
    fn a_built_apps_normalized_spec_round_trips() {
        let c =
            Config::from_toml("[[apps]]\nname = \"hello\"\nimage = \"build:ghive:./hello.tar\"\n")
                .unwrap();
        let json = serde_json::to_string(&c.apps[0]).unwrap();
        let again = crate::AppSpec::from_json(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
        assert_eq!(again, c.apps[0]);
        // Another app's tag next to a build table is still refused.
        let other = json.replace("serverless-build/hello:", "serverless-build/other:");
        assert!(crate::AppSpec::from_json(&other).is_err(), "{other}");
    }

    #[test]
    fn build_table() {
        let c = Config::from_toml(
            "[[apps]]\nname = \"a\"\nbuild = { context = \"src\", dockerfile = \"web.Dockerfile\", \
             target = \"final\", args = { VERSION = \"1.2\" }, timeout = \"90s\" }\n",
        )
        .unwrap();
        let b = c.apps[0].build.as_ref().expect("a build");
        assert_eq!(b.context, PathBuf::from("src"));
        assert_eq!(b.dockerfile, PathBuf::from("web.Dockerfile"));
        assert_eq!(b.target.as_deref(), Some("final"));
        assert_eq!(b.args["VERSION"], "1.2");
        assert_eq!(b.timeout, Duration::from_secs(90));
        // A ready image has no build.
        let c = Config::from_toml("[[apps]]\nname = \"a\"\nimage = \"x/y:1\"\n").unwrap();
        assert!(c.apps[0].build.is_none());
    }

    #[test]
    fn bad_build_keys_name_field_value_and_range() {
        let cases = [
            (
                "image = \"build:\"",
                "invalid apps[0].image = \"build:\": expected build:DIR",
            ),
            (
                "image = \"x/y:1\"\nbuild = { target = \"t\" }",
                "invalid apps[0].build = (a build table next to a ready image)",
            ),
            (
                "image = \"build:a\"\nbuild = { context = \"b\" }",
                "invalid apps[0].build.context = (given twice)",
            ),
            (
                "build = { target = \"no way\" }",
                "invalid apps[0].build.target = \"no way\": expected a stage name",
            ),
            (
                "build = { args = { \"A-B\" = \"1\" } }",
                "invalid apps[0].build.args.A-B = \"1\": expected an ARG name",
            ),
            (
                "build = { timeout = \"3h\" }",
                "invalid apps[0].build.timeout = \"3h\": expected a duration in 1s..=2h",
            ),
            (
                "build = { dockerfile = \"\" }",
                "invalid apps[0].build.dockerfile = \"\"",
            ),
        ];
        for (keys, want) in cases {
            let got = err(&format!("[[apps]]\nname = \"a\"\n{keys}\n"));
            assert!(got.starts_with(want), "{keys}: {got}");
        }
        let got = err("[[apps]]\nname = \"a\"\nbuild = { context = \".\", nope = 1 }\n");
        assert!(got.contains("unknown field `nope`"), "{got}");
    }

    #[test]
    fn relative_context_is_resolved_against_the_config_file() {
        let dir = std::env::temp_dir().join(format!("build-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("serverless.toml");
        std::fs::write(&file, "[[apps]]\nname = \"a\"\nimage = \"build:app\"\n").unwrap();
        let c = Config::from_path(&file).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(c.apps[0].build.as_ref().unwrap().context, dir.join("app"));
    }
}
