//! Code the example binaries share with their tests, so a test drives the very code an example
//! runs: [`axum_app`], the router of `axum.rs`.

pub mod axum_app;
