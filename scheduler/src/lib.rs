//! localml-scheduler: receives inference requests from standard Open Inference Protocol
//! clients and routes each to a worker PC; workers join and report through the cluster API.
//!
//! # Layout
//! - [`config`]: the scheduler's YAML config.
//! - [`deployments`]: model deployments: specs, the leader's controller, assignments.
//! - [`registrations`]: worker registrations with leases in the store, shared by replicas.
//! - [`registry`]: workers, leases and node-lifecycle states; lookups for routing.
//! - [`framework`]: the scheduling framework's contracts and runtime (no I/O).
//! - [`plugins`]: the scheduling plugins; [`profile`]: profiles from the config.
//! - [`estimator`]: peak-EWMA latency per worker and model.
//! - [`dispatch`]: forwarding to a worker with retries within the client's deadline.
//! - [`inference`]: the client-facing `GRPCInferenceService`.
//! - [`cluster`]: the worker-facing cluster API and the admin API.
//! - [`observe`]: `/metrics` (Prometheus), `/healthz`, `/readyz`.
//! - [`size_limit`]: RESOURCE_EXHAUSTED for oversized messages.
//! - [`stats`]: per-model counters for ModelStatistics.
//! - [`store`]: cluster state (embedded file or etcd) behind one `Store` trait.
//! - [`cli`]: flags and the process entry point.

pub mod cli;
pub mod cluster;
pub mod config;
pub mod deployments;
pub mod dispatch;
pub mod estimator;
pub mod framework;
pub mod inference;
pub mod jobs;
pub mod leader;
pub mod observe;
pub mod plugins;
pub mod profile;
pub mod queue;
pub mod registrations;
pub mod registry;
pub mod sim;
pub mod size_limit;
pub mod stats;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use localml_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use localml_proto::localml::v1::admin_server::AdminServer;
use localml_proto::localml::v1::cluster_server::ClusterServer;
use localml_proto::localml::v1::jobs_server::JobsServer;
use localml_proto::service::OipService;
use tokio::net::TcpListener;

use crate::config::SchedulerConfig;
use crate::registry::Registry;

/// The scheduler's two listeners, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// Inference clients and operators.
    pub clients: TcpListener,
    /// Workers.
    pub cluster: TcpListener,
    /// `/metrics`, `/healthz`, `/readyz` (`--http-listen`), when enabled.
    pub http: Option<TcpListener>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// Runs the scheduler until `shutdown` completes; then both servers stop accepting and
/// finish the requests they have.
pub async fn run(
    config: SchedulerConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SchedulerError> {
    config.validate()?;
    let address = store::StoreAddress::parse(&config.store, &config.data_dir)?;
    let state = address.open().await?;
    tracing::info!(store = %address, "cluster state");
    let registry = Arc::new(Registry::new(config.max_message_bytes));
    let stats = Arc::new(stats::Stats::default());
    let profiles =
        profile::Profiles::build(&config.profiles).map_err(config::ConfigError::Profiles)?;
    let dispatcher = Arc::new(dispatch::Dispatcher::new(
        Arc::clone(&registry),
        stats,
        profiles,
        config.dispatch_attempts,
        config.max_queued_requests,
    ));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let wait = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Node lifecycle: check leases a few times per grace period.
    let lifecycle = {
        let registry = Arc::clone(&registry);
        let (grace, forget) = (config.grace_period(), config.forget_after());
        let tick = config.report_interval() / 2;
        let stopped = wait(stopped.clone());
        tokio::spawn(async move {
            tokio::pin!(stopped);
            let mut interval = tokio::time::interval(tick);
            loop {
                tokio::select! {
                    _ = interval.tick() => registry.check_leases(tokio::time::Instant::now(), grace, forget),
                    _ = &mut stopped => break,
                }
            }
        })
    };

    let inference =
        GrpcInferenceServiceServer::new(OipService(Arc::new(inference::SchedulerInference {
            dispatcher: Arc::clone(&dispatcher),
        })))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let jobs_api = JobsServer::new(jobs::JobsService {
        store: Arc::clone(&state),
        dispatcher: Arc::clone(&dispatcher),
    })
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);

    // One replica leads and runs the job dispatcher; the others stand by.
    let is_leader = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let leading = {
        let is_leader = Arc::clone(&is_leader);
        let runner = Arc::new(jobs::Runner {
            store: Arc::clone(&state),
            dispatcher: Arc::clone(&dispatcher),
            config: config.jobs.clone(),
        });
        let controller = deployments::Controller {
            store: Arc::clone(&state),
            registry: Arc::clone(&registry),
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
                tokio::join!(
                    Arc::clone(&runner).run(&leadership, stopped.clone()),
                    controller.run(&leadership, stopped.clone()),
                );
                is_leader.store(false, std::sync::atomic::Ordering::Relaxed);
                if *stopped.borrow() {
                    leadership.resign().await;
                    return;
                }
            }
        })
    };
    let admin = AdminServer::new(cluster::AdminService {
        stats: Arc::clone(&dispatcher.stats),
        registry: Arc::clone(&registry),
        store: Arc::clone(&state),
    });
    let cordons = tokio::spawn(cluster::follow_cordons(
        Arc::clone(&state),
        Arc::clone(&registry),
        stopped.clone(),
    ));
    let registrations = Arc::new(registrations::Registrations::new(
        Arc::clone(&state),
        config.grace_period(),
    ));
    let followed = tokio::spawn(registrations::Registrations::follow(
        Arc::clone(&state),
        Arc::clone(&registry),
        stopped.clone(),
    ));
    let assignments = Arc::new(deployments::Assignments::default());
    let assigned =
        tokio::spawn(Arc::clone(&assignments).follow(Arc::clone(&state), stopped.clone()));
    let cluster_api = ClusterServer::new(cluster::ClusterService {
        assignments,
        registrations,
        registry: Arc::clone(&registry),
        report_interval_ms: u32::try_from(config.report_interval_ms).unwrap_or(u32::MAX),
    });

    let clients = tonic::transport::Server::builder()
        .layer(size_limit::SizeLimitLayer)
        .add_service(inference)
        .add_service(jobs_api)
        .add_service(admin.clone())
        .serve_with_incoming_shutdown(
            localml_proto::service::incoming(listeners.clients),
            wait(stopped.clone()),
        );
    let workers = tonic::transport::Server::builder()
        .add_service(cluster_api)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            localml_proto::service::incoming(listeners.cluster),
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
        });
        tokio::spawn(localml_proto::http::serve(
            listener,
            probe,
            wait(stopped.clone()),
        ))
    });
    let clients = tokio::spawn(clients);
    let workers = tokio::spawn(workers);
    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop.send(true);
    let (a, b, _, _, _, _, _, _) = tokio::join!(
        clients,
        workers,
        lifecycle,
        leading,
        cordons,
        followed,
        assigned,
        store_check
    );
    if let Some(http) = http {
        let _ = http.await;
    }
    for result in [a, b] {
        result.map_err(|e| std::io::Error::other(e.to_string()))??;
    }
    tracing::info!("scheduler stopped");
    Ok(())
}
