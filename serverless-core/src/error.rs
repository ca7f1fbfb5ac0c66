//! Configuration errors.

use std::path::PathBuf;

/// A configuration that cannot be used.
///
/// Every variant names where the problem is: [`ConfigError::Invalid`] carries the dotted field
/// path (`apps[0].limits.max_concurrent_requests`), the rejected value and the accepted range.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field holds a value outside its accepted range or form.
    #[error("invalid {field} = {value}: expected {expected}")]
    Invalid {
        /// Dotted path of the field, e.g. `apps[0].slot`.
        field: String,
        /// The rejected value, as written.
        value: String,
        /// What the field accepts, e.g. `an integer in 1..=256`.
        expected: String,
    },
    /// The document is not well-formed TOML/JSON, has an unknown key or a value of the wrong type.
    #[error("{format} syntax: {message}")]
    Syntax {
        /// `toml` or `json`.
        format: &'static str,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read config {}: {source}", path.display())]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ConfigError {
    /// Builds an [`ConfigError::Invalid`].
    pub fn invalid(
        field: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            field: field.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// The dotted path of the offending field, when the error is about one field.
    pub fn field(&self) -> Option<&str> {
        match self {
            Self::Invalid { field, .. } => Some(field),
            _ => None,
        }
    }
}
