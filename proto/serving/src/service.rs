//! One `GRPCInferenceService` implementation for both the scheduler and the worker:
//! each implements [`InferenceBackend`] (the methods that apply), and [`OipService`] adds
//! the Triton methods that do not apply yet, answering UNIMPLEMENTED with a message.

use tonic::{Request, Response, Status};

use localml_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use localml_proto::inference::*;

type Answer<T> = Result<Response<T>, Status>;

/// The inference methods a localml server implements.
#[tonic::async_trait]
pub trait InferenceBackend: Send + Sync + 'static {
    type InferStream: tokio_stream::Stream<Item = Result<ModelStreamInferResponse, Status>>
        + Send
        + 'static;

    /// Live as long as the process answers at all.
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }
    async fn server_ready(
        &self,
        request: Request<ServerReadyRequest>,
    ) -> Answer<ServerReadyResponse>;
    async fn model_ready(&self, request: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse>;
    async fn server_metadata(
        &self,
        request: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse>;
    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse>;
    async fn model_infer(&self, request: Request<ModelInferRequest>) -> Answer<ModelInferResponse>;
    async fn model_stream_infer(
        &self,
        request: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Answer<Self::InferStream>;
    async fn model_config(
        &self,
        request: Request<ModelConfigRequest>,
    ) -> Answer<ModelConfigResponse>;
    async fn model_statistics(
        &self,
        request: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse>;
    /// Triton's repository extension; the scheduler manages models through its catalog
    /// and deployments, a worker through its repository directory only.
    async fn repository_index(
        &self,
        _: Request<RepositoryIndexRequest>,
    ) -> Answer<RepositoryIndexResponse> {
        Err(not_applicable("RepositoryIndex", REPOSITORY))
    }
    async fn repository_model_load(
        &self,
        _: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        Err(not_applicable("RepositoryModelLoad", REPOSITORY))
    }
    async fn repository_model_unload(
        &self,
        _: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        Err(not_applicable("RepositoryModelUnload", REPOSITORY))
    }
}

/// Serves a backend as `inference.GRPCInferenceService`.
pub struct OipService<B>(pub std::sync::Arc<B>);

fn not_applicable(method: &str, why: &str) -> Status {
    Status::unimplemented(format!("{method} is not implemented by localml: {why}"))
}

const REPOSITORY: &str =
    "a worker loads its repository directory; manage models through the scheduler (its catalog)";
const SHARED_MEMORY: &str = "clients and servers are on different PCs; send tensors in the request";

#[tonic::async_trait]
impl<B: InferenceBackend> GrpcInferenceService for OipService<B> {
    type ModelStreamInferStream = B::InferStream;

    async fn server_live(&self, r: Request<ServerLiveRequest>) -> Answer<ServerLiveResponse> {
        self.0.server_live(r).await
    }
    async fn server_ready(&self, r: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        self.0.server_ready(r).await
    }
    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        self.0.model_ready(r).await
    }
    async fn server_metadata(
        &self,
        r: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse> {
        self.0.server_metadata(r).await
    }
    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse> {
        self.0.model_metadata(r).await
    }
    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        self.0.model_infer(r).await
    }
    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        self.0.model_stream_infer(r).await
    }
    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        self.0.model_config(r).await
    }
    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        self.0.model_statistics(r).await
    }
    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> Answer<RepositoryIndexResponse> {
        self.0.repository_index(r).await
    }
    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        self.0.repository_model_load(r).await
    }
    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        self.0.repository_model_unload(r).await
    }
    async fn system_shared_memory_status(
        &self,
        _: Request<SystemSharedMemoryStatusRequest>,
    ) -> Answer<SystemSharedMemoryStatusResponse> {
        Err(not_applicable("SystemSharedMemoryStatus", SHARED_MEMORY))
    }
    async fn system_shared_memory_register(
        &self,
        _: Request<SystemSharedMemoryRegisterRequest>,
    ) -> Answer<SystemSharedMemoryRegisterResponse> {
        Err(not_applicable("SystemSharedMemoryRegister", SHARED_MEMORY))
    }
    async fn system_shared_memory_unregister(
        &self,
        _: Request<SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<SystemSharedMemoryUnregisterResponse> {
        Err(not_applicable(
            "SystemSharedMemoryUnregister",
            SHARED_MEMORY,
        ))
    }
    async fn cuda_shared_memory_status(
        &self,
        _: Request<CudaSharedMemoryStatusRequest>,
    ) -> Answer<CudaSharedMemoryStatusResponse> {
        Err(not_applicable("CudaSharedMemoryStatus", SHARED_MEMORY))
    }
    async fn cuda_shared_memory_register(
        &self,
        _: Request<CudaSharedMemoryRegisterRequest>,
    ) -> Answer<CudaSharedMemoryRegisterResponse> {
        Err(not_applicable("CudaSharedMemoryRegister", SHARED_MEMORY))
    }
    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<CudaSharedMemoryUnregisterResponse> {
        Err(not_applicable("CudaSharedMemoryUnregister", SHARED_MEMORY))
    }
    async fn trace_setting(&self, _: Request<TraceSettingRequest>) -> Answer<TraceSettingResponse> {
        Err(not_applicable(
            "TraceSetting",
            "use RUST_LOG for structured logs",
        ))
    }
    async fn log_settings(&self, _: Request<LogSettingsRequest>) -> Answer<LogSettingsResponse> {
        Err(not_applicable(
            "LogSettings",
            "set RUST_LOG when starting the process",
        ))
    }
}

/// The longest client deadline honoured (a day); a longer `grpc-timeout` is cut to it, so
/// no deadline overflows the clock (`999999999H` is a valid header).
pub const MAX_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The client's deadline from the `grpc-timeout` header, if any, at most
/// [`MAX_REQUEST_TIMEOUT`].
pub fn request_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<std::time::Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    use std::time::Duration;
    let timeout = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    Some(timeout.min(MAX_REQUEST_TIMEOUT))
}

/// Runs one ModelInfer call within the client's deadline (`grpc-timeout`): `infer` gets
/// the request and the deadline, to pass on to whatever it calls.
pub async fn infer_within_deadline<F, Fut>(
    request: Request<ModelInferRequest>,
    infer: F,
) -> Result<Response<ModelInferResponse>, Status>
where
    F: FnOnce(ModelInferRequest, Option<tokio::time::Instant>) -> Fut,
    Fut: std::future::Future<Output = Result<ModelInferResponse, Status>>,
{
    let timeout = request_timeout(request.metadata());
    let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
    within_deadline(timeout, "ModelInfer", infer(request.into_inner(), deadline))
        .await
        .map(Response::new)
}

/// Runs `work` within the client's deadline, answering DEADLINE_EXCEEDED when it passes.
/// The timer fires slightly early so this answer, not the transport's CANCELLED, reaches
/// the client.
pub async fn within_deadline<T>(
    timeout: Option<std::time::Duration>,
    what: &str,
    work: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let Some(timeout) = timeout else {
        return work.await;
    };
    match tokio::time::timeout(timeout.mul_f64(0.95), work).await {
        Ok(result) => result,
        Err(_) => Err(Status::deadline_exceeded(format!(
            "{what} did not finish within the client's deadline of {timeout:?}"
        ))),
    }
}

/// Accepted connections of `listener` with Nagle's algorithm off: small gRPC messages
/// would otherwise wait for delayed ACKs (about 40 ms on Linux).
pub fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

/// As [`incoming`], for a listener several servers take turns on (a worker's inference
/// port, served anew with each renewed certificate).
pub fn incoming_shared(
    listener: std::sync::Arc<tokio::net::TcpListener>,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.and_then(|(stream, _)| {
            stream.set_nodelay(true)?;
            Ok(stream)
        });
        Some((accepted, listener))
    })
}

/// The response stream of `ModelStreamInfer`.
pub type InferResponseStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<ModelStreamInferResponse, Status>> + Send>,
>;

/// Serves a `ModelStreamInfer` stream: each request runs concurrently through `infer`, and
/// its answer (or its error, as `error_message`) is sent back with the request's id. A
/// broken request stream ends the response stream with `on_stream_error(status)`.
pub fn serve_stream<F, Fut>(
    mut requests: tonic::Streaming<ModelInferRequest>,
    infer: F,
    on_stream_error: fn(Status) -> Status,
) -> InferResponseStream
where
    F: Fn(ModelInferRequest) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<ModelInferResponse, Status>> + Send + 'static,
{
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Once the response side is gone (the client hung up, or the call was ended,
            // e.g. its key revoked), requests still arriving are not run.
            let next = tokio::select! {
                next = requests.next() => next,
                _ = tx.closed() => break,
            };
            let Some(next) = next else { break };
            let request = match next {
                Ok(request) => request,
                Err(status) => {
                    let _ = tx.send(Err(on_stream_error(status))).await;
                    break;
                }
            };
            let id = request.id.clone();
            let answer = infer(request);
            let tx = tx.clone();
            tokio::spawn(async move {
                let message = match answer.await {
                    Ok(response) => ModelStreamInferResponse {
                        error_message: String::new(),
                        infer_response: Some(response),
                    },
                    Err(status) => ModelStreamInferResponse {
                        error_message: status.message().to_string(),
                        infer_response: Some(ModelInferResponse {
                            id,
                            ..Default::default()
                        }),
                    },
                };
                let _ = tx.send(Ok(message)).await;
            });
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout_units() {
        let cases = [
            ("5S", Some(std::time::Duration::from_secs(5))),
            ("250m", Some(std::time::Duration::from_millis(250))),
            ("2H", Some(std::time::Duration::from_secs(7200))),
            ("100u", Some(std::time::Duration::from_micros(100))),
            ("7x", None),
            ("S", None),
        ];
        for (header, expected) in cases {
            let mut md = tonic::metadata::MetadataMap::new();
            md.insert("grpc-timeout", header.parse().expect("ascii"));
            assert_eq!(request_timeout(&md), expected, "{header}");
        }
        assert_eq!(request_timeout(&tonic::metadata::MetadataMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_answers_deadline_exceeded() {
        let slow = async {
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            Ok::<_, Status>(())
        };
        let err = within_deadline(Some(std::time::Duration::from_secs(1)), "ModelInfer", slow)
            .await
            .expect_err("times out");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        let fast = within_deadline(Some(std::time::Duration::from_secs(1)), "x", async {
            Ok::<_, Status>(7)
        })
        .await;
        assert_eq!(fast.ok(), Some(7));
    }
}
