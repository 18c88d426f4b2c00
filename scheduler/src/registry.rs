//! The scheduler's view of the workers: registrations, leases (renewed by status
//! reports), node-lifecycle states, and lookups for routing. One writer at a time behind a
//! lock held only for in-memory work, never across I/O.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use localml_proto::localml::v1 as pb;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::estimator::PeakEwma;
use crate::framework::{ModelOnWorker, PowerSource, Snapshot, WorkerInfo};

pub type WorkerClient = GrpcInferenceServiceClient<Channel>;

/// Kubernetes-style node lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Ready,
    /// Missed reports for the grace period, or failed a dispatch; gets no traffic.
    NotReady,
    /// Left the cluster: finishes what it has, gets nothing new.
    Draining,
}

impl WorkerState {
    pub fn to_proto(self) -> pb::WorkerState {
        match self {
            WorkerState::Ready => pb::WorkerState::Ready,
            WorkerState::NotReady => pb::WorkerState::NotReady,
            WorkerState::Draining => pb::WorkerState::Draining,
        }
    }
}

struct WorkerEntry {
    id: String,
    status: pb::WorkerStatus,
    state: WorkerState,
    reason: String,
    last_report: Instant,
    dispatched: Arc<AtomicU32>,
    /// What routing needs; `None` while the worker's address is unusable.
    handle: Option<Arc<Candidate>>,
    /// An operator cordoned it (kept across rejoins under the same name).
    cordoned: bool,
    /// Power source before the last change, and when it changed.
    previous_power: PowerSource,
    power_changed_at: Instant,
    /// Known through the store (another replica hears from it), not from its own reports.
    remote: bool,
}

/// Free RAM under this share of the total is the MemoryPressure condition (MemoryFit's
/// default headroom).
const MEMORY_PRESSURE_PERCENT: u64 = 5;

/// The conditions that hold for a worker's last report.
fn conditions(status: &pb::WorkerStatus) -> Vec<String> {
    let mut out = Vec::new();
    if status.ram_total_bytes > 0
        && status.ram_free_bytes * 100 < status.ram_total_bytes * MEMORY_PRESSURE_PERCENT
    {
        out.push("MemoryPressure".to_string());
    }
    match power_of(status) {
        PowerSource::Battery => out.push("OnBattery".to_string()),
        PowerSource::Ups => out.push("OnUPS".to_string()),
        _ => {}
    }
    out
}

fn power_of(status: &pb::WorkerStatus) -> PowerSource {
    let source = status.power.as_ref().map(|p| p.source).unwrap_or_default();
    match pb::PowerSource::try_from(source) {
        Ok(pb::PowerSource::Mains) => PowerSource::Mains,
        Ok(pb::PowerSource::Battery) => PowerSource::Battery,
        Ok(pb::PowerSource::Ups) => PowerSource::Ups,
        _ => PowerSource::Unknown,
    }
}

/// A worker that can take a request now: what dispatch needs, shared so a lookup only
/// clones pointers.
pub struct Candidate {
    pub id: String,
    pub name: String,
    /// Requests this scheduler has dispatched to the worker and not yet seen answered.
    pub dispatched: Arc<AtomicU32>,
    pub client: WorkerClient,
    /// Scheduler-observed latency per "model:version".
    latency: Mutex<HashMap<String, PeakEwma>>,
}

fn latency_key(model: &str, version: &str) -> String {
    format!("{model}:{version}")
}

impl Candidate {
    /// Records the latency of a request this worker answered.
    pub fn observe_latency(&self, model: &str, version: &str, sample_ms: f64, now_ms: u64) {
        let mut map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(latency_key(model, version))
            .or_default()
            .observe(sample_ms, now_ms);
    }

    fn peak_ewma_ms(&self, model: &str, version: &str, now_ms: u64) -> f64 {
        let map = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&latency_key(model, version))
            .and_then(|e| e.fresh_estimate(now_ms, crate::estimator::STALE_MS))
            .unwrap_or(0.0)
    }
}

/// Result of looking a model up for routing.
pub enum Lookup {
    Found(Vec<Arc<Candidate>>),
    /// No worker has the model at all.
    UnknownModel,
    /// The model exists but not in that version.
    UnknownVersion {
        available: Vec<String>,
    },
    /// Only workers that are not Ready have it.
    NoReadyWorker {
        details: Vec<String>,
    },
}

pub struct Registry {
    workers: RwLock<HashMap<String, WorkerEntry>>,
    next_id: AtomicU64,
    max_message_bytes: usize,
    /// Origin of the snapshot clock.
    epoch: Instant,
    /// Names of cordoned workers (from the store, shared by every replica); kept for
    /// workers that are not connected, so a cordon outlives rejoins and restarts.
    cordons: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn version_key(v: &str) -> (u64, String) {
    (v.parse().unwrap_or(0), v.to_string())
}

impl Registry {
    pub fn new(max_message_bytes: usize) -> Registry {
        Registry {
            workers: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            max_message_bytes,
            epoch: Instant::now(),
            cordons: Default::default(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, WorkerEntry>> {
        self.workers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, WorkerEntry>> {
        self.workers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn handle_for(
        &self,
        id: &str,
        status: &pb::WorkerStatus,
        dispatched: &Arc<AtomicU32>,
    ) -> Option<Arc<Candidate>> {
        let endpoint =
            Endpoint::from_shared(format!("http://{}", status.inference_address)).ok()?;
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect_lazy();
        let client = GrpcInferenceServiceClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        Some(Arc::new(Candidate {
            id: id.to_string(),
            name: status.name.clone(),
            dispatched: Arc::clone(dispatched),
            client,
            latency: Mutex::new(HashMap::new()),
        }))
    }

    /// Registers a worker. A worker rejoining under the same name replaces its old entry.
    pub fn join(&self, status: pb::WorkerStatus, now: Instant) -> String {
        self.insert(status, now, false)
    }

    /// Adds an entry; a `remote` one (from the store) never replaces a worker that reports
    /// here, checked under the same lock as the insert.
    fn insert(&self, status: pb::WorkerStatus, now: Instant, remote: bool) -> String {
        let id = format!("w{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let dispatched = Arc::new(AtomicU32::new(0));
        let handle = self.handle_for(&id, &status, &dispatched);
        let (state, reason) = match (&handle, status.draining) {
            (None, _) => (
                WorkerState::NotReady,
                format!("invalid inference address '{}'", status.inference_address),
            ),
            (Some(_), true) => (WorkerState::Draining, "worker is draining".to_string()),
            (Some(_), false) => (WorkerState::Ready, String::new()),
        };
        let cordoned = self.is_cordoned(&status.name);
        let mut workers = self.write();
        if remote {
            if let Some(direct) = workers
                .values()
                .find(|w| w.status.name == status.name && !w.remote)
            {
                return direct.id.clone();
            }
        }
        workers.retain(|_, w| w.status.name != status.name);
        tracing::info!(worker = %status.name, id = %id, address = %status.inference_address, remote, "worker joined");
        workers.insert(
            id.clone(),
            WorkerEntry {
                id: id.clone(),
                state,
                reason,
                last_report: now,
                previous_power: power_of(&status),
                power_changed_at: now,
                status,
                dispatched,
                handle,
                cordoned,
                remote,
            },
        );
        id
    }

    /// A registration read from the store: ignored for workers that report here (their
    /// own reports are fresher); otherwise added or refreshed like a report.
    pub fn apply_remote(&self, status: pb::WorkerStatus, now: Instant) {
        let existing = self
            .read()
            .values()
            .find(|w| w.status.name == status.name)
            .map(|w| (w.id.clone(), w.remote));
        match existing {
            Some((_, false)) => {}
            Some((id, true)) => {
                self.report(&id, status, now);
            }
            None => {
                self.insert(status, now, true);
            }
        }
    }

    /// The store's registration of `name` expired: no replica heard from it for the
    /// grace period. Workers known only through the store become NotReady here.
    pub fn remote_lease_expired(&self, name: &str) {
        let mut workers = self.write();
        for w in workers
            .values_mut()
            .filter(|w| w.remote && w.status.name == name && w.state != WorkerState::Draining)
        {
            tracing::warn!(worker = name, "worker lease expired in the store; NotReady");
            w.state = WorkerState::NotReady;
            w.reason = "lease expired: no scheduler replica hears from it".into();
        }
    }

    /// Records a status report (renewing the lease). False when the id is unknown.
    pub fn report(&self, id: &str, status: pb::WorkerStatus, now: Instant) -> bool {
        let new_handle = {
            let workers = self.read();
            match workers.get(id) {
                None => return false,
                Some(w)
                    if w.status.inference_address != status.inference_address
                        || w.status.name != status.name =>
                {
                    Some(self.handle_for(id, &status, &w.dispatched))
                }
                Some(_) => None,
            }
        };
        let mut workers = self.write();
        let Some(w) = workers.get_mut(id) else {
            return false;
        };
        if let Some(handle) = new_handle {
            w.handle = handle;
        }
        w.last_report = now;
        let (state, reason) = if status.draining || w.state == WorkerState::Draining {
            (WorkerState::Draining, "worker is draining".to_string())
        } else if w.handle.is_none() {
            (
                WorkerState::NotReady,
                format!("invalid inference address '{}'", status.inference_address),
            )
        } else {
            (WorkerState::Ready, String::new())
        };
        if state != w.state {
            tracing::info!(worker = %status.name, from = ?w.state, to = ?state, "worker state changed");
        }
        w.state = state;
        w.reason = reason;
        if power_of(&status) != power_of(&w.status) {
            w.previous_power = power_of(&w.status);
            w.power_changed_at = now;
        }
        w.status = status;
        true
    }

    /// Whether a report changes what other replicas route by (power source, models,
    /// labels, address, draining): such changes are written to the store at once.
    pub fn power_or_models_changed(&self, id: &str, status: &pb::WorkerStatus) -> bool {
        let workers = self.read();
        let Some(w) = workers.get(id) else {
            return true;
        };
        let models = |s: &pb::WorkerStatus| -> Vec<(String, String)> {
            s.models
                .iter()
                .map(|m| (m.name.clone(), m.version.clone()))
                .collect()
        };
        power_of(&w.status) != power_of(status)
            || models(&w.status) != models(status)
            || w.status.labels != status.labels
            || w.status.inference_address != status.inference_address
            || w.status.draining != status.draining
    }

    /// The worker left: it gets no new work.
    pub fn leave(&self, id: &str) -> bool {
        let mut workers = self.write();
        let Some(w) = workers.get_mut(id) else {
            return false;
        };
        tracing::info!(worker = %w.status.name, "worker leaving (draining)");
        w.state = WorkerState::Draining;
        w.reason = "worker left the cluster".into();
        true
    }

    /// A dispatch to the worker failed at the transport level: stop routing to it until
    /// its next status report shows it alive.
    pub fn mark_unreachable(&self, id: &str, reason: &str) {
        let mut workers = self.write();
        if let Some(w) = workers.get_mut(id) {
            if w.state == WorkerState::Ready {
                tracing::warn!(worker = %w.status.name, reason, "worker unreachable; NotReady until it reports again");
                w.state = WorkerState::NotReady;
                w.reason = format!("dispatch failed: {reason}");
            }
        }
    }

    /// Marks workers whose lease expired NotReady, and forgets long-silent ones.
    pub fn check_leases(&self, now: Instant, grace: Duration, forget_after: Duration) {
        let mut workers = self.write();
        workers.retain(|_, w| {
            let silent = now.saturating_duration_since(w.last_report);
            let forget =
                silent > forget_after || (w.state == WorkerState::Draining && silent > grace);
            if forget {
                tracing::info!(worker = %w.status.name, "worker removed");
            }
            !forget
        });
        for w in workers.values_mut() {
            let silent = now.saturating_duration_since(w.last_report);
            // Workers known through the store live as long as their store lease.
            if w.state == WorkerState::Ready && silent > grace && !w.remote {
                tracing::warn!(worker = %w.status.name, silent_ms = silent.as_millis() as u64, "worker missed its reports; NotReady");
                w.state = WorkerState::NotReady;
                w.reason = format!("no status report for {:.1}s", silent.as_secs_f64());
            }
        }
    }

    /// Ready workers that can serve `model` at `version` (empty: the newest version any
    /// Ready worker has). On the hot path this allocates only the candidate list.
    pub fn lookup(&self, model: &str, version: &str) -> Lookup {
        let workers = self.read();
        let ready = |w: &&WorkerEntry| w.state == WorkerState::Ready && w.handle.is_some();
        let newest;
        let wanted: &str = if version.is_empty() {
            newest = workers
                .values()
                .filter(ready)
                .flat_map(|w| w.status.models.iter())
                .filter(|m| m.name == model)
                .max_by_key(|m| (m.version.parse::<u64>().unwrap_or(0), &m.version))
                .map(|m| m.version.clone());
            newest.as_deref().unwrap_or_default()
        } else {
            version
        };
        if !wanted.is_empty() {
            let found: Vec<Arc<Candidate>> = workers
                .values()
                .filter(ready)
                .filter(|w| {
                    w.status
                        .models
                        .iter()
                        .any(|m| m.name == model && m.version == wanted)
                })
                .filter_map(|w| w.handle.clone())
                .collect();
            if !found.is_empty() {
                return Lookup::Found(found);
            }
        }
        // Nothing to route to: say why.
        let versions: BTreeSet<(u64, String)> = workers
            .values()
            .flat_map(|w| w.status.models.iter())
            .filter(|m| m.name == model)
            .map(|m| version_key(&m.version))
            .collect();
        if versions.is_empty() {
            return Lookup::UnknownModel;
        }
        if !version.is_empty() && !versions.iter().any(|(_, v)| v == version) {
            return Lookup::UnknownVersion {
                available: versions.into_iter().map(|(_, v)| v).collect(),
            };
        }
        let details = workers
            .values()
            .filter(|w| {
                w.status
                    .models
                    .iter()
                    .any(|m| m.name == model && (version.is_empty() || m.version == version))
            })
            .map(|w| format!("{} ({:?}: {})", w.status.name, w.state, w.reason))
            .collect();
        Lookup::NoReadyWorker { details }
    }

    fn cordon_names(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.cordons.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn is_cordoned(&self, name: &str) -> bool {
        self.cordon_names().contains(name)
    }

    /// Whether a worker named `name` is registered (in any state).
    pub fn knows(&self, name: &str) -> bool {
        self.read().values().any(|w| w.status.name == name)
    }

    /// Makes `names` the cordoned workers (after listing the store).
    pub fn replace_cordons(&self, names: std::collections::HashSet<String>) {
        let mut workers = self.write();
        for w in workers.values_mut() {
            w.cordoned = names.contains(&w.status.name);
        }
        *self.cordon_names() = names;
    }

    /// Cordons or uncordons the worker named `name`; false if it is not registered (the
    /// cordon is kept for when it joins).
    pub fn set_cordon(&self, name: &str, cordoned: bool) -> bool {
        if cordoned {
            self.cordon_names().insert(name.to_string());
        } else {
            self.cordon_names().remove(name);
        }
        let mut workers = self.write();
        let mut found = false;
        for w in workers.values_mut().filter(|w| w.status.name == name) {
            tracing::info!(worker = name, cordoned, "cordon changed");
            w.cordoned = cordoned;
            found = true;
        }
        found
    }

    /// Milliseconds since the registry started (the snapshot clock).
    pub fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }

    /// The snapshot a scheduling cycle for `model` runs on: every worker that has the
    /// version loaded, schedulable or not (so a rejection can say why), with the handles
    /// to dispatch to by snapshot index. The version is resolved as in [`Self::lookup`];
    /// `Err` says why there is nothing to decide on.
    pub fn snapshot(
        &self,
        model: &str,
        version: &str,
    ) -> Result<(String, Snapshot, Vec<Arc<Candidate>>), Lookup> {
        let workers = self.read();
        let ready = |w: &&WorkerEntry| w.state == WorkerState::Ready && w.handle.is_some();
        let newest_among = |only_ready: bool| {
            workers
                .values()
                .filter(|w| !only_ready || ready(w))
                .flat_map(|w| w.status.models.iter())
                .filter(|m| m.name == model)
                .max_by_key(|m| (m.version.parse::<u64>().unwrap_or(0), &m.version))
                .map(|m| m.version.clone())
        };
        let resolved = if version.is_empty() {
            newest_among(true).or_else(|| newest_among(false))
        } else {
            Some(version.to_string())
        };
        let resolved = match resolved {
            Some(v)
                if workers.values().any(|w| {
                    w.status
                        .models
                        .iter()
                        .any(|m| m.name == model && m.version == v)
                }) =>
            {
                v
            }
            _ => {
                drop(workers);
                return Err(self.lookup(model, version));
            }
        };
        let now_ms = self.now_ms();
        let mut infos = Vec::new();
        let mut handles = Vec::new();
        for w in workers.values() {
            let Some(handle) = &w.handle else { continue };
            if !w
                .status
                .models
                .iter()
                .any(|m| m.name == model && m.version == resolved)
            {
                continue;
            }
            let (schedulable, reason) = match (w.state, w.cordoned) {
                (WorkerState::Ready, false) => (true, String::new()),
                (WorkerState::Ready, true) => (false, "cordoned".to_string()),
                (state, _) => (false, format!("{state:?}: {}", w.reason)),
            };
            let power = w.status.power.clone().unwrap_or_default();
            infos.push(WorkerInfo {
                index: infos.len(),
                name: w.status.name.clone(),
                schedulable,
                unschedulable_reason: reason,
                labels: w
                    .status
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                ram_total_bytes: w.status.ram_total_bytes,
                ram_free_bytes: w.status.ram_free_bytes,
                gpu_free_bytes: w.status.gpus.iter().map(|g| g.memory_free_bytes).sum(),
                power: power_of(&w.status),
                previous_power: w.previous_power,
                power_changed_ms: w
                    .power_changed_at
                    .saturating_duration_since(self.epoch)
                    .as_millis() as u64,
                battery_percent: power.battery_percent,
                models: w
                    .status
                    .models
                    .iter()
                    .filter(|m| m.name == model && m.version == resolved)
                    .map(|m| ModelOnWorker {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        on_gpu: m.execution_provider != "CPUExecutionProvider",
                        memory_bytes: m.memory_bytes,
                        queue_depth: m.queue_depth,
                        in_flight: m.in_flight,
                        instances: m.instances,
                        reported_latency_ms: m.latency_ewma_ms,
                    })
                    .collect(),
                dispatched: w.dispatched.load(Ordering::Relaxed),
                peak_ewma_ms: handle.peak_ewma_ms(model, &resolved, now_ms),
            });
            handles.push(Arc::clone(handle));
        }
        Ok((
            resolved,
            Snapshot {
                workers: infos,
                now_ms,
            },
            handles,
        ))
    }

    /// The newest report of a model version (any worker), with every version known.
    pub fn model(&self, model: &str, version: &str) -> Option<(pb::LoadedModel, Vec<String>)> {
        let workers = self.read();
        let mut all: Vec<&pb::LoadedModel> = workers
            .values()
            .flat_map(|w| w.status.models.iter())
            .filter(|m| m.name == model)
            .collect();
        all.sort_by_key(|m| version_key(&m.version));
        let versions: BTreeSet<(u64, String)> =
            all.iter().map(|m| version_key(&m.version)).collect();
        let chosen = if version.is_empty() {
            all.last()
        } else {
            all.iter().find(|m| m.version == version)
        }?;
        Some((
            (*chosen).clone(),
            versions.into_iter().map(|(_, v)| v).collect(),
        ))
    }

    /// Whether a Ready worker has the model version.
    pub fn model_ready(&self, model: &str, version: &str) -> bool {
        matches!(self.lookup(model, version), Lookup::Found(_))
    }

    pub fn any_ready(&self) -> bool {
        self.read().values().any(|w| w.state == WorkerState::Ready)
    }

    /// Every worker with its state, for operators.
    pub fn list(&self, now: Instant) -> Vec<pb::WorkerInfo> {
        let workers = self.read();
        let mut out: Vec<pb::WorkerInfo> = workers
            .values()
            .map(|w| pb::WorkerInfo {
                id: w.id.clone(),
                state: w.state.to_proto() as i32,
                state_reason: w.reason.clone(),
                status: Some(w.status.clone()),
                dispatched_in_flight: w.dispatched.load(Ordering::Relaxed),
                last_report_age_ms: now.saturating_duration_since(w.last_report).as_millis() as u64,
                cordoned: w.cordoned,
                conditions: conditions(&w.status),
            })
            .collect();
        out.sort_by(|a, b| {
            let name = |w: &pb::WorkerInfo| {
                w.status
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default()
            };
            name(a).cmp(&name(b))
        });
        out
    }

    /// Every model version with the Ready workers serving it.
    pub fn models(&self) -> Vec<pb::ModelInfo> {
        let workers = self.read();
        let mut by_key: std::collections::BTreeMap<(String, (u64, String)), pb::ModelInfo> =
            Default::default();
        for w in workers.values() {
            for m in &w.status.models {
                let info = by_key
                    .entry((m.name.clone(), version_key(&m.version)))
                    .or_insert_with(|| pb::ModelInfo {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        ready_workers: Vec::new(),
                        signature: m.signature.clone(),
                        max_batch_size: m.max_batch_size,
                        ..Default::default()
                    });
                if w.state == WorkerState::Ready {
                    info.ready_workers.push(w.status.name.clone());
                }
            }
        }
        let mut out: Vec<pb::ModelInfo> = by_key.into_values().collect();
        for m in &mut out {
            m.ready_workers.sort();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(name: &str, models: &[(&str, &str)]) -> pb::WorkerStatus {
        pb::WorkerStatus {
            name: name.into(),
            inference_address: "127.0.0.1:1".into(),
            models: models
                .iter()
                .map(|(m, v)| pb::LoadedModel {
                    name: m.to_string(),
                    version: v.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn names(lookup: Lookup) -> Vec<String> {
        match lookup {
            Lookup::Found(c) => {
                let mut n: Vec<String> = c.iter().map(|c| c.name.clone()).collect();
                n.sort();
                n
            }
            _ => Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn store_registrations_never_replace_a_worker_that_reports_here() {
        let reg = Registry::new(1 << 20);
        let t0 = Instant::now();
        let direct = reg.join(status("a", &[("m", "1")]), t0);
        reg.mark_unreachable(&direct, "connection refused");
        // A late registration from the store (its own earlier write) changes nothing:
        // the entry stays the direct one, still NotReady.
        reg.apply_remote(status("a", &[("m", "1")]), t0);
        assert_eq!(reg.insert(status("a", &[]), t0, true), direct);
        let listed = reg.list(t0);
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, direct);
        assert_eq!(listed[0].state, pb::WorkerState::NotReady as i32);
        // A worker known only through the store is added, then refreshed.
        reg.apply_remote(status("b", &[("m", "1")]), t0);
        assert_eq!(names(reg.lookup("m", "1")), vec!["b"]);
        reg.remote_lease_expired("b");
        assert!(names(reg.lookup("m", "1")).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_and_recovery() {
        let reg = Registry::new(1 << 20);
        let t0 = Instant::now();
        let a = reg.join(status("a", &[("m", "1")]), t0);
        let b = reg.join(status("b", &[("m", "1")]), t0);
        assert_eq!(names(reg.lookup("m", "")), vec!["a", "b"]);
        let grace = Duration::from_secs(2);
        let forget = Duration::from_secs(60);
        // b keeps reporting, a goes silent.
        reg.report(&b, status("b", &[("m", "1")]), t0 + Duration::from_secs(2));
        reg.check_leases(t0 + Duration::from_secs(3), grace, forget);
        assert_eq!(names(reg.lookup("m", "1")), vec!["b"]);
        let listed = reg.list(t0 + Duration::from_secs(3));
        let a_info = listed.iter().find(|w| w.id == a).expect("a listed");
        assert_eq!(a_info.state, pb::WorkerState::NotReady as i32);
        assert!(
            a_info.state_reason.contains("no status report"),
            "{}",
            a_info.state_reason
        );
        // a comes back.
        assert!(reg.report(&a, status("a", &[("m", "1")]), t0 + Duration::from_secs(4)));
        assert_eq!(names(reg.lookup("m", "1")), vec!["a", "b"]);
        // silent past forget_after: removed, and its id is unknown.
        reg.check_leases(t0 + Duration::from_secs(100), grace, forget);
        assert!(reg.list(t0).is_empty());
        assert!(!reg.report(&a, status("a", &[]), t0 + Duration::from_secs(101)));
    }

    #[tokio::test(start_paused = true)]
    async fn lookups_distinguish_unknown_model_version_and_no_ready_worker() {
        let reg = Registry::new(1 << 20);
        let t0 = Instant::now();
        let a = reg.join(status("a", &[("m", "1"), ("m", "2")]), t0);
        reg.join(status("b", &[("m", "1")]), t0);
        assert!(matches!(reg.lookup("x", ""), Lookup::UnknownModel));
        match reg.lookup("m", "3") {
            Lookup::UnknownVersion { available } => assert_eq!(available, vec!["1", "2"]),
            _ => panic!("expected UnknownVersion"),
        }
        // Empty version routes to the newest version.
        assert_eq!(names(reg.lookup("m", "")), vec!["a"]);
        assert_eq!(names(reg.lookup("m", "1")), vec!["a", "b"]);
        reg.leave(&a);
        match reg.lookup("m", "2") {
            Lookup::NoReadyWorker { details } => {
                assert!(details[0].contains("Draining"), "{details:?}")
            }
            _ => panic!("expected NoReadyWorker"),
        }
        // With a draining, the newest Ready version is 1.
        assert_eq!(names(reg.lookup("m", "")), vec!["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn rejoin_under_same_name_replaces_and_unreachable_is_not_ready() {
        let reg = Registry::new(1 << 20);
        let t0 = Instant::now();
        let old = reg.join(status("a", &[("m", "1")]), t0);
        let new = reg.join(status("a", &[("m", "1")]), t0);
        assert_ne!(old, new);
        assert_eq!(reg.list(t0).len(), 1);
        assert!(!reg.report(&old, status("a", &[]), t0));
        reg.mark_unreachable(&new, "connection refused");
        assert!(matches!(reg.lookup("m", ""), Lookup::NoReadyWorker { .. }));
        reg.report(&new, status("a", &[("m", "1")]), t0);
        assert_eq!(names(reg.lookup("m", "")), vec!["a"]);
    }

    #[test]
    fn conditions_table() {
        let with = |free: u64, total: u64, source: pb::PowerSource| pb::WorkerStatus {
            ram_free_bytes: free,
            ram_total_bytes: total,
            power: Some(pb::PowerStatus {
                source: source as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let cases = [
            (with(50, 100, pb::PowerSource::Mains), vec![]),
            (with(4, 100, pb::PowerSource::Mains), vec!["MemoryPressure"]),
            (with(50, 100, pb::PowerSource::Battery), vec!["OnBattery"]),
            (
                with(1, 100, pb::PowerSource::Ups),
                vec!["MemoryPressure", "OnUPS"],
            ),
            (with(0, 0, pb::PowerSource::Unknown), vec![]),
        ];
        for (status, expected) in cases {
            assert_eq!(conditions(&status), expected);
        }
    }
}
