//! The worker's `inference.GRPCInferenceService`: a client (or the scheduler) can talk to
//! one worker directly.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use localml_proto::inference::*;
use localml_proto::oip;
use localml_serving::service::{
    infer_within_deadline, serve_stream, InferResponseStream, InferenceBackend,
};
use tonic::{Request, Response, Status};

use crate::model::{ModelError, Output, RunError};
use crate::runtime::CPU_PROVIDER;
use crate::state::{signature, FindError, Worker};
use crate::validate::{decode_request, Signature, ValidateError};

use localml_proto::parameters::{VARIANT_PARAMETER, WORKER_PARAMETER};

pub struct WorkerInference {
    pub worker: Arc<Worker>,
}

type Answer<T> = Result<Response<T>, Status>;

/// Why this service could not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The model or version is not loaded on this worker.
    #[error(transparent)]
    Find(#[from] FindError),
    /// The request does not fit the model's signature.
    #[error(transparent)]
    Invalid(#[from] ValidateError),
    /// The model could not run the request.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// The one place this service turns its errors into gRPC statuses; the message is the
/// error's text.
impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = match &e {
            ServiceError::Find(_) => tonic::Code::NotFound,
            ServiceError::Invalid(_) => tonic::Code::InvalidArgument,
            ServiceError::Model(ModelError::QueueFull(..)) => tonic::Code::ResourceExhausted,
            ServiceError::Model(ModelError::InvalidInput { .. }) => tonic::Code::InvalidArgument,
            // This worker cannot run it now (the model is unloading, a session pool
            // broke, the model failed to load): another worker may; the scheduler tries
            // one (UNAVAILABLE is "not here, not now", not the request's fault).
            ServiceError::Model(
                ModelError::Load { .. }
                | ModelError::Run {
                    reason:
                        RunError::Unloading
                        | RunError::Task(_)
                        | RunError::Poisoned
                        | RunError::NoSession,
                    ..
                },
            ) => tonic::Code::Unavailable,
            ServiceError::Model(ModelError::Run { .. }) => tonic::Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

impl Worker {
    /// [`Worker::find`] for this service's handlers.
    fn find_model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<Arc<crate::model::LoadedModel>, Status> {
        self.find(name, version)
            .map_err(|e| ServiceError::from(e).into())
    }
}

impl Worker {
    /// Validates, runs and answers one request.
    pub async fn infer(&self, request: ModelInferRequest) -> Result<ModelInferResponse, Status> {
        let started = std::time::Instant::now();
        let (model, version) = (request.model_name.clone(), request.model_version.clone());
        let result = self.infer_once(request).await;
        let version = match &result {
            Ok(r) => r.model_version.clone(),
            Err(_) => version,
        };
        self.requests.record(
            &model,
            &version,
            localml_serving::metrics::result_code(&result),
            started.elapsed().as_secs_f64(),
        );
        result
    }

    async fn infer_once(&self, request: ModelInferRequest) -> Result<ModelInferResponse, Status> {
        self.try_infer(request).await.map_err(Status::from)
    }

    async fn try_infer(
        &self,
        request: ModelInferRequest,
    ) -> Result<ModelInferResponse, ServiceError> {
        let model = self.find(&request.model_name, &request.model_version)?;
        let sig = Signature {
            model: &model.name,
            inputs: &model.inputs,
            outputs: &model.outputs,
            max_batch_size: model.max_batch_size,
        };
        let decoded = decode_request(&sig, &request)?;
        let outputs = model
            .run(decoded.inputs, decoded.requested_outputs, decoded.priority)
            .await?;
        Ok(self.response(&request, &model, outputs))
    }

    fn response(
        &self,
        request: &ModelInferRequest,
        model: &crate::model::LoadedModel,
        outputs: Vec<Output>,
    ) -> ModelInferResponse {
        let mut response = ModelInferResponse {
            model_name: request.model_name.clone(),
            model_version: model.version.to_string(),
            id: request.id.clone(),
            ..Default::default()
        };
        for out in outputs {
            response.raw_output_contents.push(out.raw);
            response
                .outputs
                .push(model_infer_response::InferOutputTensor {
                    name: out.name,
                    datatype: out.datatype.as_str().to_string(),
                    shape: out.shape,
                    ..Default::default()
                });
        }
        response.parameters.insert(
            WORKER_PARAMETER.to_string(),
            InferParameter {
                parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(
                    self.config.name.clone(),
                )),
            },
        );
        if !model.variant.is_empty() {
            response.parameters.insert(
                VARIANT_PARAMETER.to_string(),
                InferParameter {
                    parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(
                        model.variant.clone(),
                    )),
                },
            );
        }
        response
    }
}

#[tonic::async_trait]
impl InferenceBackend for WorkerInference {
    type InferStream = InferResponseStream;

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        let ready = !self.worker.draining.load(Ordering::SeqCst);
        Ok(Response::new(ServerReadyResponse { ready }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        let r = r.into_inner();
        let ready = self.worker.find(&r.name, &r.version).is_ok()
            && !self.worker.draining.load(Ordering::SeqCst);
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse> {
        Ok(Response::new(oip::server_metadata(
            crate::NAME,
            crate::VERSION,
        )))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse> {
        let r = r.into_inner();
        let model = self.worker.find_model(&r.name, &r.version)?;
        let versions = self.worker.versions(&model.name);
        Ok(Response::new(oip::model_metadata(
            &model.name,
            versions,
            &signature(&model),
        )))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        // The worker runs the request now; the deadline only bounds the wait.
        infer_within_deadline(r, |request, _| self.worker.infer(request)).await
    }

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Answer<Self::InferStream> {
        let worker = Arc::clone(&self.worker);
        let infer = move |request| {
            let worker = Arc::clone(&worker);
            async move { worker.infer(request).await }
        };
        Ok(Response::new(serve_stream(
            r.into_inner(),
            infer,
            |status| status,
        )))
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        let r = r.into_inner();
        let m = self.worker.find_model(&r.name, &r.version)?;
        let gpu = m.execution_provider != CPU_PROVIDER;
        Ok(Response::new(oip::model_config(
            &m.name,
            m.max_batch_size,
            m.instances,
            gpu,
            &signature(&m),
            crate::state::dynamic_batching(&m).as_ref(),
        )))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        let r = r.into_inner();
        // As Triton: every loaded version of the model unless the request names one.
        let models: Vec<_> = if r.name.is_empty() {
            self.worker.loaded()
        } else if r.version.is_empty() {
            self.worker.find_model(&r.name, "")?;
            let mut all = self.worker.loaded();
            all.retain(|m| m.name == r.name);
            all
        } else {
            vec![self.worker.find_model(&r.name, &r.version)?]
        };
        let model_stats = models
            .into_iter()
            .map(|m| {
                let s = &m.stats;
                let count = s.inference_count.load(Ordering::Relaxed);
                let run_ns = s.success_ns.load(Ordering::Relaxed);
                let queue_ns = s.queue_ns.load(Ordering::Relaxed);
                let input_ns = s.input_ns.load(Ordering::Relaxed);
                let output_ns = s.output_ns.load(Ordering::Relaxed);
                let infer_ns = run_ns.saturating_sub(input_ns.saturating_add(output_ns));
                ModelStatistics {
                    name: m.name.clone(),
                    version: m.version.to_string(),
                    last_inference: s.last_inference_ms.load(Ordering::Relaxed),
                    inference_count: count,
                    execution_count: s.execution_count.load(Ordering::Relaxed),
                    inference_stats: Some(InferStatistics {
                        // As Triton: a request's whole time, split into waiting for
                        // a free session (queue), making ONNX Runtime's inputs
                        // (compute_input), running (compute_infer) and making the
                        // response's outputs (compute_output).
                        success: Some(StatisticDuration {
                            count,
                            ns: run_ns.saturating_add(queue_ns),
                        }),
                        fail: Some(StatisticDuration {
                            count: s.failure_count.load(Ordering::Relaxed),
                            ns: s.failure_ns.load(Ordering::Relaxed),
                        }),
                        queue: Some(StatisticDuration {
                            count,
                            ns: queue_ns,
                        }),
                        compute_input: Some(StatisticDuration {
                            count,
                            ns: input_ns,
                        }),
                        compute_infer: Some(StatisticDuration {
                            count,
                            ns: infer_ns,
                        }),
                        compute_output: Some(StatisticDuration {
                            count,
                            ns: output_ns,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }
            })
            .collect();
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunError;

    #[test]
    fn each_error_keeps_its_code_and_text() {
        let cases: Vec<(ServiceError, tonic::Code, &str)> = vec![
            (
                FindError::NotLoaded {
                    model: "m".into(),
                    worker: "w".into(),
                }
                .into(),
                tonic::Code::NotFound,
                "model 'm' is not loaded on worker 'w'",
            ),
            (
                FindError::UnknownVersion {
                    model: "m".into(),
                    version: "7".into(),
                    loaded: vec!["1".into(), "2".into()],
                }
                .into(),
                tonic::Code::NotFound,
                "model 'm' has no version '7' (loaded versions: 1, 2)",
            ),
            (
                ValidateError::DuplicateInput("x".into()).into(),
                tonic::Code::InvalidArgument,
                "input 'x' appears more than once",
            ),
            (
                ModelError::QueueFull("m".into(), 64).into(),
                tonic::Code::ResourceExhausted,
                "model m has 64 requests queued on this worker; try again later",
            ),
            (
                ModelError::InvalidInput {
                    model: "m".into(),
                    reason: "index out of range".into(),
                }
                .into(),
                tonic::Code::InvalidArgument,
                "ONNX Runtime rejected the request for model m: index out of range",
            ),
            (
                ModelError::Run {
                    model: "m".into(),
                    reason: RunError::Unloading,
                }
                .into(),
                tonic::Code::Unavailable,
                "ONNX Runtime failed running model m: the model is unloading",
            ),
            (
                ModelError::Run {
                    model: "m".into(),
                    reason: RunError::MissingOutput("y".into()),
                }
                .into(),
                tonic::Code::Internal,
                "ONNX Runtime failed running model m: output 'y' missing from the result",
            ),
        ];
        for (error, code, message) in cases {
            let status = Status::from(error);
            assert_eq!((status.code(), status.message()), (code, message));
        }
    }
}
