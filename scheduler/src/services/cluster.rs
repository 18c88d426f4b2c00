//! `localml.v1.Cluster`: workers join, report their status (renewing their lease) and
//! leave. Served on the cluster port only, over TLS.
//!
//! Who calls is decided here: a first join presents a join token (metadata
//! `authorization: Bearer K10...`) and a certificate signing request, and gets a
//! certificate for its name; every other call presents that certificate (mutual TLS),
//! and the certificate's name is the worker's identity. Fetching the CA needs nothing.

use std::sync::Arc;

use localml_proto::localml::v1::cluster_server::Cluster;
use localml_proto::localml::v1::*;
use localml_trust::ca::{Holder, Role};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::deployments::Assignments;
use crate::trust::{ClusterTrust, TokenRejected};
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
    /// Neither a worker certificate nor a join token.
    #[error("{0}")]
    Unauthenticated(String),
    /// The join token was refused.
    #[error("join token refused: {0}")]
    Token(TokenRejected),
    /// The worker's certificate names another worker than the call.
    #[error("this certificate belongs to worker '{holder}', not '{named}'")]
    NotYours { holder: String, named: String },
    /// A first join under the name of a worker that is connected.
    #[error("a worker named '{0}' is connected; a worker joins under its own name only")]
    NameTaken(String),
    /// A token join under the name of a worker that joined before (with its own
    /// certificate) and was not removed.
    #[error("worker name '{0}' belongs to a worker that joined before: it rejoins with its certificate; to give the name to this PC, run `localml workers remove {0}` first, or pick another --name")]
    NameClaimed(String),
    /// A first join without a certificate signing request, or an unusable one.
    #[error("{0}")]
    BadRequest(String),
    /// The store or the CA failed.
    #[error("{0}")]
    Internal(String),
}

impl From<ClusterError> for Status {
    fn from(e: ClusterError) -> Status {
        let message = e.to_string();
        match e {
            ClusterError::MissingStatus
            | ClusterError::EmptyName
            | ClusterError::NoAddress(_)
            | ClusterError::BadRequest(_) => Status::invalid_argument(message),
            ClusterError::UnknownWorker(_) => Status::not_found(message),
            ClusterError::Unauthenticated(_) => Status::unauthenticated(message),
            ClusterError::Token(TokenRejected::Store(_)) | ClusterError::Internal(_) => {
                Status::unavailable(message)
            }
            ClusterError::Token(_) => Status::unauthenticated(message),
            ClusterError::NotYours { .. } => Status::permission_denied(message),
            ClusterError::NameTaken(_) | ClusterError::NameClaimed(_) => {
                Status::already_exists(message)
            }
        }
    }
}

pub struct ClusterService {
    pub workers: Arc<Workers>,
    pub assignments: Arc<Assignments>,
    pub registrations: Arc<Registrations>,
    pub trust: Arc<ClusterTrust>,
    pub report_interval_ms: u32,
    /// How long the workers' certificates it signs are valid.
    pub certificate_validity: std::time::Duration,
    /// Bind each worker name to the key of the worker that first joined under it
    /// (`bind_worker_names`).
    pub bind_names: bool,
    /// The model catalog, read by workers assigned models their repository lacks.
    pub catalog: Arc<crate::catalog::Catalog>,
    /// Bytes per fetched chunk of a model file.
    pub chunk_bytes: usize,
}

fn require_status(status: Option<WorkerStatus>) -> Result<WorkerStatus, ClusterError> {
    let status = status.ok_or(ClusterError::MissingStatus)?;
    if status.name.is_empty() {
        return Err(ClusterError::EmptyName);
    }
    if status.inference_address.is_empty() {
        return Err(ClusterError::NoAddress(status.name));
    }
    if let Some(why) = absurd(&status) {
        tracing::warn!(worker = %status.name, reason = %why, "status report refused");
        return Err(ClusterError::BadRequest(format!(
            "worker '{}' reported {why}",
            status.name
        )));
    }
    Ok(status)
}

/// Most models, GPUs, sessions or requests one report may claim; more is a broken or
/// hostile worker, not a PC.
const MAX_REPORTED: usize = 10_000;

/// Why a worker's report cannot be true, if it cannot: it would only mislead scheduling
/// (free memory above the total, a battery over 100 %, a million requests queued).
fn absurd(status: &WorkerStatus) -> Option<String> {
    if status.ram_free_bytes > status.ram_total_bytes {
        return Some(format!(
            "ram_free_bytes {} above ram_total_bytes {}",
            status.ram_free_bytes, status.ram_total_bytes
        ));
    }
    if status.gpus.len() > MAX_REPORTED || status.models.len() > MAX_REPORTED {
        return Some(format!(
            "{} GPUs and {} models",
            status.gpus.len(),
            status.models.len()
        ));
    }
    if let Some(gpu) = status
        .gpus
        .iter()
        .find(|g| g.memory_free_bytes > g.memory_total_bytes)
    {
        return Some(format!(
            "GPU {} with memory_free_bytes {} above memory_total_bytes {}",
            gpu.index, gpu.memory_free_bytes, gpu.memory_total_bytes
        ));
    }
    if let Some(percent) = status.power.as_ref().and_then(|p| p.battery_percent) {
        if !(0.0..=100.0).contains(&percent) {
            return Some(format!("battery_percent {percent}"));
        }
    }
    let most = u32::try_from(MAX_REPORTED).unwrap_or(u32::MAX);
    if let Some(m) = status
        .models
        .iter()
        .find(|m| m.queue_depth > most || m.in_flight > most || m.instances > most)
    {
        return Some(format!(
            "model {} with queue_depth {}, in_flight {}, instances {}",
            m.name.chars().take(80).collect::<String>(),
            m.queue_depth,
            m.in_flight,
            m.instances
        ));
    }
    None
}

/// The worker certificate the caller presented (TLS verified it against the CA), if any.
pub fn worker_certificate<T>(
    r: &Request<T>,
    trust: &ClusterTrust,
) -> Result<Option<Holder>, ClusterError> {
    let Some(der) = r.peer_certs().and_then(|certs| certs.first().cloned()) else {
        return Ok(None);
    };
    let holder = localml_trust::ca::holder(&der)
        .map_err(|e| ClusterError::Unauthenticated(e.to_string()))?;
    if holder.role != Some(Role::Worker) {
        return Err(ClusterError::Unauthenticated(format!(
            "certificate '{}' is not a worker's",
            holder.name
        )));
    }
    if trust.is_revoked(&holder) {
        return Err(ClusterError::Unauthenticated(format!(
            "the certificate of worker '{}' was revoked (localml workers remove)",
            holder.name
        )));
    }
    Ok(Some(holder))
}

/// The calling scheduler replica's certificate (another replica copying a catalog file).
fn replica_certificate<T>(r: &Request<T>, trust: &ClusterTrust) -> Option<Holder> {
    let der = r.peer_certs().and_then(|certs| certs.first().cloned())?;
    let holder = localml_trust::ca::holder(&der).ok()?;
    (holder.role == Some(Role::Scheduler) && !trust.is_revoked(&holder)).then_some(holder)
}

fn require_certificate<T>(r: &Request<T>, trust: &ClusterTrust) -> Result<Holder, ClusterError> {
    worker_certificate(r, trust)?.ok_or_else(|| {
        ClusterError::Unauthenticated(
            "this call needs the worker's certificate (mutual TLS); join with a token first".into(),
        )
    })
}

fn bearer<T>(r: &Request<T>) -> Option<String> {
    let value = r.metadata().get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

fn same_worker(holder: &Holder, named: &str) -> Result<(), ClusterError> {
    if holder.name == named {
        Ok(())
    } else {
        Err(ClusterError::NotYours {
            holder: holder.name.clone(),
            named: named.to_string(),
        })
    }
}

impl ClusterService {
    async fn sign(&self, csr: &str, name: &str) -> Result<String, ClusterError> {
        let issued = self
            .trust
            .issue_time(name)
            .await
            .map_err(|e| ClusterError::Internal(e.to_string()))?;
        self.trust
            .ca
            .sign_worker(csr, name, issued, self.certificate_validity)
            .map_err(|e| ClusterError::BadRequest(e.to_string()))
    }

    async fn join_inner(&self, r: Request<JoinRequest>) -> Result<JoinResponse, ClusterError> {
        let holder = worker_certificate(&r, &self.trust)?;
        let token = bearer(&r);
        let JoinRequest {
            status,
            csr_pem,
            credentials_only,
        } = r.into_inner();
        let status = require_status(status)?;
        let certificate_pem = match holder {
            // A rejoin or a renewal: the certificate says who it is.
            Some(holder) => {
                same_worker(&holder, &status.name)?;
                if csr_pem.is_empty() {
                    String::new()
                } else {
                    tracing::info!(worker = %status.name, "worker certificate renewed");
                    self.sign(&csr_pem, &status.name).await?
                }
            }
            None => {
                let token = token.ok_or_else(|| {
                    ClusterError::Unauthenticated(
                        "a first join needs a join token (--token); later calls need the worker's certificate".into(),
                    )
                })?;
                self.trust
                    .check_token(&token)
                    .await
                    .map_err(ClusterError::Token)?;
                if csr_pem.is_empty() {
                    return Err(ClusterError::BadRequest(
                        "a join with a token must carry a certificate signing request".into(),
                    ));
                }
                localml_trust::ca::validate_name(&status.name)
                    .map_err(|e| ClusterError::BadRequest(e.to_string()))?;
                if let Some(why) = self.trust.reserved_name(&status.name) {
                    return Err(ClusterError::BadRequest(why));
                }
                if self.workers.is_live(&status.name) {
                    return Err(ClusterError::NameTaken(status.name));
                }
                let certificate = self.sign(&csr_pem, &status.name).await?;
                if self.bind_names {
                    let key = localml_trust::ca::csr_key_sha256(&csr_pem)
                        .map_err(|e| ClusterError::BadRequest(e.to_string()))?;
                    let claimed = self
                        .trust
                        .claim_name(&status.name, &key)
                        .await
                        .map_err(|e| ClusterError::Internal(e.to_string()))?;
                    if !claimed {
                        return Err(ClusterError::NameClaimed(status.name));
                    }
                }
                tracing::info!(worker = %status.name, "worker joined with a token; certificate issued");
                certificate
            }
        };
        // A worker that only came for its certificate registers when it serves (its agent
        // joins again with it): listed now, it would show Ready with nothing to serve.
        let worker_id = if credentials_only {
            String::new()
        } else {
            let id = self.workers.join(status.clone(), Instant::now());
            self.registrations.record(&status, true);
            id
        };
        Ok(JoinResponse {
            worker_id,
            report_interval_ms: self.report_interval_ms,
            certificate_pem,
            server_time_unix_ms: localml_proto::time::unix_ms() as i64,
        })
    }

    /// The caller's certificate must name the worker `id` is registered for.
    fn owns(&self, holder: &Holder, id: &str) -> Result<(), ClusterError> {
        match self.workers.name_of(id) {
            Some(name) => same_worker(holder, &name),
            None => Ok(()),
        }
    }
}

/// Peers named in a GetCatalogModel answer.
const MAX_PEERS: usize = 3;

/// Whether worker `s` serves `model`'s version from the catalog in the variant `model` is,
/// so holds those files (a model of its own repository, variant "", is not in its cache).
fn holds_variant(s: &WorkerStatus, model: &CatalogModel) -> bool {
    s.models
        .iter()
        .any(|m| m.name == model.name && m.version == model.version && m.variant == model.variant)
}

type BlobChunks = std::pin::Pin<Box<dyn futures::Stream<Item = Result<BlobChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Cluster for ClusterService {
    type FetchBlobStream = BlobChunks;

    async fn get_catalog_model(
        &self,
        r: Request<CatalogModelRef>,
    ) -> Result<Response<CatalogModel>, Status> {
        let holder = require_certificate(&r, &self.trust)?;
        let r = r.into_inner();
        let model = self.catalog.get(&r.name, &r.version).await?;
        let mut model = crate::catalog::Catalog::variant_of(model, &r.variant)?;
        // Ready catalog workers that serve this version's variant hold its files (another
        // variant's files are others).
        let mut peers: Vec<CatalogPeer> = self
            .workers
            .list(Instant::now())
            .into_iter()
            .filter(|w| w.state == WorkerState::Ready as i32)
            .filter_map(|w| w.status)
            .filter(|s| s.catalog && s.name != holder.name)
            .filter(|s| holds_variant(s, &model))
            .map(|s| CatalogPeer {
                name: s.name,
                address: s.inference_address,
            })
            .collect();
        // In a random order: the load spreads, and a peer that fails is not first again.
        fastrand::shuffle(&mut peers);
        peers.truncate(MAX_PEERS);
        model.peers = peers;
        Ok(Response::new(model))
    }

    async fn fetch_blob(
        &self,
        r: Request<FetchBlobRequest>,
    ) -> Result<Response<BlobChunks>, Status> {
        // Another replica copying a file reads only what this one holds; a worker's fetch
        // of a file this replica lacks brings it from another replica first.
        if let Some(replica) = replica_certificate(&r, &self.trust) {
            let r = r.into_inner();
            tracing::debug!(replica = %replica.name, sha256 = %r.sha256, offset = r.offset, "catalog file copied by another replica");
            let chunk = localml_serving::blobs::chunk_size(r.max_chunk_bytes, self.chunk_bytes);
            let chunks = self.catalog.fetch(&r.sha256, r.offset, chunk)?;
            return Ok(Response::new(Box::pin(futures::StreamExt::map(
                chunks,
                |c| c.map_err(Status::from),
            ))));
        }
        let holder = require_certificate(&r, &self.trust)?;
        let r = r.into_inner();
        tracing::debug!(worker = %holder.name, sha256 = %r.sha256, offset = r.offset, "model file fetched");
        let chunk = localml_serving::blobs::chunk_size(r.max_chunk_bytes, self.chunk_bytes);
        let chunks = self
            .catalog
            .fetch_anywhere(&r.sha256, r.offset, chunk)
            .await?;
        Ok(Response::new(Box::pin(futures::StreamExt::map(
            chunks,
            |c| c.map_err(Status::from),
        ))))
    }

    async fn replicate_blob(
        &self,
        r: Request<ReplicateBlobRequest>,
    ) -> Result<Response<ReplicateBlobResponse>, Status> {
        let Some(caller) = replica_certificate(&r, &self.trust) else {
            return Err(ClusterError::Unauthenticated(
                "only another scheduler replica may ask for a copy".into(),
            )
            .into());
        };
        let r = r.into_inner();
        crate::catalog::blobs::check_sha256(&r.sha256)?;
        let Some(replicas) = self.catalog.replicas() else {
            return Err(Status::failed_precondition(
                "this scheduler keeps no copies for other replicas (its store is not shared)",
            ));
        };
        // Asked by itself (an address that leads back here): nothing to copy, and the
        // caller sees whose answer it is.
        if r.requester == replicas.id() {
            return Ok(Response::new(ReplicateBlobResponse {
                copied: 0,
                replica: replicas.id().to_string(),
            }));
        }
        tracing::debug!(replica = %caller.name, source = %r.source, sha256 = %r.sha256, "copying a catalog file from another replica");
        let copied = replicas
            .copy_from(&self.catalog, &r.source, &r.sha256, r.size)
            .await?;
        Ok(Response::new(ReplicateBlobResponse {
            copied,
            replica: replicas.id().to_string(),
        }))
    }

    async fn get_runtime(
        &self,
        r: Request<GetRuntimeRequest>,
    ) -> Result<Response<RuntimeBuild>, Status> {
        let holder = require_certificate(&r, &self.trust)?;
        let flavor = r.into_inner().flavor;
        let build = self.catalog.runtime(&flavor).await?;
        tracing::info!(worker = %holder.name, flavor = %flavor, version = %build.version, "ONNX Runtime build fetched");
        Ok(Response::new(build))
    }

    async fn get_ca(&self, _: Request<GetCaRequest>) -> Result<Response<GetCaResponse>, Status> {
        Ok(Response::new(GetCaResponse {
            ca_pem: self.trust.ca.cert_pem().to_string(),
        }))
    }

    async fn join(&self, r: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Ok(Response::new(self.join_inner(r).await?))
    }

    async fn renew_certificate(
        &self,
        r: Request<RenewCertificateRequest>,
    ) -> Result<Response<RenewCertificateResponse>, Status> {
        let holder = require_certificate(&r, &self.trust)?;
        let csr_pem = r.into_inner().csr_pem;
        let certificate_pem = self.sign(&csr_pem, &holder.name).await?;
        if self.bind_names {
            let key = localml_trust::ca::csr_key_sha256(&csr_pem)
                .map_err(|e| ClusterError::BadRequest(e.to_string()))?;
            self.trust
                .rebind_name(&holder.name, &key)
                .await
                .map_err(|e| ClusterError::Internal(e.to_string()))?;
        }
        tracing::info!(worker = %holder.name, "worker certificate renewed");
        Ok(Response::new(RenewCertificateResponse {
            certificate_pem,
            server_time_unix_ms: localml_proto::time::unix_ms() as i64,
        }))
    }

    async fn report_status(&self, r: Request<StatusReport>) -> Result<Response<ReportAck>, Status> {
        let holder = require_certificate(&r, &self.trust)?;
        let r = r.into_inner();
        let status = require_status(r.status)?;
        same_worker(&holder, &status.name)?;
        self.owns(&holder, &r.worker_id)?;
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
        let holder = require_certificate(&r, &self.trust)?;
        let id = r.into_inner().worker_id;
        self.owns(&holder, &id)?;
        if self.workers.leave(&id) {
            Ok(Response::new(LeaveResponse {}))
        } else {
            Err(ClusterError::UnknownWorker(id).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_workers_serving_the_same_variant() {
        let serving = |variant: &str| WorkerStatus {
            models: vec![LoadedModel {
                name: "m".into(),
                version: "2".into(),
                variant: variant.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let wanted = |variant: &str| CatalogModel {
            name: "m".into(),
            version: "2".into(),
            variant: variant.into(),
            ..Default::default()
        };
        assert!(holds_variant(&serving("int8"), &wanted("int8")));
        assert!(holds_variant(&serving("fp32"), &wanted("fp32")));
        assert!(!holds_variant(&serving("fp32"), &wanted("int8")));
        assert!(!holds_variant(&serving("int8"), &wanted("fp32")));
        assert!(
            !holds_variant(&serving(""), &wanted("fp32")),
            "its own repository's"
        );
        let mut other_version = wanted("int8");
        other_version.version = "1".into();
        assert!(!holds_variant(&serving("int8"), &other_version));
    }

    fn status() -> WorkerStatus {
        WorkerStatus {
            name: "pc-1".into(),
            inference_address: "10.0.0.5:8101".into(),
            ram_total_bytes: 8 << 30,
            ram_free_bytes: 2 << 30,
            ..Default::default()
        }
    }

    #[test]
    fn absurd_reports_are_refused_naming_the_field() {
        assert!(require_status(Some(status())).is_ok());
        type Spoil = fn(&mut WorkerStatus);
        let cases: Vec<(Spoil, &str)> = vec![
            (|s| s.ram_free_bytes = u64::MAX, "ram_free_bytes"),
            (
                |s| {
                    s.gpus.push(Gpu {
                        memory_total_bytes: 1,
                        memory_free_bytes: 2,
                        ..Default::default()
                    })
                },
                "memory_free_bytes",
            ),
            (
                |s| {
                    s.power = Some(PowerStatus {
                        battery_percent: Some(250.0),
                        ..Default::default()
                    })
                },
                "battery_percent",
            ),
            (
                |s| {
                    s.models.push(LoadedModel {
                        name: "m".into(),
                        queue_depth: u32::MAX,
                        ..Default::default()
                    })
                },
                "queue_depth",
            ),
            (
                |s| s.models = vec![LoadedModel::default(); MAX_REPORTED + 1],
                "models",
            ),
        ];
        for (spoil, field) in cases {
            let mut s = status();
            spoil(&mut s);
            let status = Status::from(require_status(Some(s)).expect_err(field));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{field}");
            assert!(status.message().contains(field), "{}", status.message());
        }
    }
}
