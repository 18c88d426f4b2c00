//! `localml.v1.Admin`: what operators (the CLI, the kubectl plugin) see and change:
//! workers, models with their request statistics, cordons, deployments. Served on the
//! client port only, behind the admin scope (docs/security.md).

use std::sync::Arc;

use localml_proto::localml::v1::admin_server::Admin;
use localml_proto::localml::v1::*;
use localml_store::{Store, StoreError};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::deployments::{self, DeploymentError, DEPLOYMENTS};
use crate::stats::Stats;
use crate::workers::cordons::CORDONS;
use crate::workers::Workers;

/// Why an operator's call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A cordon for a worker no scheduler replica knows.
    #[error("unknown worker '{0}'")]
    UnknownWorker(String),
    /// A deployment spec that cannot be applied.
    #[error(transparent)]
    InvalidDeployment(#[from] DeploymentError),
    /// A delete or rollback of a deployment that does not exist.
    #[error("no deployment '{0}'")]
    NoDeployment(String),
    /// A rollback of a deployment whose model and version never changed.
    #[error("deployment '{0}' has no earlier model or version to roll back to")]
    NothingToRollBack(String),
    /// A change of a deployment to a model version no worker can load.
    #[error("no worker can load {0} (not in a Ready on-demand worker's repository, nor in the catalog for workers that fetch): the change would unload every replica and load nothing; push it first")]
    NowhereToRoll(String),
    /// The cluster state could not be read or written.
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let message = e.to_string();
        match e {
            AdminError::UnknownWorker(_) | AdminError::NoDeployment(_) => {
                Status::not_found(message)
            }
            AdminError::InvalidDeployment(_) => Status::invalid_argument(message),
            AdminError::NothingToRollBack(_) | AdminError::NowhereToRoll(_) => {
                Status::failed_precondition(message)
            }
            AdminError::Store(_) => Status::unavailable(message),
        }
    }
}

type Answer<T> = Result<Response<T>, Status>;

pub struct AdminService {
    pub workers: Arc<Workers>,
    pub stats: Arc<Stats>,
    pub store: Arc<dyn Store>,
}

impl AdminService {
    async fn set_cordon(&self, r: SetCordonRequest) -> Result<(), AdminError> {
        if !self.workers.knows(&r.worker) {
            return Err(AdminError::UnknownWorker(r.worker));
        }
        // Stored first, so every replica (and a restarted one) applies it.
        let key = format!("{CORDONS}{}", localml_store::escape_segment(&r.worker));
        if r.cordoned {
            self.store.put(&key, Vec::new()).await?;
        } else {
            self.store.delete(&key).await?;
        }
        self.workers.set_cordon(&r.worker, r.cordoned);
        Ok(())
    }

    /// A change of an existing deployment's model or version must name one a worker can
    /// load: otherwise every replica would unload it and none load the new one.
    async fn check_target(&self, target: &Deployment) -> Result<(), AdminError> {
        let Some(kv) = self
            .store
            .get(&format!("{DEPLOYMENTS}{}", target.name))
            .await?
        else {
            return Ok(());
        };
        let Ok(old) = <Deployment as prost::Message>::decode(kv.value.as_slice()) else {
            return Ok(());
        };
        if (&old.model, &old.version) == (&target.model, &target.version) {
            return Ok(());
        }
        let workers = self.workers.list(Instant::now());
        let workers = deployments::with_catalog(self.store.as_ref(), workers).await?;
        let loadable = workers
            .iter()
            .filter(|w| w.state == WorkerState::Ready as i32)
            .filter_map(|w| w.status.as_ref())
            .filter(|s| s.on_demand)
            .flat_map(|s| &s.available)
            .any(|a| {
                a.name == target.model && (target.version.is_empty() || a.version == target.version)
            });
        if loadable {
            return Ok(());
        }
        Err(AdminError::NowhereToRoll(if target.version.is_empty() {
            target.model.clone()
        } else {
            format!("{}:{}", target.model, target.version)
        }))
    }

    async fn apply_deployment(&self, d: Deployment) -> Result<Deployment, AdminError> {
        let d = deployments::spec(&d);
        deployments::validate(&d)?;
        self.check_target(&d).await?;
        let d = deployments::store_spec(self.store.as_ref(), &d.name, |_| {
            Ok::<_, AdminError>(d.clone())
        })
        .await?;
        tracing::info!(deployment = %d.name, model = %d.model, version = %d.version, replicas = d.replicas, "deployment applied");
        Ok(d)
    }

    async fn rollback_deployment(&self, name: String) -> Result<Deployment, AdminError> {
        let stored = self
            .store
            .get(&format!("{DEPLOYMENTS}{name}"))
            .await?
            .and_then(|kv| <Deployment as prost::Message>::decode(kv.value.as_slice()).ok());
        if let Some(back) = stored.as_ref().and_then(deployments::rollback) {
            self.check_target(&back).await?;
        }
        let d = deployments::store_spec(self.store.as_ref(), &name, |old| {
            let old = old.ok_or_else(|| AdminError::NoDeployment(name.clone()))?;
            deployments::rollback(old).ok_or_else(|| AdminError::NothingToRollBack(name.clone()))
        })
        .await?;
        tracing::info!(deployment = %d.name, model = %d.model, version = %d.version, "deployment rolled back");
        Ok(d)
    }

    async fn list_deployments(&self) -> Result<Vec<Deployment>, AdminError> {
        let (deployments, assigned) = deployments::load_state(self.store.as_ref()).await?;
        let workers = self.workers.list(Instant::now());
        let workers = deployments::with_catalog(self.store.as_ref(), workers).await?;
        Ok(deployments
            .iter()
            .map(|d| {
                let a = assigned.get(&d.name).cloned().unwrap_or_default();
                deployments::with_status(d, &a, &workers)
            })
            .collect())
    }

    async fn delete_deployment(&self, name: String) -> Result<(), AdminError> {
        let key = format!("{DEPLOYMENTS}{name}");
        if self.store.get(&key).await?.is_none() {
            return Err(AdminError::NoDeployment(name));
        }
        // The controller removes its assignments; workers then unload.
        self.store.delete(&key).await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_workers(&self, _: Request<ListWorkersRequest>) -> Answer<ListWorkersResponse> {
        Ok(Response::new(ListWorkersResponse {
            workers: self.workers.list(Instant::now()),
        }))
    }

    async fn list_models(&self, _: Request<ListModelsRequest>) -> Answer<ListModelsResponse> {
        let series = self.stats.series();
        let mut models = self.workers.models();
        for m in &mut models {
            if let Some((_, codes, latency)) = series.iter().find(|(name, _, _)| *name == m.name) {
                m.requests_ok = codes.get("OK").copied().unwrap_or(0);
                m.requests_failed = codes
                    .iter()
                    .filter(|(code, _)| **code != "OK")
                    .map(|(_, n)| n)
                    .sum();
                m.latency_bounds_seconds = localml_serving::metrics::LATENCY_BUCKETS.to_vec();
                m.latency_cumulative = latency.cumulative();
            }
            let now = localml_proto::time::unix_ms();
            if let Some(f) = self.stats.version(&m.name, &m.version, now) {
                m.version_requests_ok = f.ok;
                m.version_requests_failed = f.failed;
                m.version_latency_cumulative = f.latency_cumulative;
                m.recent = f.recent;
                m.latency_bounds_seconds = localml_serving::metrics::LATENCY_BUCKETS.to_vec();
            }
        }
        Ok(Response::new(ListModelsResponse { models }))
    }

    async fn set_cordon(&self, r: Request<SetCordonRequest>) -> Answer<SetCordonResponse> {
        AdminService::set_cordon(self, r.into_inner()).await?;
        Ok(Response::new(SetCordonResponse {}))
    }

    async fn apply_deployment(&self, r: Request<Deployment>) -> Answer<Deployment> {
        Ok(Response::new(
            AdminService::apply_deployment(self, r.into_inner()).await?,
        ))
    }

    async fn list_deployments(
        &self,
        _: Request<ListDeploymentsRequest>,
    ) -> Answer<ListDeploymentsResponse> {
        let deployments = AdminService::list_deployments(self).await?;
        Ok(Response::new(ListDeploymentsResponse { deployments }))
    }

    async fn rollback_deployment(
        &self,
        r: Request<RollbackDeploymentRequest>,
    ) -> Answer<Deployment> {
        Ok(Response::new(
            AdminService::rollback_deployment(self, r.into_inner().name).await?,
        ))
    }

    async fn delete_deployment(
        &self,
        r: Request<DeleteDeploymentRequest>,
    ) -> Answer<DeleteDeploymentResponse> {
        AdminService::delete_deployment(self, r.into_inner().name).await?;
        Ok(Response::new(DeleteDeploymentResponse {}))
    }
}
