//! The worker's side of the cluster API: join the scheduler, report status periodically
//! (which renews the worker's lease), rejoin when the scheduler forgot us, leave on shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use localml_proto::localml::v1::cluster_client::ClusterClient;
use localml_proto::localml::v1::{JoinRequest, LeaveRequest, ModelRef, StatusReport};
use tokio::sync::watch;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::credentials::Credentials;

use crate::state::Worker;

/// Refresh GPU memory every this many reports. The interval dates from when a reading
/// spawned nvidia-smi (tens of milliseconds); NVML is cheap, but GPU memory only moves
/// when models load, so the cadence is kept.
const GPU_REFRESH_EVERY: u64 = 10;
/// Report interval used until the scheduler says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// A lazily connected channel to the scheduler's cluster address, over mutual TLS with
/// the worker's certificate (`tls`), or plaintext only where a caller checks an address.
pub fn scheduler_channel(
    address: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    scheduler_channel_with_window(address, tls, None)
}

/// As [`scheduler_channel`], with HTTP/2 flow-control windows of `window` bytes (for a
/// worker that fetches files under a rate limit, [`crate::catalog::flow_window`]).
pub fn scheduler_channel_with_window(
    address: &str,
    tls: Option<&ClientTlsConfig>,
    window: Option<u32>,
) -> Result<Channel, tonic::transport::Error> {
    let host = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    let endpoint = match tls {
        Some(tls) => Endpoint::from_shared(format!("https://{host}"))?.tls_config(tls.clone())?,
        None => Endpoint::from_shared(format!("http://{host}"))?,
    };
    Ok(endpoint
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .initial_stream_window_size(window)
        .initial_connection_window_size(window)
        .connect_lazy())
}

/// The scheduler replicas to report to, from `--scheduler a,b,c`: each entry is
/// host:port; a host name with several IPv4 records stands for each of them (a headless
/// Service in Kubernetes). Duplicates are dropped; order is kept.
pub fn scheduler_addresses(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let host = entry.rsplit_once(':').map(|(h, _)| h).unwrap_or(entry);
        let is_ip = host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok();
        let resolved: Vec<String> = if is_ip || entry.contains("://") {
            Vec::new()
        } else {
            std::net::ToSocketAddrs::to_socket_addrs(entry)
                .map(|addrs| {
                    addrs
                        .filter(|a| a.is_ipv4())
                        .map(|a| a.to_string())
                        .collect()
                })
                .unwrap_or_default()
        };
        let expanded = if resolved.len() > 1 {
            resolved
        } else {
            vec![entry.to_string()]
        };
        for a in expanded {
            if !out.contains(&a) {
                out.push(a);
            }
        }
    }
    out
}

/// How often `--scheduler` names are resolved again (replicas come and go in a rollout).
const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// Reports to every scheduler replica named by `schedulers` (see
/// [`scheduler_addresses`]) until `shutdown` turns true; each replica keeps the worker's
/// state, so losing one loses nothing. Names are resolved again every few seconds: new
/// replicas get an agent, replaced ones lose theirs.
pub async fn run_all(
    worker: Arc<Worker>,
    schedulers: String,
    credentials: watch::Receiver<Credentials>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut agents: std::collections::HashMap<
        String,
        (tokio::task::JoinHandle<()>, watch::Sender<bool>),
    > = std::collections::HashMap::new();
    loop {
        let wanted = scheduler_addresses(&schedulers);
        for address in &wanted {
            if agents.contains_key(address) {
                continue;
            }
            let tls = credentials.borrow().cluster_tls();
            if let Err(e) = scheduler_channel(address, Some(&tls)) {
                tracing::warn!(scheduler = %address, error = %e, "invalid scheduler address");
                continue;
            }
            let (stop, stopped) = watch::channel(false);
            let worker = Arc::clone(&worker);
            let span = tracing::info_span!("agent", scheduler = %address);
            let handle = tokio::spawn(tracing::Instrument::instrument(
                run(worker, address.clone(), credentials.clone(), stopped),
                span,
            ));
            agents.insert(address.clone(), (handle, stop));
        }
        if !wanted.is_empty() {
            let gone: Vec<String> = agents
                .keys()
                .filter(|a| !wanted.contains(a))
                .cloned()
                .collect();
            for address in gone {
                if let Some((_, stop)) = agents.remove(&address) {
                    tracing::info!(scheduler = %address, "scheduler replica gone from DNS; its agent stops");
                    let _ = stop.send(true);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RESOLVE_EVERY) => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    worker.draining.store(true, Ordering::SeqCst);
    for (_, stop) in agents.values() {
        let _ = stop.send(true);
    }
    for (_, (handle, _)) in agents {
        let _ = handle.await;
    }
}

/// Fetches an assigned model the repository lacks from the scheduler's catalog; the next
/// report's assignments load it. A failure is logged and tried again 10 s later.
fn fetch_from_catalog(
    worker: &Arc<Worker>,
    client: ClusterClient<Channel>,
    tls: ClientTlsConfig,
    m: ModelRef,
) {
    if !worker.begin_fetch(&m) {
        return;
    }
    let worker = Arc::clone(worker);
    tokio::spawn(async move {
        let mut client = client;
        // Room first: a download into a full cache would fail.
        if let Some(budget) = worker.config.cache_bytes {
            if let Err(e) = worker.cache.evict(budget).await {
                tracing::warn!(error = %e, "cannot evict from the model cache");
            }
        }
        match worker
            .cache
            .fetch(&mut client, &tls, &m.name, &m.version, &m.variant)
            .await
        {
            Ok(fetched) => {
                tracing::info!(
                    model = %m.name,
                    version = fetched.source.version,
                    from_scheduler_bytes = fetched.from_scheduler,
                    from_peers_bytes = fetched.from_peers,
                    repaired_files = fetched.repaired,
                    "model fetched from the scheduler's catalog"
                );
                // Loaded on the next report if it is still assigned then.
                worker.add_available(fetched.source);
                worker.end_fetch(&m, true);
                if let Some(budget) = worker.config.cache_bytes {
                    match worker.cache.evict(budget).await {
                        Ok((0, _)) => {}
                        Ok((files, bytes)) => tracing::info!(
                            files,
                            bytes,
                            budget,
                            "evicted unused models from the cache"
                        ),
                        Err(e) => tracing::warn!(error = %e, "cannot evict from the model cache"),
                    }
                }
            }
            Err(e) => {
                tracing::warn!(model = %m.name, version = %m.version, error = %e, "cannot fetch the assigned model from the catalog; trying again later");
                worker.end_fetch(&m, false);
            }
        }
    });
}

/// Reports to the scheduler at `address` until `shutdown` turns true, then leaves the
/// cluster. A renewed certificate (on `credentials`) is used from the next report on.
pub async fn run(
    worker: Arc<Worker>,
    address: String,
    mut credentials: watch::Receiver<Credentials>,
    mut shutdown: watch::Receiver<bool>,
) {
    let connect = |credentials: &Credentials| {
        let window = crate::catalog::flow_window(worker.config.fetch_rate);
        scheduler_channel_with_window(&address, Some(&credentials.cluster_tls()), window)
            .map(ClusterClient::new)
    };
    let Ok(mut client) = connect(&credentials.borrow_and_update()) else {
        return; // run_all checked the address
    };
    let mut id: Option<String> = None;
    let mut interval = DEFAULT_INTERVAL;
    let mut reports: u64 = 0;
    let mut failing = false;
    loop {
        if *shutdown.borrow() {
            break;
        }
        if reports.is_multiple_of(GPU_REFRESH_EVERY) {
            let w = Arc::clone(&worker);
            let _ = tokio::task::spawn_blocking(move || w.refresh_gpus()).await;
        }
        reports += 1;
        if credentials.has_changed().unwrap_or(false) {
            if let Ok(renewed) = connect(&credentials.borrow_and_update()) {
                tracing::debug!("reporting with the renewed certificate");
                client = renewed;
            }
        }
        let status = worker.status();
        let outcome = match &id {
            None => client
                .join(JoinRequest {
                    status: Some(status),
                    csr_pem: String::new(),
                    credentials_only: false,
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    tracing::info!(worker_id = %r.worker_id, "joined the scheduler");
                    interval = Duration::from_millis(u64::from(r.report_interval_ms.max(50)));
                    id = Some(r.worker_id);
                }),
            Some(worker_id) => client
                .report_status(StatusReport {
                    worker_id: worker_id.clone(),
                    status: Some(status),
                })
                .await
                .map(|r| {
                    let r = r.into_inner();
                    for m in worker.apply_assignments(&r.load, &r.unload) {
                        let tls = credentials.borrow().cluster_tls();
                        fetch_from_catalog(&worker, client.clone(), tls, m);
                    }
                    if !r.known {
                        tracing::info!(
                            "the scheduler does not know this worker (restarted?); joining again"
                        );
                        id = None;
                    }
                }),
        };
        match outcome {
            Ok(()) if failing => {
                tracing::info!("scheduler reachable again");
                failing = false;
            }
            Ok(()) => {}
            Err(status) if !failing => {
                tracing::warn!(code = ?status.code(), message = status.message(), "cannot reach the scheduler; retrying");
                failing = true;
            }
            Err(_) => {}
        }
        if id.is_none() && !failing && reports > 1 {
            continue; // rejoin at once
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    if let Some(worker_id) = id {
        let leave = client.leave(LeaveRequest { worker_id });
        match tokio::time::timeout(Duration::from_secs(3), leave).await {
            Ok(Ok(_)) => tracing::info!("left the cluster"),
            Ok(Err(status)) => tracing::warn!(message = status.message(), "leave failed"),
            Err(_) => tracing::warn!("leave timed out"),
        }
    }
}

#[cfg(test)]
mod address_tests {
    use super::scheduler_addresses;

    #[test]
    fn lists_are_split_trimmed_and_deduplicated() {
        assert_eq!(
            scheduler_addresses("10.0.0.1:8002, 10.0.0.2:8002,,10.0.0.1:8002"),
            ["10.0.0.1:8002", "10.0.0.2:8002"]
        );
        assert_eq!(scheduler_addresses("localhost:8002"), ["localhost:8002"]);
        assert!(scheduler_addresses(" , ").is_empty());
    }
}
