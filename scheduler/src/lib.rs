//! localml-scheduler: receives inference requests from standard Open Inference Protocol
//! clients and routes each to a worker PC; workers join and report through the cluster
//! API. The policy (which worker) is `localml-framework`; cluster state is
//! `localml-store`; this crate is the runtime around them.
//!
//! # Layout
//! - [`server`]: [`run`]: builds the parts, serves both ports, stops gracefully.
//! - [`cli`]: flags and the process entry point; [`config`]: the YAML config.
//! - [`workers`]: the workers' table (lifecycle, leases, cordons, registrations in the
//!   store) and the routing snapshot.
//! - [`parameters`]: the `localml.*` request parameters that steer scheduling.
//! - [`queue`]: the admission queue where requests wait for a free worker.
//! - [`dispatch`]: one request: queue, schedule, forward, retry on another worker.
//! - [`forward`]: the hop without re-encoding tensors: a request's head decoded, its
//!   bytes forwarded, the worker's answer returned as it came.
//! - [`leader`]: leader election through the store, fenced writes.
//! - [`jobs`]: durable async jobs: the leader's runner and retention.
//! - [`catalog`]: the model catalog: versions in the store, their files as blobs on disk,
//!   their ONNX inputs and outputs read without loading weights.
//! - [`deployments`]: model deployments: specs, the leader's controller, assignments.
//! - [`services`]: the gRPC services (inference, jobs, cluster, admin); each maps its
//!   errors to `tonic::Status` in one place.
//! - [`auth`]: API keys with scopes on the client port.
//! - [`rest`]: the Open Inference Protocol over HTTP/REST, converted to and served by the
//!   gRPC service.
//! - [`backup`]: backups of the cluster state: the file format, the chunks the Backup
//!   service streams, and restoring into a stopped scheduler's store.
//! - [`size_limit`]: RESOURCE_EXHAUSTED for oversized messages.
//! - [`stats`]: per-model counters for ModelStatistics and `/metrics`.
//! - [`observe`]: `/metrics` (Prometheus), `/healthz`, `/readyz`.

pub mod auth;
pub mod backup;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod deployments;
pub mod dispatch;
pub mod failure;
pub mod forward;
pub mod jobs;
pub mod leader;
pub mod observe;
pub mod parameters;
pub mod queue;
pub mod rest;
pub mod server;
pub mod services;
pub mod size_limit;
pub mod stack;
pub mod stats;
pub mod trust;
pub mod workers;

pub use server::{run, Listeners, SchedulerError};
