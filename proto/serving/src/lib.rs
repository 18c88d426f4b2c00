//! localml-serving: what the scheduler and the worker both serve, so that neither copies
//! the other and the wire crate (`localml-proto`) stays types only.
//!
//! # Layout
//! - [`service`]: one `GRPCInferenceService` adapter over an [`service::InferenceBackend`]
//!   (the Triton methods that do not apply answer UNIMPLEMENTED), the client's deadline
//!   (`grpc-timeout`), accepted connections with TCP_NODELAY, and streaming inference.
//! - [`http`]: the `--http-listen` endpoint: `/metrics`, `/healthz`, `/readyz`.
//! - [`process`]: logging setup, named listeners, graceful stop on Ctrl-C/SIGTERM.
//! - [`metrics`]: latency histograms and the Prometheus text exposition (written by the
//!   `prometheus` crate's encoder), and gRPC code labels.
//! - [`task`]: config.yaml's `task:` (how a photo becomes an image model's input, and
//!   its labels), checked by the worker and by the catalog.
//! - [`blobs`]: a model file streamed in chunks (the catalog's FetchBlob, on the
//!   scheduler and between workers).

pub mod blobs;
pub mod http;
pub mod metrics;
pub mod process;
pub mod service;
pub mod task;
