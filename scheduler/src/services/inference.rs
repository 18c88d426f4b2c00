//! The scheduler's `inference.GRPCInferenceService`: readiness, metadata and config
//! answered from cluster state; inference routed to workers by the dispatcher, whose
//! errors become `tonic::Status` in `DispatchError`'s `From`. A gRPC `ModelInfer` is
//! forwarded as the bytes it came in ([`crate::forward`]); REST and streams build a
//! request, encoded once.

use std::sync::Arc;

use bytes::Bytes;
use localml_proto::inference::*;
use localml_proto::oip;
use localml_serving::service::{
    infer_within_deadline, serve_stream, InferResponseStream, InferenceBackend,
};
use tonic::{Request, Response, Status};

use crate::auth::{principal, Principal};
use crate::catalog::repository;
use crate::dispatch::{DispatchError, Dispatcher};
use crate::forward::{decode_response, ForwardInfer, Forwarded};
use crate::size_limit::size_limit_status;

/// PERMISSION_DENIED unless the caller's key (if any) may use `model`.
fn allow(caller: Option<&Principal>, model: &str) -> Result<(), Status> {
    caller.map_or(Ok(()), |p| p.check_model(model))
}

/// Binds an inference request to the caller's key: its model must be allowed, and its
/// tenant (`localml.tenant`) is the key's; naming another tenant is PERMISSION_DENIED.
fn bind(caller: Option<&Principal>, request: &mut Forwarded) -> Result<(), Status> {
    let Some(p) = caller else {
        return Ok(());
    };
    p.check_model(&request.head.model_name)?;
    use localml_proto::parameters::TENANT_PARAMETER;
    let asked = match request
        .head
        .parameters
        .get(TENANT_PARAMETER)
        .and_then(|v| v.parameter_choice.as_ref())
    {
        None => String::new(),
        Some(infer_parameter::ParameterChoice::StringParam(s)) => s.clone(),
        Some(_) => {
            return Err(Status::invalid_argument(format!(
                "parameter '{TENANT_PARAMETER}' must be a string"
            )))
        }
    };
    let tenant = p.tenant_for(&asked)?;
    if tenant == asked {
        // The client named its own tenant: the bytes already say it.
        return Ok(());
    }
    request.set_parameter(
        TENANT_PARAMETER,
        InferParameter {
            parameter_choice: Some(infer_parameter::ParameterChoice::StringParam(tenant)),
        },
    );
    Ok(())
}

/// `inference_count` requests at the workers' ratio of `executions` to `requests`: at
/// least one run where there was a request, never more runs than requests.
fn estimated_executions(inference_count: u64, requests: u64, executions: u64) -> u64 {
    if requests == 0 || executions >= requests {
        return inference_count;
    }
    let estimate =
        (u128::from(inference_count) * u128::from(executions)).div_ceil(u128::from(requests));
    u64::try_from(estimate)
        .unwrap_or(inference_count)
        .clamp(inference_count.min(1), inference_count)
}

/// Binds a request built in process to the caller's key, routes it and decodes the answer.
async fn infer_built(
    dispatcher: &Dispatcher,
    caller: Option<&Principal>,
    request: &ModelInferRequest,
    deadline: Option<tokio::time::Instant>,
) -> Result<ModelInferResponse, Status> {
    let mut forwarded = Forwarded::from_request(request);
    bind(caller, &mut forwarded)?;
    decode_response(dispatcher.forward(forwarded, deadline).await?)
}

pub struct SchedulerInference {
    pub dispatcher: Arc<Dispatcher>,
    /// Models managed through Triton's repository extension (`crate::catalog::repository`).
    pub catalog: Arc<crate::catalog::Catalog>,
}

type Answer<T> = Result<Response<T>, Status>;

impl SchedulerInference {
    fn model(
        &self,
        name: &str,
        version: &str,
    ) -> Result<(localml_proto::localml::v1::LoadedModel, Vec<String>), DispatchError> {
        let workers = &self.dispatcher.workers;
        workers
            .model(name, version)
            .ok_or_else(|| DispatchError::from_lookup(name, version, workers.lookup(name, version)))
    }
}

#[tonic::async_trait]
impl InferenceBackend for SchedulerInference {
    type InferStream = InferResponseStream;

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Answer<ServerReadyResponse> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.dispatcher.workers.any_ready(),
        }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Answer<ModelReadyResponse> {
        allow(principal(&r), &r.get_ref().name)?;
        let r = r.into_inner();
        Ok(Response::new(ModelReadyResponse {
            ready: self.dispatcher.workers.model_ready(&r.name, &r.version),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Answer<ServerMetadataResponse> {
        Ok(Response::new(oip::server_metadata(
            "localml",
            env!("CARGO_PKG_VERSION"),
        )))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Answer<ModelMetadataResponse> {
        allow(principal(&r), &r.get_ref().name)?;
        let r = r.into_inner();
        let (model, versions) = self.model(&r.name, &r.version)?;
        let signature = model.signature.unwrap_or_default();
        Ok(Response::new(oip::model_metadata(
            &model.name,
            versions,
            &signature,
        )))
    }

    /// A request built in process (REST); gRPC's `ModelInfer` comes through
    /// [`ForwardInfer::forward`] instead.
    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        let caller = principal(&r).cloned();
        infer_within_deadline(r, |request, deadline| async move {
            infer_built(&self.dispatcher, caller.as_ref(), &request, deadline).await
        })
        .await
    }

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Answer<Self::InferStream> {
        let dispatcher = Arc::clone(&self.dispatcher);
        let caller = principal(&r).cloned();
        let key = crate::auth::key_watch(&r);
        let infer = move |request: ModelInferRequest| {
            let dispatcher = Arc::clone(&dispatcher);
            let caller = caller.clone();
            async move { infer_built(&dispatcher, caller.as_ref(), &request, None).await }
        };
        // A stream open when its key is revoked ends then, not when the client hangs up.
        Ok(Response::new(crate::auth::end_when_invalid(
            serve_stream(r.into_inner(), infer, size_limit_status),
            key,
        )))
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        allow(principal(&r), &r.get_ref().name)?;
        let r = r.into_inner();
        let (model, _) = self.model(&r.name, &r.version)?;
        let signature = model.signature.unwrap_or_default();
        let gpu = model.execution_provider != "CPUExecutionProvider";
        let mut answer = oip::model_config(
            &model.name,
            model.max_batch_size,
            model.instances,
            gpu,
            &signature,
            model.dynamic_batching.as_ref(),
        );
        // config.yaml's `task:` (how a photo becomes the input, the labels) as a JSON
        // parameter: the web page's Try form reads it, with the caller's key.
        if let (Some(task), Some(config)) = (&model.task, answer.config.as_mut()) {
            config.parameters.insert(
                "localml.task".into(),
                localml_proto::inference::ModelParameter {
                    string_value: task_json(task).to_string(),
                },
            );
        }
        Ok(Response::new(answer))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        let caller = principal(&r).cloned();
        let r = r.into_inner();
        if !r.name.is_empty() {
            allow(caller.as_ref(), &r.name)?;
            self.model(&r.name, &r.version)?;
        }
        let existing: Vec<(String, String)> = self
            .dispatcher
            .workers
            .models()
            .into_iter()
            .map(|m| (m.name, m.version))
            .collect();
        let mut model_stats = self
            .dispatcher
            .stats
            .snapshot(&r.name, &r.version, &existing);
        // Every model's statistics: only those the key may use.
        model_stats.retain(|s| allow(caller.as_ref(), &s.name).is_ok());
        // The scheduler runs nothing itself: its execution count is its requests at the
        // workers' ratio of runs to requests (below 1 where they batch), so perf_analyzer
        // and the dashboard see the batching through the scheduler too.
        let mut runs: std::collections::HashMap<(String, String), (u64, u64)> = Default::default();
        let workers = self.dispatcher.workers.list(tokio::time::Instant::now());
        for m in workers
            .iter()
            .filter_map(|w| w.status.as_ref())
            .flat_map(|s| s.models.iter())
        {
            let entry = runs.entry((m.name.clone(), m.version.clone())).or_default();
            entry.0 = entry.0.saturating_add(m.inference_count);
            entry.1 = entry.1.saturating_add(m.execution_count);
        }
        for s in &mut model_stats {
            if let Some(&(requests, executions)) = runs.get(&(s.name.clone(), s.version.clone())) {
                s.execution_count = estimated_executions(s.inference_count, requests, executions);
            }
        }
        Ok(Response::new(ModelStatisticsResponse { model_stats }))
    }

    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> Answer<RepositoryIndexResponse> {
        let index =
            repository::index(&self.catalog, &self.dispatcher.workers, r.into_inner()).await?;
        Ok(Response::new(index))
    }

    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> Answer<RepositoryModelLoadResponse> {
        let deadline = localml_serving::service::request_timeout(r.metadata());
        let workers = &self.dispatcher.workers;
        repository::load(&self.catalog, workers, r.into_inner(), deadline).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Answer<RepositoryModelUnloadResponse> {
        repository::unload(&self.catalog, r.into_inner()).await?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}

impl ForwardInfer for SchedulerInference {
    /// gRPC's `ModelInfer`: the request's bytes forwarded, the worker's answer returned as
    /// it came, within the client's deadline.
    async fn forward(&self, mut r: Request<Forwarded>) -> Result<Response<Bytes>, Status> {
        let caller = principal(&r).cloned();
        bind(caller.as_ref(), r.get_mut())?;
        let timeout = localml_serving::service::request_timeout(r.metadata());
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let answer = self.dispatcher.forward(r.into_inner(), deadline);
        localml_serving::service::within_deadline(timeout, "ModelInfer", answer)
            .await
            .map(Response::new)
    }
}

/// A model's `task:` as JSON (the `localml.task` parameter of its config, and the page's).
pub fn task_json(t: &localml_proto::localml::v1::ModelTask) -> serde_json::Value {
    // The numbers as written in config.yaml (0.406, not f32's 0.4059999883).
    let decimal = |x: &f32| x.to_string().parse::<f64>().unwrap_or(f64::from(*x));
    let decimals = |v: &[f32]| v.iter().map(decimal).collect::<Vec<f64>>();
    serde_json::json!({
        "kind": t.kind, "width": t.width, "height": t.height, "layout": t.layout,
        "channels": t.channels, "scale": decimal(&t.scale), "mean": decimals(&t.mean),
        "std": decimals(&t.std), "labels": t.labels,
    })
}

#[cfg(test)]
mod tests {
    use super::estimated_executions;

    #[test]
    fn executions_follow_the_workers_batching_ratio() {
        // Workers ran 24 requests in 7 runs: 100 requests here count as 30 runs.
        assert_eq!(estimated_executions(100, 24, 7), 30);
        // No batching, no reports, or nothing yet.
        assert_eq!(estimated_executions(100, 50, 50), 100);
        assert_eq!(estimated_executions(100, 0, 0), 100);
        assert_eq!(estimated_executions(0, 24, 7), 0);
        // One request is at least one run.
        assert_eq!(estimated_executions(1, 1000, 1), 1);
        assert_eq!(estimated_executions(u64::MAX, u64::MAX, 1), 1);
    }
}
