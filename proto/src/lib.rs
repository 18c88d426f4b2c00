//! localml-proto: the wire types (gRPC definitions) and the tensor codec. Servers are
//! built on them in `localml-serving`, the scheduler and the worker.
//!
//! # Layout
//! - [`inference`]: the Open Inference Protocol (KServe v2) `GRPCInferenceService` with
//!   Triton's extensions, generated from `proto/inference/*.proto`. Names and field numbers
//!   match the published protos so standard clients work unchanged.
//! - [`localml::v1`]: the cluster API (workers join and report) and the admin API.
//! - [`oip`]: OIP answers built from a model's signature (metadata, config).
//! - [`parameters`]: the `localml.*` request and response parameters.
//! - [`tensor`]: the protocol's tensor datatypes and a codec for typed and raw contents.
//! - [`time`]: wall-clock milliseconds as the `*_unix_ms` fields carry them.
//! - [`units`]: byte counts as people read them.

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

pub mod names;
pub mod oip;
pub mod parameters;
pub mod tensor;
pub mod time;
pub mod units;
