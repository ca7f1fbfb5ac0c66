//! Builds an app's image from a Dockerfile, for `image = "build:DIR"` and `serverless deploy
//! DIR`: the [`Builder`] trait, and [`Buildah`], its implementation over Debian's `buildah`.
//!
//! A build takes a context folder (its `.dockerignore` honoured), a Dockerfile, an optional
//! target stage and build arguments, and writes the image as an OCI archive, which the engine
//! imports like any other `oci-archive:` image. While it runs it reports each step as it starts
//! and finishes, with the time it took and whether the layer cache answered ([`BuildEvent`]).
//!
//! A build is bounded and sandboxed: a time budget (`build.timeout`), a cap on the image's size,
//! the output kept only as a tail, and [`Buildah`] runs each `RUN` step in a runc container with
//! no network, a seccomp filter, a reduced capability set and a memory limit (see its docs for
//! what it isolates and what it does not).
//!
//! ```no_run
//! # async fn f() -> Result<(), serverless_build::BuildError> {
//! use serverless_build::{Buildah, BuildEvent, BuildRequest, Builder};
//!
//! let builder = Buildah::new("/var/lib/serverless/build");
//! let request = BuildRequest::new("./myapp", "localhost/serverless-build/myapp:latest", "/tmp/myapp.tar");
//! let built = builder
//!     .build(&request, &mut |event| {
//!         if let BuildEvent::StepFinished(t) = event {
//!             println!("{} ({:?}{})", t.step, t.elapsed, if t.cached { ", cached" } else { "" });
//!         }
//!     })
//!     .await?;
//! println!("{} in {}", built.image_id, built.archive.display());
//! # Ok(()) }
//! ```

mod buildah;
mod error;
mod event;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use buildah::{Buildah, Isolation};
pub use error::BuildError;
pub use event::{BuildEvent, Step, StepTime, MAX_LINE};
use serverless_core::BuildSpec;

/// What to build, and where to write the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRequest {
    /// The build context (the folder `COPY` reads from).
    pub context: PathBuf,
    /// The Dockerfile, relative to the context unless absolute (default `Dockerfile`).
    pub dockerfile: PathBuf,
    /// The stage to build; `None` = the last.
    pub target: Option<String>,
    /// Build arguments.
    pub args: BTreeMap<String, String>,
    /// The name the builder tags the image with.
    pub tag: String,
    /// The OCI archive to write (replaced only when the build succeeds).
    pub output: PathBuf,
    /// The whole build's time budget (default 10 min).
    pub timeout: Duration,
}

impl BuildRequest {
    /// Builds `context/Dockerfile`'s last stage as `tag` into the archive `output`.
    pub fn new(
        context: impl Into<PathBuf>,
        tag: impl Into<String>,
        output: impl Into<PathBuf>,
    ) -> Self {
        Self::from_spec(&BuildSpec::new(context), tag, output)
    }

    /// The request for an app's [`BuildSpec`] (its `build` config).
    pub fn from_spec(spec: &BuildSpec, tag: impl Into<String>, output: impl Into<PathBuf>) -> Self {
        Self {
            context: spec.context.clone(),
            dockerfile: spec.dockerfile.clone(),
            target: spec.target.clone(),
            args: spec.args.clone(),
            tag: tag.into(),
            output: output.into(),
            timeout: spec.timeout,
        }
    }

    /// The Dockerfile's path ([`dockerfile`](Self::dockerfile) under the context unless
    /// absolute).
    pub fn dockerfile_path(&self) -> PathBuf {
        self.context.join(&self.dockerfile)
    }
}

/// A finished build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The image's ID (its config digest, hex, as the builder names it).
    pub image_id: String,
    /// The OCI archive it was written to.
    pub archive: PathBuf,
    /// Every step, in order, with its time.
    pub steps: Vec<StepTime>,
    /// The whole build, export included.
    pub elapsed: Duration,
}

impl Built {
    /// How many steps the layer cache answered.
    pub fn cached_steps(&self) -> usize {
        self.steps.iter().filter(|s| s.cached).count()
    }
}

/// Something that builds images from Dockerfiles. [`Buildah`] is the one this crate ships; an
/// embedder may plug in another (BuildKit, a remote builder).
#[async_trait::async_trait]
pub trait Builder: Send + Sync + std::fmt::Debug {
    /// Builds `request`, reporting progress to `events` as it happens; on success the image is
    /// at `request.output`, on failure nothing is left there (nor half-built in the builder's
    /// storage).
    async fn build(
        &self,
        request: &BuildRequest,
        events: &mut (dyn FnMut(BuildEvent) + Send),
    ) -> Result<Built, BuildError>;
}
