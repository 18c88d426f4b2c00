//! A model version loaded into ONNX Runtime: its signature, a pool of sessions, the
//! execution provider it really runs on, and its live statistics.
//!
//! - this file: [`LoadedModel`] (load, run through the session pool) and the errors.
//! - [`session`]: building an ONNX Runtime session: providers, threads, signature.
//! - [`tensors`]: decoded tensors to ONNX Runtime values and back.
//! - [`stats`]: live counters and the latency EWMA for status reports.
//! - [`batch`]: dynamic batching (Triton's `dynamic_batching`).

mod batch;
mod session;
mod stats;
mod tensors;

pub use batch::{BatchPolicy, MAX_QUEUE_DELAY};
pub use tensors::{Input, InputData, Output};

pub use session::resident_bytes;
pub use stats::ModelStats;

use session::*;
use stats::*;
use tensors::*;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use localml_proto::tensor::{DataType, TensorData};
use ort::session::Session;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};
use tokio::sync::Semaphore;

use crate::repository::{ModelSource, TensorOverride};
use crate::runtime::CPU_PROVIDER;

/// Default `max_batch_size` for a model whose every tensor has a dynamic first dimension.
pub const DEFAULT_MAX_BATCH_SIZE: u32 = 8;
/// Default number of requests that may wait for a session.
pub const DEFAULT_MAX_QUEUE: u32 = 64;

/// A duration in nanoseconds, for the counters (saturating).
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    /// Full shape, batch dimension included; -1 is dynamic.
    pub shape: Vec<i64>,
}

/// Why a model version could not be loaded or could not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model version could not be loaded (logged; the worker goes on without it).
    #[error("model {model} version {version}: {reason}")]
    Load {
        model: String,
        version: u64,
        #[source]
        reason: LoadError,
    },
    /// The model's queue is full.
    #[error("model {0} has {1} requests queued on this worker; try again later")]
    QueueFull(String, u32),
    /// ONNX Runtime rejected the inputs (e.g. an index out of range). `reason` is ONNX
    /// Runtime's message, prefixed with the input's name where it is known.
    #[error("ONNX Runtime rejected the request for model {model}: {reason}")]
    InvalidInput { model: String, reason: String },
    /// ONNX Runtime failed for another reason.
    #[error("ONNX Runtime failed running model {model}: {reason}")]
    Run {
        model: String,
        #[source]
        reason: RunError,
    },
}

/// Why a model version could not be loaded; [`ModelError::Load`] adds model and version.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// `config.yaml` names a provider localml does not know.
    #[error("unknown execution provider '{0}' in config.yaml (known: {known})", known = PROVIDER_NAMES.join(", "))]
    UnknownProvider(String),
    /// ONNX Runtime could not build a session (unreadable model, bad option, ...).
    #[error(transparent)]
    Session(#[from] ort::Error),
    /// An input or output whose element type has no protocol datatype.
    #[error("{what} '{name}' has element type {ty:?}, which localml cannot serve")]
    UnsupportedType {
        /// "input" or "output".
        what: &'static str,
        name: String,
        ty: TensorElementType,
    },
    /// An input or output that is a sequence or map, not a tensor.
    #[error("{what} '{name}' is a {kind}, not a tensor")]
    NotATensor {
        /// "input" or "output".
        what: &'static str,
        name: String,
        /// ONNX Runtime's description of the value type.
        kind: String,
    },
    /// `config.yaml`'s `task:` does not fit the model's input.
    #[error("{0}")]
    Task(String),
    /// `config.yaml` overrides a tensor the model does not have.
    #[error("config names tensor '{0}', which the model does not have")]
    UnknownTensor(String),
    /// `config.yaml` gives dims that contradict the model's fixed dims.
    #[error("config dims {config:?} for '{name}' do not fit the model's dims {model:?}")]
    Dims {
        name: String,
        config: Vec<i64>,
        model: Vec<i64>,
    },
    /// Batching needs every input and output to start with a dynamic dimension.
    #[error("max_batch_size {0} needs a dynamic first dimension on every input and output")]
    BatchNeedsDynamic(u32),
    /// `dynamic_batching` that cannot work with this model (see the reason).
    #[error("dynamic_batching: {0}")]
    DynamicBatching(String),
}

/// Why ONNX Runtime could not run a request; [`ModelError::Run`] adds the model.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The model was unloaded while the request waited for a session.
    #[error("the model is unloading")]
    Unloading,
    /// The blocking task running the session panicked or was cancelled.
    #[error("inference task failed: {0}")]
    Task(#[source] tokio::task::JoinError),
    /// A thread panicked while holding the session pool.
    #[error("session pool poisoned")]
    Poisoned,
    /// No session was free although the semaphore granted one (a bug).
    #[error("no free session")]
    NoSession,
    /// ONNX Runtime's own failure.
    #[error(transparent)]
    Ort(#[from] ort::Error),
    /// The session did not return an output its signature lists.
    #[error("output '{0}' missing from the result")]
    MissingOutput(String),
    /// An output could not be read back from ONNX Runtime.
    #[error("output '{name}': {source}")]
    Extract { name: String, source: ort::Error },
    /// An output that is a sequence or map, not a tensor.
    #[error("output '{name}' is a {kind}, not a tensor")]
    OutputNotATensor {
        name: String,
        /// ONNX Runtime's description of the value type.
        kind: String,
    },
    /// An output whose element type has no protocol datatype.
    #[error("output '{name}' has element type {ty:?}, which localml cannot serve")]
    UnsupportedOutput { name: String, ty: TensorElementType },
    /// A batch's outputs could not be split back into its requests.
    #[error("batched run: {0}")]
    BatchSplit(String),
    /// The batch this request ran in failed (ONNX Runtime's message).
    #[error("batched run failed: {0}")]
    Batch(String),
}

/// A loaded model version.
pub struct LoadedModel {
    pub name: String,
    pub version: u64,
    /// The catalog variant loaded (fp32, fp16, int8); empty for the own repository's.
    pub variant: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub max_batch_size: u32,
    pub max_queue: u32,
    pub execution_provider: String,
    pub memory_bytes: u64,
    pub instances: u32,
    pub stats: ModelStats,
    /// Dynamic batching, when the model's config asks for it.
    pub batching: Option<BatchPolicy>,
    /// config.yaml's `task:` with its labels, as reported.
    pub task: Option<localml_proto::localml::v1::ModelTask>,
    /// Makes this worker behave like a PC `throttle` times slower (testing aid).
    throttle: f64,
    /// Every run holds its session at least this long (testing aid).
    min_run: std::time::Duration,
    permits: Arc<Semaphore>,
    sessions: Mutex<Vec<Session>>,
    /// The queue of the task forming batches, started with the first batched request.
    batcher: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<batch::Pending>>,
}

/// A tensor ready to run: name, shape, data.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

/// Load-time settings that come from the worker rather than the model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub throttle: f64,
    /// Testing aid: every run holds its session at least this long, asleep (a steady
    /// service time, whatever else the PC runs).
    pub min_run: std::time::Duration,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            throttle: 1.0,
            min_run: std::time::Duration::ZERO,
        }
    }
}

impl LoadedModel {
    /// Loads a model version: `instances` sessions on the first provider that works.
    pub fn load(
        env: &ort::environment::Environment,
        source: &ModelSource,
        available: &[String],
        options: &LoadOptions,
    ) -> Result<LoadedModel, ModelError> {
        let fail = |reason: LoadError| ModelError::Load {
            model: source.name.clone(),
            version: source.version,
            reason,
        };
        let config = &source.config;
        let providers: Vec<String> = match &config.execution_providers {
            Some(list) => {
                if let Some(bad) = list.iter().find(|p| !PROVIDER_NAMES.contains(&p.as_str())) {
                    return Err(fail(LoadError::UnknownProvider(bad.clone())));
                }
                list.clone()
            }
            None => {
                let mut gpu: Vec<String> = PROVIDER_NAMES[..4]
                    .iter()
                    .filter(|p| available.iter().any(|a| provider_matches(p, a)))
                    .map(|p| p.to_string())
                    .collect();
                gpu.push("cpu".into());
                gpu
            }
        };
        // A provider the loaded library was not built with is skipped quietly; one that is
        // built in but fails to initialise (no driver, no device) warns and falls back.
        let providers: Vec<String> = providers
            .into_iter()
            .filter(|p| {
                let built_in = p == "cpu" || available.iter().any(|a| provider_matches(p, a));
                if !built_in {
                    tracing::info!(model = %source.name, provider = %p, "execution provider not in this ONNX Runtime build; skipped");
                }
                built_in
            })
            .collect();
        let instances = config.instances.unwrap_or(1).max(1);
        let before = resident_bytes();
        let mut sessions = Vec::new();
        let mut provider = String::new();
        for _ in 0..instances {
            let (session, chosen) = build_session(env, source, &providers).map_err(&fail)?;
            provider = chosen;
            sessions.push(session);
        }
        let memory_bytes = resident_bytes().saturating_sub(before).max(
            std::fs::metadata(&source.path)
                .map(|m| m.len())
                .unwrap_or(0),
        );
        let mut inputs = specs(sessions[0].inputs(), "input").map_err(&fail)?;
        let mut outputs = specs(sessions[0].outputs(), "output").map_err(&fail)?;
        let all_batched = inputs
            .iter()
            .chain(&outputs)
            .all(|s| s.shape.first().is_some_and(|&d| d < 0));
        let max_batch_size = match config.max_batch_size {
            Some(n) if n > 0 && !all_batched => return Err(fail(LoadError::BatchNeedsDynamic(n))),
            Some(n) => n,
            None if all_batched => DEFAULT_MAX_BATCH_SIZE,
            None => 0,
        };
        let batching = source
            .config
            .dynamic_batching
            .as_ref()
            .map(|b| b.policy(max_batch_size))
            .transpose()
            .map_err(|reason| fail(LoadError::DynamicBatching(reason)))?;
        apply_overrides(
            &mut inputs,
            config.inputs.as_deref().unwrap_or_default(),
            max_batch_size > 0,
        )
        .map_err(&fail)?;
        apply_overrides(
            &mut outputs,
            config.outputs.as_deref().unwrap_or_default(),
            max_batch_size > 0,
        )
        .map_err(&fail)?;
        let task = match &config.task {
            Some(task) => {
                let [input] = inputs.as_slice() else {
                    return Err(fail(LoadError::Task(format!(
                        "task: an image task needs a model with one input; this one has {}",
                        inputs.len()
                    ))));
                };
                task.check_input(input.datatype.as_str(), &input.shape)
                    .map_err(|e| fail(LoadError::Task(e)))?;
                // Beside model.onnx (where pushed files go), else beside config.yaml.
                let version_dir = source.path.parent().unwrap_or(std::path::Path::new("."));
                let model_dir = version_dir.parent().unwrap_or(version_dir);
                let labels = task
                    .read_labels(&[version_dir, model_dir])
                    .map_err(|e| fail(LoadError::Task(e)))?;
                Some(task.report(labels))
            }
            None => None,
        };
        Ok(LoadedModel {
            name: source.name.clone(),
            version: source.version,
            variant: source.variant.clone(),
            inputs,
            outputs,
            max_batch_size,
            max_queue: config.max_queue.unwrap_or(DEFAULT_MAX_QUEUE),
            execution_provider: provider,
            memory_bytes,
            instances,
            stats: ModelStats::default(),
            batching,
            task,
            throttle: options.throttle.max(1.0),
            min_run: options.min_run,
            permits: Arc::new(Semaphore::new(instances as usize)),
            sessions: Mutex::new(sessions),
            batcher: std::sync::OnceLock::new(),
        })
    }

    /// Runs validated inputs and returns the requested outputs (all when `requested` is
    /// empty): in a batch with other requests when the model batches dynamically, where
    /// a request of higher `priority` (`localml.priority`) is taken first. Inputs are
    /// decoded on the thread that runs the model.
    pub async fn run(
        self: &Arc<Self>,
        inputs: Vec<Input>,
        requested: Vec<String>,
        priority: i64,
    ) -> Result<Vec<Output>, ModelError> {
        let Some(policy) = &self.batching else {
            return self.run_alone(inputs, requested).await;
        };
        let (pending, answer) = match batch::Pending::new(inputs, requested, priority) {
            Ok(queued) => queued,
            Err((inputs, requested)) => return self.run_alone(inputs, requested).await,
        };
        let unloading = || ModelError::Run {
            model: self.name.clone(),
            reason: RunError::Unloading,
        };
        let before = self.stats.queue_depth.fetch_add(1, Ordering::Relaxed);
        if before >= self.max_queue {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(ModelError::QueueFull(self.name.clone(), before));
        }
        let queue = self.batcher.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(batch::form_batches(
                Arc::downgrade(self),
                rx,
                Arc::clone(&self.permits),
                policy.clone(),
                self.max_batch_size as usize,
            ));
            tx
        });
        if queue.send(pending).is_err() {
            self.stats.queue_depth.fetch_sub(1, Ordering::Relaxed);
            return Err(unloading());
        }
        // A caller that gives up drops `answer`; the batcher then drops the request.
        answer.await.unwrap_or_else(|_| Err(unloading()))
    }

    /// Runs one request on its own session.
    async fn run_alone(
        self: &Arc<Self>,
        inputs: Vec<Input>,
        requested: Vec<String>,
    ) -> Result<Vec<Output>, ModelError> {
        // Guards keep the counters right even when the caller gives up (deadline, disconnect).
        let entered = Instant::now();
        let queued = Gauge::enter(&self.stats.queue_depth);
        if queued.value >= self.max_queue && self.permits.available_permits() == 0 {
            return Err(ModelError::QueueFull(self.name.clone(), queued.value));
        }
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return Err(ModelError::Run {
                model: self.name.clone(),
                reason: RunError::Unloading,
            });
        };
        drop(queued);
        let started = Instant::now();
        let model = Arc::clone(self);
        // The session slot and the in-flight count belong to the blocking run, not to this
        // future: a caller that gives up (deadline, disconnect) drops the future, but the
        // run goes on until it ends, and so must the slot it holds.
        let result = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let _running = Gauge::enter(&model.stats.in_flight);
            let inputs = model.decode(inputs)?;
            model.run_blocking(inputs, &requested, started, 1)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ModelError::Run {
                model: self.name.clone(),
                reason: RunError::Task(e),
            })
        });
        self.record(result.is_ok(), started - entered, started.elapsed());
        result
    }

    /// Decodes checked inputs (on the blocking thread that then runs them).
    fn decode(&self, inputs: Vec<Input>) -> Result<Vec<NamedTensor>, ModelError> {
        inputs
            .into_iter()
            .map(|input| {
                let name = input.name.clone();
                input.decode().map_err(|e| ModelError::InvalidInput {
                    model: self.name.clone(),
                    reason: format!("input '{name}': {e}"),
                })
            })
            .collect()
    }

    /// A run error of this model.
    fn run_error(&self, reason: RunError) -> ModelError {
        ModelError::Run {
            model: self.name.clone(),
            reason,
        }
    }

    /// Counts one request that waited `waited` for a session and then ran `ran`.
    fn record(&self, ok: bool, waited: Duration, ran: Duration) {
        if ok {
            self.stats.inference_count.fetch_add(1, Ordering::Relaxed);
            self.stats
                .success_ns
                .fetch_add(nanos(ran), Ordering::Relaxed);
            self.stats
                .queue_ns
                .fetch_add(nanos(waited), Ordering::Relaxed);
            self.stats.record_latency(ran);
        } else {
            self.stats.failure_count.fetch_add(1, Ordering::Relaxed);
            self.stats
                .failure_ns
                .fetch_add(nanos(ran), Ordering::Relaxed);
        }
        self.stats
            .last_inference_ms
            .store(localml_proto::time::unix_ms(), Ordering::Relaxed);
    }

    /// Runs on a free session; `started` is when the request got its slot (a throttled
    /// worker holds the session that much longer, times the throttle).
    /// `requests` is how many requests the run serves (a batch's), for the statistics.
    fn run_blocking(
        &self,
        inputs: Vec<NamedTensor>,
        requested: &[String],
        started: Instant,
        requests: u32,
    ) -> Result<Vec<Output>, ModelError> {
        let run_error = |reason: RunError| ModelError::Run {
            model: self.name.clone(),
            reason,
        };
        let converting = Instant::now();
        let mut values: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for input in inputs {
            let name = input.name.clone();
            let value = to_value(input).map_err(|e| ModelError::InvalidInput {
                model: self.name.clone(),
                reason: format!("input '{name}': {e}"),
            })?;
            values.push((name, value));
        }
        // The semaphore guarantees a free session; the lock is held only to take it.
        let mut session = self
            .sessions
            .lock()
            .map_err(|_| run_error(RunError::Poisoned))?
            .pop()
            .ok_or_else(|| run_error(RunError::NoSession))?;
        let input_time = converting.elapsed();
        let result = (|| {
            let outputs = session.run(values).map_err(|e| {
                if matches!(e.code(), ort::ErrorCode::InvalidArgument) {
                    ModelError::InvalidInput {
                        model: self.name.clone(),
                        reason: e.to_string(),
                    }
                } else {
                    run_error(RunError::Ort(e))
                }
            })?;
            let converting = Instant::now();
            let mut out = Vec::new();
            for spec in &self.outputs {
                if !requested.is_empty() && !requested.contains(&spec.name) {
                    continue;
                }
                let value = outputs
                    .get(&spec.name)
                    .ok_or_else(|| run_error(RunError::MissingOutput(spec.name.clone())))?;
                out.push(from_value(&spec.name, value).map_err(run_error)?);
            }
            // Per request, as the other times: each request of a batch waited for all of it.
            let weight = u64::from(requests);
            self.stats
                .input_ns
                .fetch_add(nanos(input_time).saturating_mul(weight), Ordering::Relaxed);
            self.stats.output_ns.fetch_add(
                nanos(converting.elapsed()).saturating_mul(weight),
                Ordering::Relaxed,
            );
            self.stats.execution_count.fetch_add(1, Ordering::Relaxed);
            Ok(out)
        })();
        if self.throttle > 1.0 {
            // Hold the session longer, as a slower PC would.
            std::thread::sleep(started.elapsed().mul_f64(self.throttle - 1.0));
        }
        if let Some(rest) = self.min_run.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
        if let Ok(mut pool) = self.sessions.lock() {
            pool.push(session);
        }
        result
    }
}
