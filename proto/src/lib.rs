//! gRPC definitions for localml.
//!
//! # Layout
//! - [`inference`]: the Open Inference Protocol (KServe v2) `GRPCInferenceService` with
//!   Triton's extensions, generated from `proto/inference/*.proto`. Names and field numbers
//!   match the published protos so standard clients work unchanged.
//! - [`localml::v1`]: the cluster API (workers join and report) and the admin API.
//! - [`http`], [`metrics`]: `/metrics`, `/healthz`, `/readyz` and the Prometheus text format.
//! - [`tensor`]: the protocol's tensor datatypes and a codec for typed and raw contents.

#[allow(clippy::all, missing_docs)]
pub mod inference {
    tonic::include_proto!("inference");
}

pub mod localml {
    #[allow(clippy::all, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("localml.v1");
    }
}

pub mod http;
pub mod metrics;
pub mod oip;
pub mod service;
pub mod tensor;
