//! The worker's shared state: its loaded models and what it reports about itself.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use localml_proto::localml::v1 as pb;

use crate::config::LoadMode;
use crate::config::WorkerConfig;
use crate::hardware::{self, GpuInfo};
use crate::model::{LoadOptions, LoadedModel, TensorSpec};
use crate::power::{self, PowerSource};
use crate::repository::{self, ModelSource};

/// Why a model version cannot be found on this worker (NOT_FOUND for a client).
#[derive(Debug, thiserror::Error)]
pub enum FindError {
    /// No version of the model is loaded here.
    #[error("model '{model}' is not loaded on worker '{worker}'")]
    NotLoaded { model: String, worker: String },
    /// The model has an entry but no version in it (kept for safety: unloading the last
    /// version removes the entry under the same lock).
    #[error("model '{0}' has no loaded version")]
    NoVersion(String),
    /// The version asked for is not loaded (or is not a number).
    #[error("model '{model}' has no version '{version}' (loaded versions: {})", .loaded.join(", "))]
    UnknownVersion {
        model: String,
        version: String,
        loaded: Vec<String>,
    },
}

/// Models by name, then version.
pub type ModelTable = BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>>;

/// What loading a model later needs (on-demand workers).
pub struct Loader {
    pub env: ort::environment::Environment,
    pub options: LoadOptions,
}

pub struct Worker {
    pub config: WorkerConfig,
    models: RwLock<ModelTable>,
    /// The repository's model versions, loaded or not.
    available: RwLock<Vec<ModelSource>>,
    loader: Option<Loader>,
    /// Model versions being loaded now.
    loading: Mutex<HashSet<(String, u64)>>,
    /// Execution providers compiled into the loaded ONNX Runtime library.
    pub providers: Vec<String>,
    /// Address the scheduler reaches this worker's inference service on.
    pub advertise: String,
    pub draining: AtomicBool,
    /// Requests by code and latency, for `/metrics`.
    pub requests: crate::observe::RequestMetrics,
    sequence: AtomicU64,
    gpus: Mutex<Vec<GpuInfo>>,
    /// The UPS's last reading, when the worker has one (`--ups`); refreshed by the UPS
    /// poller, read by status reports.
    ups: Mutex<Option<crate::ups::UpsPower>>,
    /// Power draw and joules per inference, from energy windows.
    pub energy: crate::energy::EnergyMeter,
    /// Models from the scheduler's catalog, cached under the data directory.
    pub cache: crate::catalog::ModelCache,
    /// Catalog fetches under way (None) or failed, and when, by (name, version asked).
    fetches: Mutex<HashMap<(String, String), Option<std::time::Instant>>>,
}

/// A failed catalog fetch is tried again after this long.
const FETCH_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

impl Worker {
    pub fn new(
        config: WorkerConfig,
        models: ModelTable,
        providers: Vec<String>,
        advertise: String,
    ) -> Worker {
        Worker {
            models: RwLock::new(models),
            available: RwLock::new(Vec::new()),
            loader: None,
            loading: Mutex::new(HashSet::new()),
            providers,
            advertise,
            draining: AtomicBool::new(false),
            requests: Default::default(),
            sequence: AtomicU64::new(0),
            gpus: Mutex::new(Vec::new()),
            energy: crate::energy::EnergyMeter::new(
                config.powercap_root.clone(),
                config.power_watts,
                hardware::cpu_cores(),
            ),
            ups: Mutex::new(None),
            cache: crate::catalog::ModelCache::new(config.data_dir.join("catalog"))
                .with_rate(config.fetch_rate),
            fetches: Mutex::default(),
            config,
        }
    }

    /// Closes an energy window: reads the counters and attributes the energy to models.
    pub fn sample_energy(&self) {
        let counters: Vec<crate::energy::ModelCounters> = self
            .loaded()
            .iter()
            .map(|m| crate::energy::ModelCounters {
                name: m.name.clone(),
                version: m.version,
                busy_ns: m
                    .stats
                    .success_ns
                    .load(Ordering::Relaxed)
                    .saturating_add(m.stats.failure_ns.load(Ordering::Relaxed)),
                inferences: m.stats.inference_count.load(Ordering::Relaxed),
                on_gpu: m.execution_provider != "CPUExecutionProvider",
            })
            .collect();
        let gpu = self.gpu_energy();
        let gpu_joules = (!gpu.is_empty()).then(|| gpu.iter().map(|(_, j)| j).sum());
        self.energy.sample(&counters, gpu_joules);
    }

    /// Records the UPS's latest reading.
    pub fn set_ups(&self, reading: crate::ups::UpsPower) {
        *self.ups.lock().unwrap_or_else(|e| e.into_inner()) = Some(reading);
    }

    /// The UPS's latest reading, if the worker has a UPS and it was read.
    pub fn ups(&self) -> Option<crate::ups::UpsPower> {
        self.ups.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Lets the worker load models later (`--load on-demand`): remembers the repository
    /// scan and what loading needs.
    pub fn with_loader(mut self, loader: Loader, available: Vec<ModelSource>) -> Worker {
        self.loader = Some(loader);
        self.available = RwLock::new(available);
        self
    }

    fn table(&self) -> std::sync::RwLockReadGuard<'_, ModelTable> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every loaded model version.
    pub fn loaded(&self) -> Vec<Arc<LoadedModel>> {
        self.table()
            .values()
            .flat_map(|v| v.values().cloned())
            .collect()
    }

    /// Loaded versions of `name`, oldest first.
    pub fn versions(&self, name: &str) -> Vec<String> {
        self.table()
            .get(name)
            .map(|v| v.keys().map(u64::to_string).collect())
            .unwrap_or_default()
    }

    /// Finds a model version; an empty version means the highest loaded one.
    pub fn find(&self, name: &str, version: &str) -> Result<Arc<LoadedModel>, FindError> {
        let table = self.table();
        let versions = table.get(name).ok_or_else(|| FindError::NotLoaded {
            model: name.to_string(),
            worker: self.config.name.clone(),
        })?;
        if version.is_empty() {
            return versions
                .values()
                .next_back()
                .cloned()
                .ok_or_else(|| FindError::NoVersion(name.to_string()));
        }
        version
            .parse::<u64>()
            .ok()
            .and_then(|v| versions.get(&v))
            .cloned()
            .ok_or_else(|| FindError::UnknownVersion {
                model: name.to_string(),
                version: version.to_string(),
                loaded: versions.keys().map(u64::to_string).collect(),
            })
    }

    /// Applies the scheduler's assignments (on-demand workers only): loads what is
    /// assigned and not loaded, in the background; unloads what is not assigned any
    /// more (requests running on it finish first: they hold the model). Returns the
    /// assigned models it has no source for (the agent fetches them from the catalog).
    pub fn apply_assignments(
        self: &Arc<Self>,
        load: &[pb::ModelRef],
        unload: &[pb::ModelRef],
    ) -> Vec<pb::ModelRef> {
        let mut missing = Vec::new();
        if self.config.load != LoadMode::OnDemand || self.loader.is_none() {
            return missing;
        }
        for m in unload {
            let mut table = self.models.write().unwrap_or_else(|e| e.into_inner());
            if let Some(versions) = table.get_mut(&m.name) {
                let version = m.version.parse::<u64>().ok();
                let removed: Vec<u64> = versions
                    .keys()
                    .copied()
                    .filter(|v| version.is_none_or(|want| want == *v))
                    .collect();
                for v in removed {
                    versions.remove(&v);
                    tracing::info!(model = %m.name, version = v, "model unloaded (unassigned)");
                    // A catalog model is checked again (sha256) before it loads again; its
                    // files may be evicted meanwhile.
                    self.available
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .retain(|s| {
                            let fetched =
                                s.name == m.name && s.version == v && self.cache.holds(&s.path);
                            if fetched {
                                self.cache.unlink(&s.path);
                            }
                            !fetched
                        });
                }
                if versions.is_empty() {
                    table.remove(&m.name);
                }
            }
        }
        for m in load {
            let source = {
                let available = self.available.read().unwrap_or_else(|e| e.into_inner());
                let wanted = m.version.parse::<u64>().ok();
                available
                    .iter()
                    .filter(|s| s.name == m.name && wanted.is_none_or(|v| v == s.version))
                    .max_by_key(|s| s.version)
                    .cloned()
            };
            let Some(source) = source else {
                missing.push(m.clone());
                continue;
            };
            let key = (source.name.clone(), source.version);
            let loaded = self
                .table()
                .get(&source.name)
                .is_some_and(|v| v.contains_key(&source.version));
            if loaded
                || !self
                    .loading
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key.clone())
            {
                continue;
            }
            let worker = Arc::clone(self);
            tokio::task::spawn_blocking(move || {
                let Some(loader) = &worker.loader else { return };
                match LoadedModel::load(&loader.env, &source, &worker.providers, &loader.options) {
                    Ok(model) => {
                        tracing::info!(model = %model.name, version = model.version, "model loaded (assigned)");
                        worker
                            .models
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .entry(model.name.clone())
                            .or_default()
                            .insert(model.version, Arc::new(model));
                    }
                    Err(e) => tracing::error!(error = %e, "assigned model not loaded"),
                }
                worker
                    .loading
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
            });
        }
        missing
    }

    /// Whether a catalog fetch of `m` should start now (none under way, none failed
    /// within the last 10 s); if so it counts as under way until [`Worker::end_fetch`].
    pub fn begin_fetch(&self, m: &pb::ModelRef) -> bool {
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        let key = (m.name.clone(), m.version.clone());
        match fetches.get(&key) {
            Some(None) => false,
            Some(Some(failed)) if failed.elapsed() < FETCH_RETRY => false,
            _ => {
                fetches.insert(key, None);
                true
            }
        }
    }

    pub fn end_fetch(&self, m: &pb::ModelRef, ok: bool) {
        let mut fetches = self.fetches.lock().unwrap_or_else(|e| e.into_inner());
        let key = (m.name.clone(), m.version.clone());
        if ok {
            fetches.remove(&key);
        } else {
            fetches.insert(key, Some(std::time::Instant::now()));
        }
    }

    /// Adds a model version fetched from the catalog to what the worker can load.
    pub fn add_available(&self, source: ModelSource) {
        let mut available = self.available.write().unwrap_or_else(|e| e.into_inner());
        available.retain(|s| !(s.name == source.name && s.version == source.version));
        available.push(source);
    }

    /// Scans the repository again (new models copied in).
    pub fn rescan(&self) {
        if let Ok(sources) = repository::scan(&self.config.models) {
            *self.available.write().unwrap_or_else(|e| e.into_inner()) = sources;
        }
    }

    /// Energy per GPU in joules since the driver loaded, where NVML reports it.
    pub fn gpu_energy(&self) -> Vec<(u32, f64)> {
        if self.gpus.lock().map(|g| g.is_empty()).unwrap_or(true) {
            return Vec::new();
        }
        hardware::gpu_energy_joules()
    }

    /// Refreshes the GPU reading (every few reports, see `agent::GPU_REFRESH_EVERY`).
    pub fn refresh_gpus(&self) {
        let gpus = hardware::gpus();
        if let Ok(mut g) = self.gpus.lock() {
            *g = gpus;
        }
    }

    /// The status report sent to the scheduler.
    pub fn status(&self) -> pb::WorkerStatus {
        let (mut ram_total, mut ram_free) = hardware::memory();
        if let Some(limit) = self.config.memory_limit {
            let used: u64 = self.loaded().iter().map(|m| m.memory_bytes).sum();
            ram_total = ram_total.min(limit);
            ram_free = ram_free.min(limit.saturating_sub(used));
        }
        let reading = power::current(&self.config.power_supply_root, self.config.power.as_ref());
        let ups = self.ups();
        let gpus = self.gpus.lock().map(|g| g.clone()).unwrap_or_default();
        let (power_watts, energy_estimated) = self.energy.power();
        pb::WorkerStatus {
            name: self.config.name.clone(),
            inference_address: self.advertise.clone(),
            labels: self.config.labels.clone().into_iter().collect(),
            cpu_cores: hardware::cpu_cores(),
            ram_total_bytes: ram_total,
            ram_free_bytes: ram_free,
            gpus: gpus
                .into_iter()
                .map(|g| pb::Gpu {
                    index: g.index,
                    name: g.name,
                    memory_total_bytes: g.memory_total_bytes,
                    memory_free_bytes: g.memory_free_bytes,
                })
                .collect(),
            execution_providers: self.providers.clone(),
            power: Some(match (&self.config.ups, ups) {
                (Some(target), Some(ups)) => pb::PowerStatus {
                    source: proto_source(ups.source),
                    battery_percent: ups.battery_percent,
                    origin: "ups".into(),
                    ups: target.clone(),
                    ups_status: ups.status,
                    battery_runtime_seconds: ups.runtime_seconds,
                    low_battery: ups.low_battery,
                    reason: ups.reason,
                    power_watts,
                    energy_estimated,
                },
                _ => pb::PowerStatus {
                    source: proto_source(reading.source),
                    battery_percent: reading.battery_percent,
                    battery_runtime_seconds: reading.runtime_seconds,
                    origin: reading.origin.to_string(),
                    power_watts,
                    energy_estimated,
                    ..Default::default()
                },
            }),
            models: self
                .loaded()
                .iter()
                .map(|m| model_report(m, self.energy.model(&m.name, m.version)))
                .collect(),
            available: self
                .available
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|s| pb::AvailableModel {
                    name: s.name.clone(),
                    version: s.version.to_string(),
                    file_bytes: std::fs::metadata(&s.path).map(|m| m.len()).unwrap_or(0),
                    measured_bytes: 0,
                    variants: Vec::new(),
                })
                .collect(),
            on_demand: self.config.load == LoadMode::OnDemand,
            catalog: self.config.load == LoadMode::OnDemand,
            draining: self.draining.load(Ordering::SeqCst),
            sequence: self.sequence.fetch_add(1, Ordering::SeqCst),
            version: crate::VERSION.to_string(),
        }
    }
}

fn proto_source(source: PowerSource) -> i32 {
    (match source {
        PowerSource::Mains => pb::PowerSource::Mains,
        PowerSource::Battery => pb::PowerSource::Battery,
        PowerSource::Ups => pb::PowerSource::Ups,
        PowerSource::Unknown => pb::PowerSource::Unknown,
    }) as i32
}

fn specs(specs: &[TensorSpec]) -> Vec<pb::TensorSpec> {
    specs
        .iter()
        .map(|s| pb::TensorSpec {
            name: s.name.clone(),
            datatype: s.datatype.as_str().to_string(),
            shape: s.shape.clone(),
        })
        .collect()
}

/// The signature of a model in protocol form.
pub fn signature(m: &LoadedModel) -> pb::ModelSignature {
    pb::ModelSignature {
        inputs: specs(&m.inputs),
        outputs: specs(&m.outputs),
    }
}

fn model_report(m: &LoadedModel, energy: crate::energy::ModelEnergy) -> pb::LoadedModel {
    let s = &m.stats;
    pb::LoadedModel {
        name: m.name.clone(),
        version: m.version.to_string(),
        execution_provider: m.execution_provider.clone(),
        memory_bytes: m.memory_bytes,
        queue_depth: s.queue_depth.load(Ordering::Relaxed),
        in_flight: s.in_flight.load(Ordering::Relaxed),
        latency_ewma_ms: s.latency_ewma_ms(),
        inference_count: s.inference_count.load(Ordering::Relaxed),
        signature: Some(signature(m)),
        max_batch_size: m.max_batch_size,
        instances: m.instances,
        failure_count: s.failure_count.load(Ordering::Relaxed),
        joules_per_inference: energy.joules_per_inference,
        energy_joules: energy.joules,
        dynamic_batching: dynamic_batching(m),
        execution_count: s.execution_count.load(Ordering::Relaxed),
        variant: m.variant.clone(),
        task: m.task.clone(),
    }
}

/// The model's dynamic batching, as reported (Triton's names).
pub fn dynamic_batching(m: &LoadedModel) -> Option<pb::DynamicBatching> {
    m.batching.as_ref().map(|b| pb::DynamicBatching {
        max_queue_delay_microseconds: u64::try_from(b.max_queue_delay.as_micros())
            .unwrap_or(u64::MAX),
        preferred_batch_size: b
            .preferred
            .iter()
            .map(|&n| u32::try_from(n).unwrap_or(u32::MAX))
            .collect(),
    })
}
