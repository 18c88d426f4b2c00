//! The cluster API (workers join, report, leave) and the admin API (operators' views).

use std::sync::Arc;

use localml_proto::localml::v1::admin_server::Admin;
use localml_proto::localml::v1::cluster_server::Cluster;
use localml_proto::localml::v1::*;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::registry::Registry;

pub struct ClusterService {
    pub registry: Arc<Registry>,
    pub report_interval_ms: u32,
}

fn require_status(status: Option<WorkerStatus>) -> Result<WorkerStatus, Status> {
    let status = status.ok_or_else(|| Status::invalid_argument("missing worker status"))?;
    if status.name.is_empty() {
        return Err(Status::invalid_argument("worker status has an empty name"));
    }
    if status.inference_address.is_empty() {
        return Err(Status::invalid_argument(format!(
            "worker '{}' sent no inference_address",
            status.name
        )));
    }
    Ok(status)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn join(&self, r: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let status = require_status(r.into_inner().status)?;
        let worker_id = self.registry.join(status, Instant::now());
        Ok(Response::new(JoinResponse {
            worker_id,
            report_interval_ms: self.report_interval_ms,
        }))
    }

    async fn report_status(&self, r: Request<StatusReport>) -> Result<Response<ReportAck>, Status> {
        let r = r.into_inner();
        let status = require_status(r.status)?;
        let known = self.registry.report(&r.worker_id, status, Instant::now());
        Ok(Response::new(ReportAck { known }))
    }

    async fn leave(&self, r: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let id = r.into_inner().worker_id;
        if self.registry.leave(&id) {
            Ok(Response::new(LeaveResponse {}))
        } else {
            Err(Status::not_found(format!("unknown worker id '{id}'")))
        }
    }
}

pub struct AdminService {
    pub registry: Arc<Registry>,
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_workers(
        &self,
        _: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse {
            workers: self.registry.list(Instant::now()),
        }))
    }

    async fn list_models(
        &self,
        _: Request<ListModelsRequest>,
    ) -> Result<Response<ListModelsResponse>, Status> {
        Ok(Response::new(ListModelsResponse {
            models: self.registry.models(),
        }))
    }

    async fn set_cordon(
        &self,
        r: Request<SetCordonRequest>,
    ) -> Result<Response<SetCordonResponse>, Status> {
        let r = r.into_inner();
        if self.registry.set_cordon(&r.worker, r.cordoned) {
            Ok(Response::new(SetCordonResponse {}))
        } else {
            Err(Status::not_found(format!("unknown worker '{}'", r.worker)))
        }
    }
}
