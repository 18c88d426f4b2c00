//! The worker's shared state: its loaded models and what it reports about itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use localml_proto::localml::v1 as pb;
use tonic::Status;

use crate::config::WorkerConfig;
use crate::hardware::{self, GpuInfo};
use crate::model::{LoadedModel, TensorSpec};
use crate::power::{self, PowerSource};

/// Models by name, then version.
pub type ModelTable = BTreeMap<String, BTreeMap<u64, Arc<LoadedModel>>>;

pub struct Worker {
    pub config: WorkerConfig,
    pub models: ModelTable,
    /// Execution providers compiled into the loaded ONNX Runtime library.
    pub providers: Vec<String>,
    /// Address the scheduler reaches this worker's inference service on.
    pub advertise: String,
    pub draining: AtomicBool,
    sequence: AtomicU64,
    gpus: Mutex<Vec<GpuInfo>>,
}

impl Worker {
    pub fn new(
        config: WorkerConfig,
        models: ModelTable,
        providers: Vec<String>,
        advertise: String,
    ) -> Worker {
        Worker {
            config,
            models,
            providers,
            advertise,
            draining: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            gpus: Mutex::new(Vec::new()),
        }
    }

    /// Finds a model version; an empty version means the highest loaded one.
    pub fn find(&self, name: &str, version: &str) -> Result<&Arc<LoadedModel>, Status> {
        let versions = self.models.get(name).ok_or_else(|| {
            Status::not_found(format!(
                "model '{name}' is not loaded on worker '{}'",
                self.config.name
            ))
        })?;
        if version.is_empty() {
            return versions
                .values()
                .next_back()
                .ok_or_else(|| Status::not_found(format!("model '{name}' has no loaded version")));
        }
        version
            .parse::<u64>()
            .ok()
            .and_then(|v| versions.get(&v))
            .ok_or_else(|| {
                let have: Vec<String> = versions.keys().map(u64::to_string).collect();
                Status::not_found(format!(
                    "model '{name}' has no version '{version}' (loaded versions: {})",
                    have.join(", ")
                ))
            })
    }

    /// Refreshes the GPU reading (nvidia-smi is slow, so not on every report).
    pub fn refresh_gpus(&self) {
        let gpus = hardware::gpus();
        if let Ok(mut g) = self.gpus.lock() {
            *g = gpus;
        }
    }

    /// The status report sent to the scheduler.
    pub fn status(&self) -> pb::WorkerStatus {
        let (ram_total, ram_free) = hardware::memory();
        let reading = power::current(&self.config.power_supply_root, self.config.power.as_ref());
        let gpus = self.gpus.lock().map(|g| g.clone()).unwrap_or_default();
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
            power: Some(pb::PowerStatus {
                source: match reading.source {
                    PowerSource::Mains => pb::PowerSource::Mains,
                    PowerSource::Battery => pb::PowerSource::Battery,
                    PowerSource::Ups => pb::PowerSource::Ups,
                    PowerSource::Unknown => pb::PowerSource::Unknown,
                } as i32,
                battery_percent: reading.battery_percent,
                origin: reading.origin.to_string(),
            }),
            models: self
                .models
                .values()
                .flat_map(|v| v.values())
                .map(|m| model_report(m))
                .collect(),
            draining: self.draining.load(Ordering::SeqCst),
            sequence: self.sequence.fetch_add(1, Ordering::SeqCst),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
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

fn model_report(m: &LoadedModel) -> pb::LoadedModel {
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
    }
}
