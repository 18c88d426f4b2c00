//! Client-side pieces of the `localml` command line, also used by the integration tests
//! and the benchmark.
//!
//! # Layout
//! - [`backup`]: `localml backup` and `localml restore`.
//! - [`catalog`]: `localml models push|list|show|delete`, the model catalog.
//! - [`client`]: connect, build requests from tensors, decode responses.
//! - [`dashboard`]: `kubectl localml top`.
//! - [`jobs`]: the `localml jobs` commands.
//! - [`keys`]: which API key the CLI sends; the `localml keys` commands.
//! - [`json`], [`npy`]: input tensors from JSON and NumPy files.
//! - [`table`]: the `localml workers` and `localml models` tables.
//! - [`trust`]: join tokens, operator certificates, worker removal; TLS to workers.
//! - [`up`]: the all-in-one local cluster.

pub mod backup;
pub mod catalog;
pub mod client;
pub mod dashboard;
pub mod jobs;
pub mod json;
pub mod keys;
pub mod npy;
pub mod table;
pub mod trust;
pub mod up;
