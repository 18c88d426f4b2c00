//! localml-worker: the agent on each PC. It loads ONNX models with ONNX Runtime, serves
//! the Open Inference Protocol, and reports its hardware, power and load to the scheduler.
//!
//! # Layout
//! - [`config`]: the worker's YAML config and flags.
//! - [`runtime`]: finding, installing and loading the ONNX Runtime shared library.
//! - [`repository`]: the model repository on disk (Triton layout, `config.yaml`).
//! - [`model`]: a loaded model version: sessions, execution provider, statistics.
//! - [`validate`]: request checks against a model's signature before ONNX Runtime runs.
//! - [`hardware`], [`power`]: RAM (procfs), GPUs (NVML), and power source (sysfs).
//! - [`ups`]: a UPS's state from NUT's upsd (`--ups NAME@HOST`).
//! - [`energy`]: joules per inference from RAPL, NVML or configured watts.
//! - [`state`]: the worker's shared state and its status report.
//! - [`service`]: the worker's `GRPCInferenceService`.
//! - [`observe`]: `/metrics`, `/healthz`, `/readyz` and energy counters.
//! - [`agent`]: join, report, leave.
//! - [`credentials`]: the join token, the worker's certificate and key (mutual TLS).
//! - [`cli`]: the worker's flags, shared by `localml-worker` and `localml worker`.

pub mod agent;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod energy;
pub mod hardware;
pub mod model;
pub mod observe;
pub mod power;
pub mod repository;
pub mod runtime;
pub mod service;
pub mod state;
pub mod ups;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use localml_proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer;
use localml_serving::service::OipService;
use tokio::net::TcpListener;

use crate::config::{RuntimeFlavor, WorkerConfig};
use crate::model::LoadedModel;
use crate::state::{ModelTable, Worker};

/// The worker's name in logs and in the inference service's metadata.
pub const NAME: &str = "localml-worker";
/// The version a worker reports to the scheduler and to clients.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Why a worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The configuration file or flags are invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// ONNX Runtime cannot be found or loaded.
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
    /// The model repository cannot be scanned.
    #[error(transparent)]
    Repository(#[from] repository::RepositoryError),
    /// `--scheduler` names no usable address (address, why).
    #[error("invalid scheduler address '{0}': {1}")]
    SchedulerAddress(String, String),
    /// The inference listen address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    /// The `--http-listen` address cannot be bound.
    #[error("cannot listen for metrics and health checks on {address}: {source}")]
    HttpListen {
        address: String,
        source: std::io::Error,
    },
    /// The task loading the models at start panicked.
    #[error("{0}")]
    LoadTask(#[from] tokio::task::JoinError),
    /// The gRPC server failed.
    #[error("serving failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Another I/O failure (reading a bound listener's address).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The worker could not get or read its certificate (no token, wrong CA, refused).
    #[error(transparent)]
    Credentials(#[from] credentials::CredentialError),
}

/// Loads every model version of the repository; a model that fails is logged and skipped.
pub fn load_models(
    env: &ort::environment::Environment,
    config: &WorkerConfig,
    providers: &[String],
) -> Result<ModelTable, WorkerError> {
    let options = config.load_options();
    let mut table = ModelTable::new();
    let sources = repository::scan(&config.models)?;
    if sources.is_empty() {
        tracing::warn!(repository = %config.models.display(), "no models found (expected <repo>/<model>/<version>/model.onnx)");
    }
    for source in sources {
        match LoadedModel::load(env, &source, providers, &options) {
            Ok(model) => {
                tracing::info!(
                    model = %model.name,
                    version = model.version,
                    provider = %model.execution_provider,
                    memory_mib = model.memory_bytes / (1024 * 1024),
                    "model loaded"
                );
                table
                    .entry(model.name.clone())
                    .or_default()
                    .insert(model.version, Arc::new(model));
            }
            Err(e) => tracing::error!(error = %e, "model not loaded"),
        }
    }
    Ok(table)
}

/// `fd00::5:8101` (an IPv6 pod IP with a port appended, as Kubernetes' `$(POD_IP):8101`
/// gives) becomes `[fd00::5]:8101`; anything else is kept.
pub fn bracket_ipv6(address: &str) -> String {
    if address.starts_with('[') || address.matches(':').count() < 2 {
        return address.to_string();
    }
    match address.rsplit_once(':') {
        Some((host, port)) if host.parse::<std::net::Ipv6Addr>().is_ok() => {
            format!("[{host}]:{port}")
        }
        _ => address.to_string(),
    }
}

/// The address the scheduler should dial: the configured one, the listen address, or,
/// for a wildcard listen address, this PC's address on the route to the scheduler.
fn advertise_address(config: &WorkerConfig, bound: SocketAddr) -> String {
    if let Some(a) = &config.advertise {
        return bracket_ipv6(a);
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface.
    let first = agent::scheduler_addresses(&config.scheduler)
        .into_iter()
        .next()
        .unwrap_or_default();
    let local_ip = std::net::ToSocketAddrs::to_socket_addrs(&first)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .and_then(|target| {
            let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
            socket.connect(target).ok()?;
            socket.local_addr().ok().map(|a| a.ip())
        });
    match local_ip {
        Some(ip) => SocketAddr::new(ip, bound.port()).to_string(),
        None => SocketAddr::new([127, 0, 0, 1].into(), bound.port()).to_string(),
    }
}

/// The role in the caller's certificate (None when it names none or cannot be read);
/// UNAUTHENTICATED without a certificate.
fn certificate_role(
    request: &tonic::Request<()>,
) -> Result<Option<localml_trust::ca::Role>, tonic::Status> {
    let certs = request.peer_certs();
    let first = certs.as_ref().and_then(|c| c.first()).ok_or_else(|| {
        tonic::Status::unauthenticated("a client certificate from the cluster CA is required")
    })?;
    Ok(localml_trust::ca::holder(first.as_ref())
        .ok()
        .and_then(|h| h.role))
}

/// Admits a `Peers` call (the catalog files this worker holds) from another worker, a
/// scheduler or an operator: any certificate from the cluster CA.
pub fn peer_role(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    use localml_trust::ca::Role;
    match certificate_role(&request)? {
        Some(Role::Worker | Role::Scheduler | Role::Operator) => Ok(request),
        _ => Err(tonic::Status::permission_denied(
            "only the cluster's workers, schedulers and operators may fetch model files",
        )),
    }
}

/// Admits a call on the inference port only from a scheduler's or an operator's
/// certificate (PERMISSION_DENIED otherwise, UNAUTHENTICATED without one).
fn caller_role(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    use localml_trust::ca::Role;
    match certificate_role(&request)? {
        Some(Role::Scheduler | Role::Operator) => Ok(request),
        _ => Err(tonic::Status::permission_denied(
            "only scheduler replicas and operator certificates may call a worker's inference port",
        )),
    }
}

/// Logs what changed between two UPS readings: the state at info, a new reason at warn.
fn log_ups(target: &ups::UpsTarget, before: Option<&ups::UpsPower>, now: &ups::UpsPower) {
    if before.is_none_or(|b| b.status != now.status || b.source != now.source) {
        tracing::info!(ups = %target, status = %now.status, source = ?now.source, charge = ?now.battery_percent, runtime_s = ?now.runtime_seconds, "UPS state");
    }
    if !now.reason.is_empty() && before.is_none_or(|b| b.reason != now.reason) {
        tracing::warn!(ups = %target, "{}", now.reason);
    }
}

/// Closes an energy window every [`energy::WINDOW`] while the worker lives (counters are
/// read off the async runtime's threads: NVML and sysfs reads block).
async fn meter_energy(worker: std::sync::Weak<Worker>) {
    loop {
        let Some(w) = worker.upgrade() else {
            return;
        };
        let _ = tokio::task::spawn_blocking(move || w.sample_energy()).await;
        tokio::time::sleep(energy::WINDOW).await;
    }
}

/// Reads the UPS every second while the worker lives.
async fn poll_ups(
    worker: std::sync::Weak<Worker>,
    target: ups::UpsTarget,
    on_low_battery: config::LowBatteryAction,
    stop: tokio::sync::oneshot::Sender<()>,
) {
    let mut stop = Some(stop);
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let reading = ups::read(&target).await;
        let Some(worker) = worker.upgrade() else {
            return;
        };
        log_ups(&target, worker.ups().as_ref(), &reading);
        let low = reading.low_battery;
        worker.set_ups(reading);
        if low && on_low_battery == config::LowBatteryAction::Stop {
            if let Some(stop) = stop.take() {
                tracing::warn!(ups = %target, "UPS battery low: stopping (on_low_battery: stop)");
                let _ = stop.send(());
            }
        }
    }
}

/// No ONNX Runtime library on this PC: joins the cluster (with the token, or the
/// certificate already in the data directory) and fetches the build in the scheduler's
/// catalog into `root`: the GPU build where the PC has NVIDIA's driver and the catalog
/// has one, else the CPU build.
async fn fetch_runtime(
    config: &WorkerConfig,
    root: &Path,
    advertise: String,
) -> Result<PathBuf, WorkerError> {
    use runtime::Flavor;
    let addresses = agent::scheduler_addresses(&config.scheduler);
    let token = config.join_token()?;
    // What the worker knows before ONNX Runtime runs; its full status follows once it
    // serves.
    let status = localml_proto::localml::v1::WorkerStatus {
        name: config.name.clone(),
        inference_address: advertise,
        ..Default::default()
    };
    let credentials =
        credentials::obtain(&config.data_dir, token.as_ref(), &addresses, &status).await?;
    let tls = credentials.cluster_tls();
    let cache = catalog::ModelCache::new(root.to_path_buf()).with_rate(config.fetch_rate);
    // The GPU build needs NVIDIA's driver on the PC; its CUDA libraries come with it
    // (or are on the PC: see catalog::ModelCache::fetch_runtime).
    let flavors: &[Flavor] = match config.runtime_flavor {
        RuntimeFlavor::Auto if Path::new("/proc/driver/nvidia/version").exists() => {
            &[Flavor::Gpu, Flavor::Cpu]
        }
        RuntimeFlavor::Auto | RuntimeFlavor::Cpu => &[Flavor::Cpu],
        RuntimeFlavor::Gpu => &[Flavor::Gpu],
    };
    let mut last = String::from("no scheduler address");
    for round in 0..3 {
        if round > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        }
        let mut none_anywhere = true;
        for flavor in flavors {
            for address in &addresses {
                let window = catalog::flow_window(config.fetch_rate);
                let channel = agent::scheduler_channel_with_window(address, Some(&tls), window)
                    .map_err(|e| WorkerError::SchedulerAddress(address.clone(), e.to_string()))?;
                let mut client =
                    localml_proto::localml::v1::cluster_client::ClusterClient::new(channel);
                match cache.fetch_runtime(&mut client, &tls, *flavor).await {
                    Ok(library) => return Ok(library),
                    Err(e) => {
                        none_anywhere &= matches!(e, catalog::FetchError::NoBuild(_));
                        tracing::warn!(scheduler = %address, flavor = flavor.name(), error = %e, "cannot fetch ONNX Runtime");
                        last = e.to_string();
                    }
                }
            }
        }
        // Every scheduler says it has no build: waiting will not bring one.
        if none_anywhere {
            break;
        }
    }
    Err(runtime::RuntimeError::NotFetched(last).into())
}

/// Runs a worker on `listener` until `shutdown` completes, then leaves the cluster and
/// finishes in-flight requests.
pub async fn run(
    config: WorkerConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    config.validate()?;
    // Health endpoints answer from the start (not ready while models load).
    let probe_worker = Arc::new(std::sync::OnceLock::new());
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http = http.map(|listener| {
        let probe = Arc::new(observe::WorkerProbe {
            worker: Arc::clone(&probe_worker),
            powercap_root: config.powercap_root.clone(),
        });
        tokio::spawn(localml_serving::http::serve(listener, probe, async move {
            let _ = http_stopped.await;
        }))
    });
    // Awaited in two places: while fetching ONNX Runtime, and while serving.
    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    let fetched = config.data_dir.join("runtime");
    let (library, source) = match runtime::locate(config.onnxruntime.as_deref(), Some(&fetched)) {
        Err(runtime::RuntimeError::NotFound) => {
            tracing::info!("no ONNX Runtime library on this PC; fetching the scheduler's");
            tokio::select! {
                library = fetch_runtime(&config, &fetched, advertise_address(&config, listener.local_addr()?)) => (library?, runtime::Source::Scheduler),
                _ = shutdown.clone() => {
                    tracing::info!("stopped before ONNX Runtime was fetched");
                    return Ok(());
                }
            }
        }
        found => found?,
    };
    tracing::info!(library = %library.display(), ?source, "loading ONNX Runtime");
    let threading = config.threading();
    let env = match runtime::init(&library, NAME, &threading) {
        Ok(env) => env,
        Err(e) => {
            // A fetched build that does not load (a wrong one was pushed) goes, so the
            // next start fetches the catalog's build again.
            if matches!(
                source,
                runtime::Source::Fetched | runtime::Source::Scheduler
            ) {
                if let Some(dir) = library.parent() {
                    let _ = std::fs::remove_dir_all(dir);
                    tracing::warn!(dir = %dir.display(), "the ONNX Runtime build fetched from the scheduler does not load; removed it: the next start fetches the catalog's build again");
                }
            }
            return Err(e.into());
        }
    };
    tracing::info!(
        intra_op_threads = threading.intra_op,
        inter_op_threads = threading.inter_op,
        spinning = threading.spinning,
        "ONNX Runtime threads: one pool shared by every model"
    );
    let providers = runtime::available_providers();
    tracing::info!(?providers, "execution providers");
    let models = {
        let (env, config, providers) = (env.clone(), config.clone(), providers.clone());
        tokio::task::spawn_blocking(move || match config.load {
            config::LoadMode::All => load_models(&env, &config, &providers),
            config::LoadMode::OnDemand => Ok(ModelTable::new()),
        })
        .await??
    };
    let bound = listener.local_addr()?;
    let advertise = advertise_address(&config, bound);
    let addresses = agent::scheduler_addresses(&config.scheduler);
    if addresses.is_empty() {
        return Err(WorkerError::SchedulerAddress(
            config.scheduler.clone(),
            "no address".into(),
        ));
    }
    for a in &addresses {
        agent::scheduler_channel(a, None)
            .map_err(|e| WorkerError::SchedulerAddress(a.clone(), e.to_string()))?;
    }
    let token = config.join_token()?;
    let data_dir = config.data_dir.clone();
    let schedulers = config.scheduler.clone();
    let max_message = config.max_message_bytes;
    let on_demand = config.load == config::LoadMode::OnDemand;
    let available = repository::scan(&config.models)?;
    let loader = state::Loader {
        env: env.clone(),
        options: config.load_options(),
    };
    if on_demand {
        tracing::info!(
            available = available.len(),
            "loading on demand: models load when a deployment assigns them"
        );
    }
    let ups = match &config.ups {
        Some(text) => Some(
            text.parse::<ups::UpsTarget>()
                .map_err(|e| config::ConfigError::Invalid(e.to_string()))?,
        ),
        None => None,
    };
    let on_low_battery = config.on_low_battery;
    let worker =
        Arc::new(Worker::new(config, models, providers, advertise).with_loader(loader, available));
    // The UPS is read before joining, so the first report already says where power comes
    // from; then every second. `stop` on low battery ends the worker like a SIGTERM.
    tokio::spawn(meter_energy(Arc::downgrade(&worker)));
    let (ups_stop, ups_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(target) = ups {
        let reading = ups::read(&target).await;
        log_ups(&target, None, &reading);
        worker.set_ups(reading);
        tokio::spawn(poll_ups(
            Arc::downgrade(&worker),
            target,
            on_low_battery,
            ups_stop,
        ));
    }
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            Ok(()) = ups_stopped => {}
        }
    };
    // The certificate first: the inference port serves TLS with it, and the agents
    // present it.
    tokio::pin!(shutdown);
    let status = worker.status();
    let credentials = tokio::select! {
        c = credentials::obtain(&data_dir, token.as_ref(), &addresses, &status) => c?,
        _ = &mut shutdown => {
            tracing::info!("stopped before joining the cluster");
            return Ok(());
        }
    };
    // The certificate is renewed two thirds into its validity, online: the agents and
    // the inference port take the new one.
    let (renewed, mut credentials) = tokio::sync::watch::channel(credentials);
    let renewal = tokio::spawn(credentials::keep_renewed(
        data_dir.clone(),
        addresses.clone(),
        status.name.clone(),
        renewed,
    ));
    let (stop_agent, agent_shutdown) = tokio::sync::watch::channel(false);
    let agent = tokio::spawn(agent::run_all(
        Arc::clone(&worker),
        schedulers,
        credentials.clone(),
        agent_shutdown,
    ));
    let service = GrpcInferenceServiceServer::new(OipService(Arc::new(service::WorkerInference {
        worker: Arc::clone(&worker),
    })))
    .max_decoding_message_size(max_message)
    .max_encoding_message_size(max_message);
    // TLS admits any certificate from the cluster CA; only scheduler replicas and
    // operators' tools may call: another worker's certificate (any token holder can get
    // one) may not bypass the scheduler's key, model and tenant checks.
    let service = tonic::service::interceptor::InterceptedService::new(service, caller_role);
    let peers = tonic::service::interceptor::InterceptedService::new(
        localml_proto::localml::v1::peers_server::PeersServer::new(catalog::PeerService {
            worker: Arc::clone(&worker),
        }),
        peer_role,
    );
    let _ = probe_worker.set(Arc::clone(&worker));
    let drain = async move {
        shutdown.await;
        tracing::info!("shutting down: leaving the cluster, then finishing in-flight requests");
        let _ = stop_agent.send(true);
        let _ = agent.await;
    };
    tokio::pin!(drain);
    // One server per certificate on the same listener: when a renewed one arrives, the
    // old server stops accepting and finishes its connections (clients reconnect, and
    // verify the new certificate) while the new one accepts.
    let listener = Arc::new(listener);
    let mut retired = Vec::new();
    let mut renewals = true;
    loop {
        let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .tls_config(credentials.borrow_and_update().server_tls())?
                .add_service(service.clone())
                .add_service(peers.clone())
                .serve_with_incoming_shutdown(
                    localml_serving::service::incoming_shared(Arc::clone(&listener)),
                    async {
                        let _ = server_stopped.await;
                    },
                ),
        );
        let renewed = tokio::select! {
            changed = credentials.changed(), if renewals => changed.is_ok(),
            _ = &mut drain => {
                let _ = stop_server.send(());
                for old in retired {
                    let _ = old.await;
                }
                server.await.map_err(|e| std::io::Error::other(e.to_string()))??;
                break;
            }
        };
        if renewed {
            tracing::info!("the inference port serves the renewed certificate");
        } else {
            renewals = false; // the renewal task ended; keep serving
        }
        let _ = stop_server.send(());
        retired.push(server);
    }
    renewal.abort();
    let _ = http_stop.send(());
    if let Some(http) = http {
        let _ = http.await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bracket_ipv6;

    #[test]
    fn ipv6_advertise_addresses_get_brackets() {
        assert_eq!(bracket_ipv6("fd00::5:8101"), "[fd00::5]:8101");
        assert_eq!(bracket_ipv6("[fd00::5]:8101"), "[fd00::5]:8101");
        assert_eq!(bracket_ipv6("10.42.0.7:8101"), "10.42.0.7:8101");
        assert_eq!(bracket_ipv6("pc-3.lan:8101"), "pc-3.lan:8101");
    }
}
