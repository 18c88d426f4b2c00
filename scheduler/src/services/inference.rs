//! The scheduler's `inference.GRPCInferenceService`: readiness, metadata and config
//! answered from cluster state; inference routed to workers by the dispatcher, whose
//! errors become `tonic::Status` in `DispatchError`'s `From`.

use std::sync::Arc;

use localml_proto::inference::*;
use localml_proto::oip;
use localml_serving::service::{
    infer_within_deadline, serve_stream, InferResponseStream, InferenceBackend,
};
use tonic::{Request, Response, Status};

use crate::dispatch::{DispatchError, Dispatcher};
use crate::size_limit::size_limit_status;

pub struct SchedulerInference {
    pub dispatcher: Arc<Dispatcher>,
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
        let r = r.into_inner();
        let (model, versions) = self.model(&r.name, &r.version)?;
        let signature = model.signature.unwrap_or_default();
        Ok(Response::new(oip::model_metadata(
            &model.name,
            versions,
            &signature,
        )))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Answer<ModelInferResponse> {
        infer_within_deadline(r, |request, deadline| {
            self.dispatcher.infer(request, deadline)
        })
        .await
    }

    async fn model_stream_infer(
        &self,
        r: Request<tonic::Streaming<ModelInferRequest>>,
    ) -> Answer<Self::InferStream> {
        let dispatcher = Arc::clone(&self.dispatcher);
        let infer = move |request| {
            let dispatcher = Arc::clone(&dispatcher);
            async move { dispatcher.infer(request, None).await }
        };
        Ok(Response::new(serve_stream(
            r.into_inner(),
            infer,
            size_limit_status,
        )))
    }

    async fn model_config(&self, r: Request<ModelConfigRequest>) -> Answer<ModelConfigResponse> {
        let r = r.into_inner();
        let (model, _) = self.model(&r.name, &r.version)?;
        let signature = model.signature.unwrap_or_default();
        let gpu = model.execution_provider != "CPUExecutionProvider";
        Ok(Response::new(oip::model_config(
            &model.name,
            model.max_batch_size,
            model.instances,
            gpu,
            &signature,
        )))
    }

    async fn model_statistics(
        &self,
        r: Request<ModelStatisticsRequest>,
    ) -> Answer<ModelStatisticsResponse> {
        let r = r.into_inner();
        if !r.name.is_empty() {
            self.model(&r.name, &r.version)?;
        }
        Ok(Response::new(ModelStatisticsResponse {
            model_stats: self.dispatcher.stats.snapshot(&r.name),
        }))
    }
}
