//! What a failed call to a worker means, by where the error came from (issue #11):
//! the transport (the worker could not be reached, or the connection broke), the
//! worker's own answer about the request, or the client's deadline. The dispatcher acts
//! on it per request (try another worker, mark the worker unreachable, or answer the
//! client); the job runner on the dispatcher's final answer ([`retry_later`]).

use tonic::{Code, Status};

/// What a worker's failure means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The worker could not be reached or the connection broke (tonic attaches the
    /// transport's or HTTP/2's error as the source): try another worker; the worker is
    /// marked unreachable.
    Unreachable,
    /// The worker answered that it cannot take it now: busy (RESOURCE_EXHAUSTED),
    /// no longer holding the model (NOT_FOUND: it unloaded it since its last report),
    /// aborted or unavailable (draining, stopping): try another worker; not marked.
    Elsewhere,
    /// The worker's own answer about the request (INVALID_ARGUMENT, INTERNAL from ONNX
    /// Runtime, ...): the client gets it as it is, not retried on every worker.
    Answer,
}

/// Classifies a worker's failed answer (the client's deadline is checked before).
pub fn classify(status: &Status) -> Failure {
    let transport = std::error::Error::source(status).is_some();
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled | Code::Internal if transport => {
            Failure::Unreachable
        }
        Code::Unavailable
        | Code::Unknown
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::NotFound
        | Code::Aborted => Failure::Elsewhere,
        _ => Failure::Answer,
    }
}

/// Whether a job whose attempt ended with the dispatcher's `status` waits and runs again
/// later ("not now": no worker yet, a full queue, a worker lost, the attempt's time up)
/// rather than failing. A worker's own answer about the request (INVALID_ARGUMENT,
/// INTERNAL, ...) fails the job, as it fails an online request ([`Failure::Answer`]).
pub fn retry_later(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::NotFound
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_where_they_came_from() {
        // A broken connection: tonic keeps the transport's error as the source.
        for code in [
            Code::Unavailable,
            Code::Unknown,
            Code::Cancelled,
            Code::Internal,
        ] {
            let mut status = Status::new(code, "connection reset");
            status.set_source(std::sync::Arc::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "connection reset by peer",
            )));
            assert_eq!(classify(&status), Failure::Unreachable, "{code:?}");
        }
        let cases = [
            // The worker's own answers.
            (Status::unavailable("draining"), Failure::Elsewhere),
            (Status::resource_exhausted("queue full"), Failure::Elsewhere),
            (Status::not_found("not loaded"), Failure::Elsewhere),
            (Status::aborted("stopping"), Failure::Elsewhere),
            (Status::internal("onnx runtime failed"), Failure::Answer),
            (Status::invalid_argument("bad shape"), Failure::Answer),
            (Status::deadline_exceeded("late"), Failure::Answer),
        ];
        for (status, want) in cases {
            assert_eq!(classify(&status), want, "{status:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_unreachable() {
        // Nothing listens on port 1: the call fails in the transport.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        let mut client =
            localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
                channel,
            );
        let status = client
            .server_live(localml_proto::inference::ServerLiveRequest {})
            .await
            .expect_err("nothing listens");
        assert_eq!(classify(&status), Failure::Unreachable, "{status:?}");
    }
}
