//! A worker that can take a request: what dispatch needs (its gRPC channel, the count
//! of requests in flight on it), shared so a lookup only clones pointers, and the latency
//! this scheduler observes per model (peak-EWMA).

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use localml_framework::estimator::PeakEwma;
use localml_proto::localml::v1 as pb;
use tonic::transport::Endpoint;

pub use crate::forward::WorkerClient;

/// A worker that can take a request now: what dispatch needs, shared so a lookup only
/// clones pointers.
pub struct Candidate {
    pub id: String,
    pub name: String,
    /// Requests this scheduler has dispatched to the worker and not yet seen answered.
    pub dispatched: Arc<AtomicU32>,
    pub client: WorkerClient,
    /// Notified when the worker stops answering (missed reports, its lease expired, a
    /// failed dispatch): requests in flight on it give up there and go to another worker.
    pub lost: tokio::sync::Notify,
    /// Counts those moments, so a request dispatched just after one (between the
    /// snapshot and waiting on `lost`) sees it.
    pub lost_epoch: std::sync::atomic::AtomicU64,
    /// Scheduler-observed latency per "model:version".
    latency: Mutex<HashMap<String, PeakEwma>>,
    /// Requests of each "model:version" the worker answered (its answers received, not
    /// calls dropped or cut: those may still run there). A report's counts less the
    /// answers since it are what the worker holds now ([`super::routing`]).
    answered: Mutex<HashMap<String, u64>>,
}

fn latency_key(model: &str, version: &str) -> String {
    format!("{model}:{version}")
}

impl Candidate {
    /// The worker stopped answering: the requests waiting on it give up there.
    pub fn lose_in_flight(&self) {
        self.lost_epoch
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.lost.notify_waiters();
    }

    /// Records the latency of a request this worker answered.
    pub fn observe_latency(&self, model: &str, version: &str, sample_ms: f64, now_ms: u64) {
        let mut map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(latency_key(model, version))
            .or_default()
            .observe(sample_ms, now_ms);
    }

    /// Counts an answer the worker gave to a request of `model` `version`.
    pub fn note_answered(&self, model: &str, version: &str) {
        let mut map = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(latency_key(model, version)).or_default();
        *n = n.saturating_add(1);
    }

    /// The answers counted so far, per "model:version" (kept with each report).
    pub(super) fn answered(&self) -> HashMap<String, u64> {
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Answers to requests of `model` `version` since `at_report` was taken.
    pub(super) fn answered_since(
        &self,
        at_report: &HashMap<String, u64>,
        model: &str,
        version: &str,
    ) -> u32 {
        let key = latency_key(model, version);
        let now = self
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .copied()
            .unwrap_or(0);
        let then = at_report.get(&key).copied().unwrap_or(0);
        u32::try_from(now.saturating_sub(then)).unwrap_or(u32::MAX)
    }

    pub(super) fn peak_ewma_ms(&self, model: &str, version: &str, now_ms: u64) -> f64 {
        let map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&latency_key(model, version))
            .and_then(|e| e.fresh_estimate(now_ms, localml_framework::estimator::STALE_MS))
            .unwrap_or(0.0)
    }
}

/// A candidate for the worker `id` at the address it reported, with a lazily connected
/// channel; `None` when the address is unusable.
pub(super) fn connect(
    id: &str,
    status: &pb::WorkerStatus,
    dispatched: &Arc<AtomicU32>,
    max_message_bytes: usize,
    dial: Option<&crate::trust::WorkerDial>,
    keepalive: Option<(Duration, Duration)>,
) -> Option<Arc<Candidate>> {
    // Only the address in the worker's registration, and only a server whose certificate
    // from the cluster CA names this worker.
    let endpoint = match dial {
        Some(dial) => Endpoint::from_shared(format!("https://{}", status.inference_address))
            .ok()?
            .tls_config(dial.for_worker(&status.name))
            .ok()?,
        None => Endpoint::from_shared(format!("http://{}", status.inference_address)).ok()?,
    };
    let mut endpoint = endpoint
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    if let Some((interval, timeout)) = keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(interval)
            .keep_alive_timeout(timeout)
            .keep_alive_while_idle(true);
    }
    let channel = endpoint.connect_lazy();
    let client = WorkerClient::new(channel, max_message_bytes);
    Some(Arc::new(Candidate {
        id: id.to_string(),
        name: status.name.clone(),
        dispatched: Arc::clone(dispatched),
        client,
        lost: tokio::sync::Notify::new(),
        lost_epoch: std::sync::atomic::AtomicU64::new(0),
        latency: Mutex::new(HashMap::new()),
        answered: Mutex::new(HashMap::new()),
    }))
}
