//! The scheduler's gRPC services. Each turns the runtime's errors into `tonic::Status`
//! in one place (its error type's `From` impl), so the codes clients see are decided
//! once per service.
//!
//! - [`inference`]: `inference.GRPCInferenceService` for clients (OIP, Triton-compatible).
//! - [`jobs`]: `localml.v1.Jobs`, durable async jobs; any replica answers.
//! - [`cluster`]: `localml.v1.Cluster`, workers join, report and leave.
//! - [`admin`]: `localml.v1.Admin`, operators' views, cordons and deployments.
//! - [`keys`]: `localml.v1.Keys`, API keys for clients and operators.
//! - [`trust`]: `localml.v1.Trust`, join tokens, operator certificates, worker removal.
//! - [`catalog`]: `localml.v1.Catalog`, model files and versions pushed to the scheduler.
//! - [`backup`]: `localml.v1.Backup`, the cluster state for `localml backup`.

pub mod admin;
pub mod backup;
pub mod catalog;
pub mod cluster;
pub mod inference;
pub mod jobs;
pub mod keys;
pub mod trust;
