//! The worker's side of the cluster API: join the scheduler, report status periodically
//! (which renews the worker's lease), rejoin when the scheduler forgot us, leave on shutdown.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use localml_proto::localml::v1::cluster_client::ClusterClient;
use localml_proto::localml::v1::{JoinRequest, LeaveRequest, StatusReport};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::state::Worker;

/// Refresh GPU memory every this many reports (nvidia-smi takes tens of milliseconds).
const GPU_REFRESH_EVERY: u64 = 10;
/// Report interval used until the scheduler says otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

/// A lazily connected channel to the scheduler's cluster address.
pub fn scheduler_channel(address: &str) -> Result<Channel, tonic::transport::Error> {
    let uri = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    Ok(Endpoint::from_shared(uri)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_lazy())
}

/// Runs until `shutdown` turns true, then leaves the cluster.
pub async fn run(worker: Arc<Worker>, channel: Channel, mut shutdown: watch::Receiver<bool>) {
    let mut client = ClusterClient::new(channel);
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
        let status = worker.status();
        let outcome = match &id {
            None => client
                .join(JoinRequest {
                    status: Some(status),
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
                    if !r.into_inner().known {
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
    worker.draining.store(true, Ordering::SeqCst);
    if let Some(worker_id) = id {
        let leave = client.leave(LeaveRequest { worker_id });
        match tokio::time::timeout(Duration::from_secs(3), leave).await {
            Ok(Ok(_)) => tracing::info!("left the cluster"),
            Ok(Err(status)) => tracing::warn!(message = status.message(), "leave failed"),
            Err(_) => tracing::warn!("leave timed out"),
        }
    }
}
