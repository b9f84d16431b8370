//! # carta-dr-backends
//!
//! Implementations of the [`carta_dr_core::Store`] contract, and layers that wrap any store.
//!
//! * [`MemoryStore`]: in-memory, for tests (ours and our users').
//! * [`LocalStore`]: the local file system, with durable, atomic writes.
//! * `S3Store` (feature `s3`): S3-compatible object storage.
//! * [`layers`]: retry, circuit breaker, fault injection, concurrency limit.
//! * [`open`]: a store from a URL (`file:///path`, `s3://bucket/prefix?...`, `memory://`).
//! * [`conformance`]: the one conformance suite every backend passes.

#![warn(missing_docs)]

pub mod conformance;
pub mod layers;
mod local;
mod memory;
mod open;
#[cfg(feature = "s3")]
mod s3;

pub use local::{LocalOptions, LocalStore};
pub use memory::MemoryStore;
pub use open::open;
#[cfg(feature = "s3")]
pub use s3::{S3Config, S3Store};
