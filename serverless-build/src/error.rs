//! Why a build failed, in one line each.

use std::path::PathBuf;
use std::time::Duration;

/// A failed build. Each message is one line: what failed, where, and the tail of its output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The build context is not a folder.
    #[error("no build context at {}: expected a folder holding a Dockerfile", path.display())]
    NoContext {
        /// The context asked for.
        path: PathBuf,
    },
    /// The Dockerfile does not exist.
    #[error("no Dockerfile at {}", path.display())]
    NoDockerfile {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The builder program could not be started.
    #[error(
        "cannot run {program}: {source} (Debian package buildah; scripts/install-deps installs it)"
    )]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The Dockerfile has an instruction the builder does not know or cannot parse.
    #[error("Dockerfile {}{}: {message}", path.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Syntax {
        /// The Dockerfile.
        path: PathBuf,
        /// The 1-based line of the bad instruction, when found.
        line: Option<usize>,
        /// The builder's complaint.
        message: String,
    },
    /// A step failed (a `RUN` exited non-zero, a `COPY` source is missing, a base image cannot
    /// be found…).
    #[error("build failed at {step}: {message}{}", tail_text(tail))]
    StepFailed {
        /// The step, as `[1/2] STEP 5/6: RUN make`.
        step: String,
        /// The builder's reason (`exit status 3`).
        message: String,
        /// The last lines of output before the failure.
        tail: Vec<String>,
    },
    /// The builder failed outside any step.
    #[error("build failed: {message}{}", tail_text(tail))]
    Failed {
        /// The builder's reason.
        message: String,
        /// The last lines of output.
        tail: Vec<String>,
    },
    /// The build took longer than its budget and was stopped.
    #[error("build stopped after {}{}: over its time budget (build.timeout)", humantime(*after), step.as_ref().map(|s| format!(" at {s}")).unwrap_or_default())]
    TimedOut {
        /// The budget.
        after: Duration,
        /// The step that was running.
        step: Option<String>,
    },
    /// The built image is larger than allowed.
    #[error("built image is {bytes} bytes, over the limit of {max}")]
    TooLarge {
        /// Its size as an archive.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// Writing the image out as an OCI archive failed.
    #[error("cannot export the built image to {}: {message}", path.display())]
    Export {
        /// The archive.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A file operation of the build failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

impl BuildError {
    /// A step failed or the Dockerfile is wrong: the user's to fix, not the engine's.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::NoContext { .. }
                | Self::NoDockerfile { .. }
                | Self::Syntax { .. }
                | Self::StepFailed { .. }
                | Self::TimedOut { .. }
                | Self::TooLarge { .. }
        )
    }
}

fn tail_text(tail: &[String]) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!("; last output: {}", tail.join(" | "))
    }
}

fn humantime(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}
