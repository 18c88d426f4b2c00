//! The scheduler process: builds the runtime's parts from the config, serves the
//! client-facing and worker-facing gRPC servers on the listeners it is given, runs the
//! background loops (leases, store followers, leadership), and stops gracefully.

use std::future::Future;
use std::sync::Arc;

use localml_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use localml_proto::localml::v1::admin_server::AdminServer;
use localml_proto::localml::v1::backup_server::BackupServer;
use localml_proto::localml::v1::catalog_server::CatalogServer;
use localml_proto::localml::v1::cluster_server::ClusterServer;
use localml_proto::localml::v1::jobs_server::JobsServer;
use localml_proto::localml::v1::trust_server::TrustServer;
use localml_serving::service::OipService;
use tokio::net::TcpListener;

use crate::config::SchedulerConfig;
use crate::services::{admin, cluster, inference, jobs as jobs_api, trust as trust_api};
use crate::workers::Workers;
use crate::workers::{cordons, registrations};
use crate::{config, deployments, dispatch, jobs, leader, observe, size_limit, stats};

/// The scheduler's two listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// Inference clients and operators.
    pub clients: TcpListener,
    /// Workers.
    pub cluster: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz` (`--http-listen`), when enabled.
    pub http: Option<TcpListener>,
    /// The Open Inference Protocol over HTTP (`--rest-listen`), when enabled.
    pub rest: Option<TcpListener>,
}

/// Streams a client may reset before the server accepted them, per connection.
const MAX_PENDING_RESETS: usize = 256;
/// Bytes per chunk of a model file fetched from the catalog.
const CATALOG_CHUNK_BYTES: usize = 1 << 20;

/// Whether a client listener (the gRPC client port, the REST listener) on `addr` serves
/// TLS: on one reachable from the LAN unless `--insecure`, or as `client_tls` says.
pub fn serves_tls(config: &SchedulerConfig, addr: std::net::SocketAddr) -> bool {
    match config.client_tls {
        crate::auth::ClientTls::Required => true,
        crate::auth::ClientTls::Off => false,
        crate::auth::ClientTls::Auto => !addr.ip().is_loopback() && !config.insecure,
    }
}

/// What a client listener (gRPC client port or REST) asks of its callers, by its address
/// (docs/security.md): one policy for both.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerSecurity {
    pub keys_required: bool,
    pub tls: bool,
    /// Keys not required on a loopback listener: only local programs reach it.
    pub open_loopback: bool,
    /// What `--insecure` leaves open, for the log and `/readyz`.
    pub warning: Option<String>,
}

impl ListenerSecurity {
    /// The policy for the listener `what` on `addr`; a LAN listener without TLS is an
    /// error unless `--insecure`.
    pub fn decide(
        config: &SchedulerConfig,
        what: &str,
        addr: std::net::SocketAddr,
    ) -> Result<ListenerSecurity, config::ConfigError> {
        let loopback = addr.ip().is_loopback();
        let keys_required =
            config.auth == crate::auth::AuthMode::Required || (!loopback && !config.insecure);
        let tls = serves_tls(config, addr);
        if !loopback && !tls && !config.insecure {
            return Err(config::ConfigError::Invalid {
                field: "client_tls",
                problem: format!("is off, but the {what} {addr} is reachable from the LAN: keys would cross it in clear text; serve TLS, listen on loopback, or pass --insecure"),
            });
        }
        let warning = (!loopback && config.insecure).then(|| {
            format!(
                "--insecure: the {what} {addr} is reachable from the LAN{}{}; anyone on the network can read what clients send{}",
                if keys_required { "" } else { " without API keys" },
                if tls { "" } else { " without TLS" },
                if keys_required { "" } else { ", run inference, read jobs and change the cluster" }
            )
        });
        if let Some(w) = &warning {
            tracing::warn!("{w}");
        }
        tracing::info!(%addr, keys_required, tls, "{what} authentication");
        Ok(ListenerSecurity {
            keys_required,
            tls,
            open_loopback: loopback && !keys_required,
            warning,
        })
    }
}

/// Why the scheduler could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// The config (file or flags) is invalid; the message names the field.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A gRPC server failed.
    #[error("serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// A listener could not be bound or read (the message names the address).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The state store could not be opened.
    #[error(transparent)]
    Store(#[from] localml_store::StoreError),
    /// The API keys could not be read, or the first admin key not written.
    #[error(transparent)]
    Keys(#[from] crate::auth::keys::BootstrapError),
    /// The cluster CA could not be read, created or used.
    #[error("cluster CA: {0}")]
    Trust(#[from] crate::trust::TrustStateError),
}

/// Runs the scheduler until `shutdown` completes; then both servers stop accepting and
/// finish the requests they have.
pub async fn run(
    config: SchedulerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    config.validate()?;
    let address = localml_store::StoreAddress::parse(&config.store, &config.data_dir)?;
    let state = address.open().await?;
    tracing::info!(store = %address, "cluster state");
    // API keys: the first admin key, then every key known before the port serves.
    crate::auth::keys::ensure_admin_key(state.as_ref(), &config.data_dir).await?;
    if let Some(file) = &config.admin_key_file {
        crate::auth::keys::import_admin_key(state.as_ref(), file).await?;
    }
    let ring = Arc::new(crate::auth::keys::KeyRing::default());
    ring.load(state.as_ref())
        .await
        .map_err(crate::auth::keys::BootstrapError::from)?;
    if let Some(open) = ring.anonymous(localml_proto::time::unix_ms()) {
        tracing::warn!(keys = %open.name, models = ?open.models, "anonymous key: inference of these models is open to every caller that reaches the client port, without a key");
    }
    let client_addr = listeners.clients.local_addr()?;
    crate::auth::keys::write_client_port(&config.data_dir, client_addr.port());
    let mut warnings = Vec::new();
    let client = ListenerSecurity::decide(&config, "client port", client_addr)?;
    warnings.extend(client.warning.clone());
    let (keys_required, client_tls) = (client.keys_required, client.tls);
    let auth_state = Arc::new(crate::auth::layer::AuthState::new(
        Arc::clone(&ring),
        keys_required,
    ));
    let auth = crate::auth::layer::AuthLayer {
        state: Arc::clone(&auth_state),
    };
    let rest_addr = listeners
        .rest
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?;
    let rest_security = match rest_addr {
        Some(addr) => {
            let security = ListenerSecurity::decide(&config, "REST listener", addr)?;
            warnings.extend(security.warning.clone());
            Some(security)
        }
        None => None,
    };
    let mut listening = vec![listeners.cluster.local_addr()?, client_addr];
    listening.extend(rest_addr);
    let hosts = crate::trust::listener_hosts(&listening, &config.tls_sans);
    let ca_files = config
        .ca_cert_file
        .as_deref()
        .zip(config.ca_key_file.as_deref());
    let trust =
        Arc::new(crate::trust::ClusterTrust::load(Arc::clone(&state), &hosts, ca_files).await?);
    if let Some(file) = &config.join_token_file {
        trust.import_token(file).await?;
    }
    tracing::info!(ca_sha256 = %trust.ca.hash(), "cluster CA");
    crate::trust::write_ca_file(&config.data_dir, trust.ca.cert_pem());
    let identity = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => crate::trust::operator_identity(cert, key)?,
        _ => trust.client_identity(),
    };
    let client_tls = client_tls.then(|| identity.grpc());
    let mut workers = Workers::new(config.max_message_bytes).with_tls(trust.dial());
    if config.worker_keepalive_ms > 0 {
        workers = workers.with_keepalive(
            std::time::Duration::from_millis(config.worker_keepalive_ms),
            std::time::Duration::from_millis(config.worker_keepalive_timeout_ms.max(1)),
        );
    }
    let workers = Arc::new(workers);
    let stats = Arc::new(stats::Stats::default());
    // The recent windows of the page and ListModels roll every ten seconds; the task ends
    // with the scheduler's statistics.
    let rolling = Arc::downgrade(&stats);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(stats::WINDOW);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(stats) = rolling.upgrade() else {
                break;
            };
            stats.roll(localml_proto::time::unix_ms());
        }
    });
    let profiles = localml_framework::profile::Profiles::build(&config.profiles)
        .map_err(config::ConfigError::Profiles)?;
    let dispatcher = Arc::new(
        dispatch::Dispatcher::new(
            Arc::clone(&workers),
            stats,
            profiles,
            config.dispatch_attempts,
            config.max_queued_requests,
            config.max_queued_bytes,
        )
        .with_max_queue_wait(std::time::Duration::from_millis(config.max_queue_wait_ms))
        .with_queue_safety_net(std::time::Duration::from_millis(config.queue_safety_net_ms)),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Node lifecycle: check leases a few times per grace period.
    let lifecycle = {
        let workers = Arc::clone(&workers);
        let (grace, forget) = (config.grace_period(), config.forget_after());
        let tick = config.report_interval() / 2;
        let stopped = wait(stopped.clone());
        tokio::spawn(async move {
            tokio::pin!(stopped);
            let mut interval = tokio::time::interval(tick);
            loop {
                tokio::select! {
                    _ = interval.tick() => workers.check_leases(tokio::time::Instant::now(), grace, forget),
                    _ = &mut stopped => break,
                }
            }
        })
    };

    // Model files live beside the embedded store, whatever the store.
    let blobs =
        crate::catalog::blobs::Blobs::open(&config.data_dir.join("blobs")).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("{}: {e}", config.data_dir.join("blobs").display()),
            )
        })?;
    let catalog = Arc::new(crate::catalog::Catalog::new(
        Arc::clone(&state),
        Arc::new(blobs),
    ));
    // With a shared store, several replicas: each file of a push is kept on two of them.
    let mut replicas_task = None;
    if state.backend() != "embedded" {
        let cluster = listening[0];
        let advertise = config.cluster_advertise.clone().unwrap_or_else(|| {
            let host = match cluster.ip().is_unspecified() {
                true => hosts.first().cloned().unwrap_or_else(|| "127.0.0.1".into()),
                false => cluster.ip().to_string(),
            };
            match host.parse::<std::net::Ipv6Addr>() {
                Ok(_) => format!("[{host}]:{}", cluster.port()),
                Err(_) => format!("{host}:{}", cluster.port()),
            }
        });
        let replicas = Arc::new(crate::catalog::replicas::Replicas::new(
            Arc::clone(&state),
            leader::identity(),
            advertise,
            trust.dial().for_replica(),
        ));
        catalog.set_replicas(Arc::clone(&replicas));
        tokio::spawn(Arc::clone(&replicas).sync(
            Arc::clone(&catalog),
            std::time::Duration::from_millis(config.replica_sync_interval_ms),
            stopped.clone(),
        ));
        replicas_task = Some(tokio::spawn(replicas.run(stopped.clone())));
    }
    let chunk_bytes = CATALOG_CHUNK_BYTES.min(config.max_message_bytes / 2);
    let scheduler_inference = Arc::new(inference::SchedulerInference {
        dispatcher: Arc::clone(&dispatcher),
        catalog: Arc::clone(&catalog),
    });
    let inference = crate::forward::ForwardingInference::new(
        GrpcInferenceServiceServer::new(OipService(Arc::clone(&scheduler_inference)))
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes),
        Arc::clone(&scheduler_inference),
        config.max_message_bytes,
    );
    let jobs_api = JobsServer::new(jobs_api::JobsService {
        store: Arc::clone(&state),
        dispatcher: Arc::clone(&dispatcher),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);

    // One replica leads and runs the job dispatcher; the others stand by.
    let is_leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leading = {
        let is_leader = Arc::clone(&is_leader);
        let runner = Arc::new(jobs::runner::Runner {
            store: Arc::clone(&state),
            dispatcher: Arc::clone(&dispatcher),
            config: config.jobs.clone(),
        });
        let controller = deployments::Controller {
            store: Arc::clone(&state),
            workers: Arc::clone(&workers),
            settle: config.grace_period(),
        };
        let ttl = std::time::Duration::from_millis(config.leader_lease_ms);
        let store = Arc::clone(&state);
        let stopped = stopped.clone();
        tokio::spawn(async move {
            let identity = leader::identity();
            loop {
                let campaign = leader::campaign(Arc::clone(&store), &identity, ttl);
                let leadership = tokio::select! {
                    l = campaign => l,
                    _ = wait(stopped.clone()) => return,
                };
                is_leader.store(true, std::sync::atomic::Ordering::Relaxed);
                // Leadership lost: both stop at once, whatever they wait for (a store
                // call to an etcd it cannot reach would otherwise keep them acting as
                // leader after the lease); jobs they were running are dropped and the
                // next leader runs them again (at least once; their end is fenced).
                let mut lost = leadership.lost.clone();
                tokio::select! {
                    _ = async {
                        tokio::join!(
                            Arc::clone(&runner).run(&leadership, stopped.clone()),
                            controller.run(&leadership, stopped.clone()),
                        )
                    } => {}
                    _ = lost.wait_for(|l| *l) => {
                        tracing::warn!("leadership lost: the job dispatcher and the deployment controller stop");
                    }
                }
                is_leader.store(false, std::sync::atomic::Ordering::Relaxed);
                if *stopped.borrow() {
                    leadership.resign().await;
                    return;
                }
            }
        })
    };
    let admin = AdminServer::new(admin::AdminService {
        stats: Arc::clone(&dispatcher.stats),
        workers: Arc::clone(&workers),
        store: Arc::clone(&state),
    });
    let keys_followed = tokio::spawn(Arc::clone(&ring).follow(Arc::clone(&state), stopped.clone()));
    let keys_api = localml_proto::localml::v1::keys_server::KeysServer::new(
        crate::services::keys::KeysService {
            store: Arc::clone(&state),
        },
    );
    let cordons = tokio::spawn(cordons::follow_cordons(
        Arc::clone(&state),
        Arc::clone(&workers),
        stopped.clone(),
    ));
    let registrations = Arc::new(registrations::Registrations::new(
        Arc::clone(&state),
        config.grace_period(),
    ));
    let followed = tokio::spawn(registrations::Registrations::follow(
        Arc::clone(&state),
        Arc::clone(&workers),
        stopped.clone(),
    ));
    let assignments = Arc::new(deployments::Assignments::default());
    let assigned =
        tokio::spawn(Arc::clone(&assignments).follow(Arc::clone(&state), stopped.clone()));
    let revocations = tokio::spawn(Arc::clone(&trust).follow_revocations(stopped.clone()));
    let backup_api = BackupServer::new(crate::services::backup::BackupService {
        store: Arc::clone(&state),
        chunk_bytes: crate::backup::CHUNK_BYTES.min(config.max_message_bytes / 2),
    })
    .max_encoding_message_size(config.max_message_bytes);
    let rest_catalog = Arc::clone(&catalog);
    let catalog_api = CatalogServer::new(crate::services::catalog::CatalogService {
        catalog: Arc::clone(&catalog),
        chunk_bytes,
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    let trust_api = TrustServer::new(trust_api::TrustService {
        trust: Arc::clone(&trust),
        workers: Arc::clone(&workers),
        store: Arc::clone(&state),
    });
    let cluster_api = ClusterServer::new(cluster::ClusterService {
        assignments,
        registrations,
        trust: Arc::clone(&trust),
        workers: Arc::clone(&workers),
        report_interval_ms: u32::try_from(config.report_interval_ms).unwrap_or(u32::MAX),
        certificate_validity: std::time::Duration::from_secs(config.worker_certificate_validity_s),
        bind_names: config.bind_worker_names,
        catalog,
        chunk_bytes,
    })
    .max_encoding_message_size(config.max_message_bytes);

    // Streams a client resets before the server took them (h2's guard against "rapid
    // reset" floods): h2's default of 20 closed the connection of a client whose burst of
    // short deadlines ran out while the scheduler was busy, failing its next requests
    // (RESOURCE_EXHAUSTED "too_many_resets"). 256 still bounds a flood.
    let mut clients = tonic::transport::Server::builder()
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS));
    if let Some(tls) = client_tls {
        clients = clients.tls_config(tls)?;
    }
    let clients = clients
        .layer(size_limit::SizeLimitLayer)
        .layer(auth)
        .add_service(inference)
        .add_service(jobs_api)
        .add_service(admin)
        .add_service(keys_api)
        .add_service(trust_api)
        .add_service(backup_api)
        .add_service(catalog_api)
        .serve_with_incoming_shutdown(
            localml_serving::service::incoming(listeners.clients),
            wait(stopped.clone()),
        );
    let cluster_server = tonic::transport::Server::builder()
        .tls_config(trust.cluster_tls())?
        .add_service(cluster_api)
        .serve_with_incoming_shutdown(
            localml_serving::service::incoming(listeners.cluster),
            wait(stopped.clone()),
        );
    let store_ok = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let store_check = tokio::spawn(observe::watch_store(
        Arc::clone(&state),
        Arc::clone(&store_ok),
        stopped.clone(),
    ));
    let http = listeners.http.map(|listener| {
        let probe = Arc::new(observe::SchedulerProbe {
            dispatcher: Arc::clone(&dispatcher),
            leading: Arc::clone(&is_leader),
            store_ok,
            backend: state.backend(),
            warnings,
        });
        tokio::spawn(localml_serving::http::serve(
            listener,
            probe,
            wait(stopped.clone()),
        ))
    });
    let rest = match (listeners.rest, rest_security) {
        (Some(listener), Some(security)) => {
            let tls = match security.tls {
                true => Some(
                    crate::rest::tls_config(&identity.cert_pem, &identity.key_pem)
                        .map_err(crate::trust::TrustStateError::File)?,
                ),
                false => None,
            };
            let state = Arc::new(crate::rest::Rest {
                inference: OipService(Arc::clone(&scheduler_inference)),
                // One count of failed keys per address for both protocols.
                auth: Arc::new(auth_state.with_required(security.keys_required)),
                max_body_bytes: config.max_message_bytes,
                open_loopback: security.open_loopback,
                cors_origins: config.rest_cors_origins.clone(),
                admin: admin::AdminService {
                    stats: Arc::clone(&dispatcher.stats),
                    workers: Arc::clone(&workers),
                    store: Arc::clone(&state),
                },
                jobs: jobs_api::JobsService {
                    store: Arc::clone(&state),
                    dispatcher: Arc::clone(&dispatcher),
                },
                catalog: crate::services::catalog::CatalogService {
                    catalog: Arc::clone(&rest_catalog),
                    chunk_bytes,
                },
                tickets: Default::default(),
                stopping: stopped.clone(),
            });
            let listener = crate::rest::RestListener::new(listener, tls)?;
            Some(tokio::spawn(crate::rest::serve(
                listener,
                state,
                wait(stopped.clone()),
            )))
        }
        _ => None,
    };
    let clients = tokio::spawn(clients);
    let cluster_server = tokio::spawn(cluster_server);
    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop.send(true);
    let (a, b, _, _, _, _, _, _, _, _) = tokio::join!(
        clients,
        cluster_server,
        lifecycle,
        leading,
        cordons,
        followed,
        assigned,
        store_check,
        keys_followed,
        revocations
    );
    if let Some(http) = http {
        let _ = http.await;
    }
    if let Some(rest) = rest {
        // Requests still in flight get a while; a client that never finishes its upload
        // does not keep the scheduler from stopping.
        match tokio::time::timeout(std::time::Duration::from_secs(30), rest).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("the REST listener failed: {e}"),
            Ok(Err(e)) => tracing::warn!("the REST listener stopped: {e}"),
            Err(_) => tracing::warn!("REST requests still in flight after 30 s; stopping anyway"),
        }
    }
    // Its registration for catalog copies goes (else the others would try to copy to
    // it until its lease ran out).
    if let Some(task) = replicas_task {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), task).await;
    }
    for result in [a, b] {
        result.map_err(|e| std::io::Error::other(e.to_string()))??;
    }
    tracing::info!("scheduler stopped");
    Ok(())
}
