//! Lookups for routing: which Ready workers serve a model version, the snapshot a
//! scheduling cycle runs on, and why there is nothing to route to.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use localml_framework::{ModelOnWorker, Snapshot, WorkerInfo};
use localml_proto::localml::v1 as pb;

use super::{power_of, version_key, Candidate, WorkerEntry, WorkerState, Workers};

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

impl Workers {
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
            let dispatched = w.dispatched.load(Ordering::Relaxed);
            let done_since = |m: &pb::LoadedModel| {
                w.answered_at_report
                    .as_ref()
                    .map_or(0, |at| handle.answered_since(at, &m.name, &m.version))
            };
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
                gpu_free_bytes: w
                    .status
                    .gpus
                    .iter()
                    .fold(0u64, |sum, g| sum.saturating_add(g.memory_free_bytes)),
                power: power_of(&w.status),
                previous_power: w.previous_power,
                power_changed_ms: w
                    .power_changed_at
                    .saturating_duration_since(self.epoch)
                    .as_millis() as u64,
                battery_percent: power.battery_percent,
                low_battery: power.low_battery,
                battery_runtime_s: power.battery_runtime_seconds,
                models: w
                    .status
                    .models
                    .iter()
                    .filter(|m| m.name == model && m.version == resolved)
                    .map(|m| (m, since_report(m.queue_depth, m.in_flight, done_since(m))))
                    .map(|(m, (queue_depth, in_flight))| ModelOnWorker {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        on_gpu: m.execution_provider != "CPUExecutionProvider",
                        memory_bytes: m.memory_bytes,
                        queue_depth,
                        in_flight,
                        instances: m.instances,
                        batch: if m.dynamic_batching.is_some() {
                            m.max_batch_size.max(1)
                        } else {
                            1
                        },
                        reported_latency_ms: m.latency_ewma_ms,
                        // A worker's figure is only a hint: anything odd counts as unknown.
                        joules_per_inference: if m.joules_per_inference.is_finite()
                            && m.joules_per_inference > 0.0
                        {
                            m.joules_per_inference
                        } else {
                            0.0
                        },
                    })
                    .collect(),
                dispatched,
                peak_ewma_ms: handle.peak_ewma_ms(model, &resolved, now_ms),
            });
            handles.push(Arc::clone(handle));
        }
        Ok((
            resolved,
            Snapshot {
                workers: infos,
                now_ms,
                queued: 0,
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
}

/// A report's queue and in-flight counts less the answers this scheduler received since
/// it for that model version (`done_since`: answers, not calls it dropped, which may
/// still run there): those requests are no longer at the worker. Without it a report a
/// moment old keeps a worker that has just freed a slot full (Capacity takes the larger
/// of the report and the scheduler's own count) until the next report, its sessions idle
/// meanwhile. Taken from the queue first: a queued request starts when one ends.
pub(super) fn since_report(queue_depth: u32, in_flight: u32, done_since: u32) -> (u32, u32) {
    let from_queue = done_since.min(queue_depth);
    (
        queue_depth - from_queue,
        in_flight.saturating_sub(done_since - from_queue),
    )
}
