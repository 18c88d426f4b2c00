//! localml-framework: how the scheduler chooses a worker, as a library without I/O.
//! kube-scheduler's framework (extension points, Status/Code, CycleState, a snapshot) with
//! localml's plugins and profiles. It depends on no async runtime, gRPC or store crate, so
//! Cargo enforces what the design needs: a decision runs on an in-memory snapshot, and
//! the same policy code runs in the scheduler and, unchanged, in the simulator
//! (`localml-sim`).
//!
//! # Layout
//! - [`contracts`]: plugin traits for each extension point, [`Status`] and [`Code`],
//!   [`CycleState`], the snapshot types ([`Snapshot`], [`WorkerInfo`], [`RequestInfo`]).
//!   Re-exported at the crate root: every plugin and caller uses them.
//! - [`runtime`]: a profile's plugin chain running one scheduling cycle (filter, score,
//!   normalize, reserve) and the rejection it explains.
//! - [`registry`]: named plugin factories; duplicates are rejected.
//! - [`plugins`]: the built-in plugins, one module each, depending on the contracts only.
//! - [`profile`]: profiles from YAML (enabled plugins, weights, arguments) and the
//!   built-in `default` and `energy-saver` ones.
//! - [`estimator`]: the peak-EWMA latency estimator per worker and model.

pub mod contracts;
pub mod estimator;
pub mod plugins;
pub mod profile;
pub mod registry;
pub mod runtime;

pub use contracts::*;
