//! Core model of the serverless container engine: the app spec ([`AppSpec`], [`Slot`],
//! [`Limits`], [`Scale`]), the config file ([`Config`], TOML or the seed's `now.json`) with
//! validation that names field, value and range, and the [`ContainerBackend`] trait that the
//! containerd backend implements.
//!
//! ```
//! use serverless_core::{Config, Slot};
//!
//! let config = Config::from_toml(r#"
//!     [[apps]]
//!     name = "hello"
//!     image = "oci-archive:./hello.tar"
//!     slot = "c.5-m256"
//! "#)?;
//! assert_eq!(config.apps[0].slot, "c.5-m256".parse::<Slot>()?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! - `test-util`: `fake::FakeBackend`, an in-process backend whose instances are tokio tasks
//!   serving HTTP on loopback, with configurable start delay, boot failure and refusal to listen;
//!   and `conformance::run`, the suite that checks any backend against the
//!   [`ContainerBackend`] contract.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backend;
mod check;
pub mod config;
pub mod cpu_boost;
mod error;
pub mod slot;
pub mod spec;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod fake;

pub use backend::{
    BackendError, Connection, ContainerBackend, ErrorKind, Exit, InstanceId, OwnedInstance, Started,
};
pub use config::{
    BuildSpec, Config, ContainerdConfig, GlobalLimits, KubernetesConfig, NetworkConfig,
    NetworkMode, RegistryCredentials, Seccomp, SecretError, SecretProblem, SecretSource, Security,
    SecurityConfig, ServerConfig, TlsConfig,
};
pub use cpu_boost::CpuBoost;
pub use error::ConfigError;
pub use slot::{Slot, SlotError};
pub use spec::{AppSpec, ImageRef, ImageRefError, Limits, Scale};
