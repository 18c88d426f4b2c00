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
    pub assignments: Arc<crate::deployments::Assignments>,
    pub registrations: Arc<crate::registrations::Registrations>,
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
        let worker_id = self.registry.join(status.clone(), Instant::now());
        self.registrations.record(&status, true);
        Ok(Response::new(JoinResponse {
            worker_id,
            report_interval_ms: self.report_interval_ms,
        }))
    }

    async fn report_status(&self, r: Request<StatusReport>) -> Result<Response<ReportAck>, Status> {
        let r = r.into_inner();
        let status = require_status(r.status)?;
        let changed = self.registry.power_or_models_changed(&r.worker_id, &status);
        self.registrations.record(&status, changed);
        let (load, unload) = self.assignments.instructions(&status);
        let known = self.registry.report(&r.worker_id, status, Instant::now());
        Ok(Response::new(ReportAck {
            known,
            load,
            unload,
        }))
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
    pub stats: Arc<crate::stats::Stats>,
    pub store: Arc<dyn crate::store::Store>,
}

/// Store keys: `cordons/<worker name>` exists while the worker is cordoned.
pub const CORDONS: &str = "cordons/";

/// Keeps the registry's cordons equal to the store's (every replica runs this).
pub async fn follow_cordons(
    store: Arc<dyn crate::store::Store>,
    registry: Arc<Registry>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let name = |key: &str| crate::store::unescape_segment(key.strip_prefix(CORDONS).unwrap_or(key));
    crate::store::follow(
        store,
        CORDONS,
        stop,
        |kvs| registry.replace_cordons(kvs.iter().map(|kv| name(&kv.key)).collect()),
        |event| {
            let cordoned = matches!(event, crate::store::Event::Put(_));
            registry.set_cordon(&name(event.key()), cordoned);
        },
    )
    .await
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
        let series = self.stats.series();
        let mut models = self.registry.models();
        for m in &mut models {
            if let Some((_, codes, latency)) = series.iter().find(|(name, _, _)| *name == m.name) {
                m.requests_ok = codes.get("OK").copied().unwrap_or(0);
                m.requests_failed = codes
                    .iter()
                    .filter(|(code, _)| **code != "OK")
                    .map(|(_, n)| n)
                    .sum();
                m.latency_bounds_seconds = localml_proto::metrics::LATENCY_BUCKETS.to_vec();
                m.latency_cumulative = latency.cumulative();
            }
        }
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn set_cordon(
        &self,
        r: Request<SetCordonRequest>,
    ) -> Result<Response<SetCordonResponse>, Status> {
        let r = r.into_inner();
        if !self.registry.knows(&r.worker) {
            return Err(Status::not_found(format!("unknown worker '{}'", r.worker)));
        }
        // Stored first, so every replica (and a restarted one) applies it.
        let key = format!("{CORDONS}{}", crate::store::escape_segment(&r.worker));
        let written = if r.cordoned {
            self.store.put(&key, Vec::new()).await
        } else {
            self.store.delete(&key).await
        };
        written.map_err(|e| Status::unavailable(e.to_string()))?;
        self.registry.set_cordon(&r.worker, r.cordoned);
        Ok(Response::new(SetCordonResponse {}))
    }

    async fn apply_deployment(
        &self,
        r: Request<Deployment>,
    ) -> Result<Response<Deployment>, Status> {
        let d = crate::deployments::spec(&r.into_inner());
        crate::deployments::validate(&d)?;
        let key = format!("{}{}", crate::deployments::DEPLOYMENTS, d.name);
        self.store
            .put(&key, prost::Message::encode_to_vec(&d))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(deployment = %d.name, model = %d.model, replicas = d.replicas, "deployment applied");
        Ok(Response::new(d))
    }

    async fn list_deployments(
        &self,
        _: Request<ListDeploymentsRequest>,
    ) -> Result<Response<ListDeploymentsResponse>, Status> {
        let (deployments, assigned) = crate::deployments::load_state(self.store.as_ref())
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let workers = self.registry.list(Instant::now());
        let deployments = deployments
            .iter()
            .map(|d| {
                let a = assigned.get(&d.name).cloned().unwrap_or_default();
                crate::deployments::with_status(d, &a, &workers)
            })
            .collect();
        Ok(Response::new(ListDeploymentsResponse { deployments }))
    }

    async fn delete_deployment(
        &self,
        r: Request<DeleteDeploymentRequest>,
    ) -> Result<Response<DeleteDeploymentResponse>, Status> {
        let name = r.into_inner().name;
        let key = format!("{}{}", crate::deployments::DEPLOYMENTS, name);
        let existed = self
            .store
            .get(&key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .is_some();
        if !existed {
            return Err(Status::not_found(format!("no deployment '{name}'")));
        }
        // The controller removes its assignments; workers then unload.
        self.store
            .delete(&key)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(DeleteDeploymentResponse {}))
    }
}
