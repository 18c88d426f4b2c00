//! `localml.v1.Cluster`: workers join, report their status (renewing their lease) and
//! leave. Served on the cluster port only.

use std::sync::Arc;

use localml_proto::localml::v1::cluster_server::Cluster;
use localml_proto::localml::v1::*;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::deployments::Assignments;
use crate::workers::registrations::Registrations;
use crate::workers::Workers;

/// What a worker's call got wrong.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// A join or report without the worker's status.
    #[error("missing worker status")]
    MissingStatus,
    /// A status without the worker's name.
    #[error("worker status has an empty name")]
    EmptyName,
    /// A status without the address the scheduler forwards requests to.
    #[error("worker '{0}' sent no inference_address")]
    NoAddress(String),
    /// A leave for a worker id this scheduler does not know.
    #[error("unknown worker id '{0}'")]
    UnknownWorker(String),
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Status {
        let message = e.to_string();
        match e {
            ClusterError::MissingStatus | ClusterError::EmptyName | ClusterError::NoAddress(_) => {
                Status::invalid_argument(message)
            }
            ClusterError::UnknownWorker(_) => Status::not_found(message),
        }
    }
}

pub struct ClusterService {
    pub workers: Arc<Workers>,
    pub assignments: Arc<Assignments>,
    pub registrations: Arc<Registrations>,
    pub report_interval_ms: u32,
}

fn require_status(status: Option<WorkerStatus>) -> Result<WorkerStatus, ClusterError> {
    let status = status.ok_or(ClusterError::MissingStatus)?;
    if status.name.is_empty() {
        return Err(ClusterError::EmptyName);
    }
    if status.inference_address.is_empty() {
        return Err(ClusterError::NoAddress(status.name));
    }
    Ok(status)
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn join(&self, r: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let status = require_status(r.into_inner().status)?;
        let worker_id = self.workers.join(status.clone(), Instant::now());
        self.registrations.record(&status, true);
        Ok(Response::new(JoinResponse {
            worker_id,
            report_interval_ms: self.report_interval_ms,
        }))
    }

    async fn report_status(&self, r: Request<StatusReport>) -> Result<Response<ReportAck>, Status> {
        let r = r.into_inner();
        let status = require_status(r.status)?;
        let changed = self.workers.power_or_models_changed(&r.worker_id, &status);
        self.registrations.record(&status, changed);
        let (load, unload) = self.assignments.instructions(&status);
        let known = self.workers.report(&r.worker_id, status, Instant::now());
        Ok(Response::new(ReportAck {
            known,
            load,
            unload,
        }))
    }

    async fn leave(&self, r: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let id = r.into_inner().worker_id;
        if self.workers.leave(&id) {
            Ok(Response::new(LeaveResponse {}))
        } else {
            Err(ClusterError::UnknownWorker(id).into())
        }
    }
}
