//! The scheduling framework's contracts, after kube-scheduler's: extension points as
//! traits, a [`Status`] whose [`Code`] decides between retrying, waiting and rejecting, a
//! typed per-cycle state, and the snapshot types decisions run on. No I/O here: the same
//! code runs in the scheduler and in the simulator.

use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};

/// Highest score a Score plugin gives (kube-scheduler's MaxNodeScore).
pub const MAX_SCORE: i64 = 100;

/// Free RAM under this share of the total is the MemoryPressure condition (MemoryFit's
/// default headroom; the scheduler's worker listing shows the same condition).
pub const MEMORY_PRESSURE_PERCENT: f64 = 5.0;

/// Latency assumed for a model no one has measured yet, in milliseconds.
pub const DEFAULT_LATENCY_MS: f64 = 1.0;

/// What a plugin's answer means for the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Success,
    /// An internal error: the cycle fails.
    Error,
    /// Not now: the worker may fit later (load changes, power returns).
    Unschedulable,
    /// Never, whatever changes in load: e.g. a label selector that does not match.
    UnschedulableAndUnresolvable,
    /// The plugin does not apply to this request: skip its later extension points.
    Skip,
}

/// A plugin's answer, with the reasons an operator reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub code: Code,
    pub reason: String,
    /// The plugin that answered (filled by the runtime).
    pub plugin: &'static str,
}

impl Status {
    pub fn success() -> Status {
        Status {
            code: Code::Success,
            reason: String::new(),
            plugin: "",
        }
    }

    pub fn new(code: Code, reason: impl Into<String>) -> Status {
        Status {
            code,
            reason: reason.into(),
            plugin: "",
        }
    }

    pub fn unschedulable(reason: impl Into<String>) -> Status {
        Status::new(Code::Unschedulable, reason)
    }

    pub fn unresolvable(reason: impl Into<String>) -> Status {
        Status::new(Code::UnschedulableAndUnresolvable, reason)
    }

    pub fn is_success(&self) -> bool {
        self.code == Code::Success
    }
}

/// Typed data a cycle's plugins share (kube-scheduler's CycleState).
#[derive(Default)]
pub struct CycleState {
    /// The snapshot's clock, set by the runtime at the start of the cycle (a field, not a
    /// typed entry, because every cycle needs it and lookups cost on the hot path).
    pub now_ms: u64,
    values: HashMap<TypeId, Box<dyn Any + Send + Sync>>,
}

impl CycleState {
    pub fn write<T: Any + Send + Sync>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Box::new(value));
    }

    pub fn remove<T: Any + Send + Sync>(&mut self) -> Option<T> {
        self.values
            .remove(&TypeId::of::<T>())
            .and_then(|v| v.downcast().ok())
            .map(|v| *v)
    }

    pub fn read<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref())
    }
}

/// Where a worker draws power from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerSource {
    Mains,
    Ups,
    Battery,
    Unknown,
}

/// Which kind of execution provider a request wants (`localml.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProviderChoice {
    #[default]
    Any,
    Gpu,
    Cpu,
}

/// A model version as loaded on one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelOnWorker {
    pub name: String,
    pub version: String,
    /// True when its sessions run on a GPU execution provider.
    pub on_gpu: bool,
    pub memory_bytes: u64,
    pub queue_depth: u32,
    pub in_flight: u32,
    /// Sessions that run at once.
    pub instances: u32,
    /// Requests one session runs at once: its `max_batch_size` when the worker batches
    /// requests dynamically, else 1.
    pub batch: u32,
    /// Latency the worker reports (EWMA), in milliseconds; 0 when unknown.
    pub reported_latency_ms: f64,
    /// Energy one inference of this model costs on this worker, in joules, as the worker
    /// measures it (RAPL, NVML) or estimates it (configured watts); 0 when unknown.
    pub joules_per_inference: f64,
}

/// One worker in a snapshot (kube-scheduler's NodeInfo).
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    /// Index in the snapshot's worker list.
    pub index: usize,
    pub name: String,
    /// Ready and not cordoned, not draining.
    pub schedulable: bool,
    /// Why not, when not.
    pub unschedulable_reason: String,
    pub labels: BTreeMap<String, String>,
    pub ram_total_bytes: u64,
    pub ram_free_bytes: u64,
    pub gpu_free_bytes: u64,
    pub power: PowerSource,
    /// The power source before the last change, and when it changed (snapshot clock):
    /// what PowerState's hysteresis needs, kept by the registry like a node condition's
    /// lastTransitionTime.
    pub previous_power: PowerSource,
    pub power_changed_ms: u64,
    pub battery_percent: Option<f32>,
    /// The worker's UPS reports low battery (NUT's LB): no new work.
    pub low_battery: bool,
    /// Seconds of battery left, when the battery or UPS says.
    pub battery_runtime_s: Option<u32>,
    pub models: Vec<ModelOnWorker>,
    /// Requests the scheduler has sent and not yet seen answered.
    pub dispatched: u32,
    /// Scheduler-observed peak-EWMA latency for the request's model, in milliseconds;
    /// 0 when there is no sample yet.
    pub peak_ewma_ms: f64,
}

impl ModelOnWorker {
    /// A loaded model version with one session, idle, on the CPU.
    pub fn new(name: &str, version: &str) -> ModelOnWorker {
        ModelOnWorker {
            name: name.to_string(),
            version: version.to_string(),
            on_gpu: false,
            memory_bytes: 0,
            queue_depth: 0,
            in_flight: 0,
            instances: 1,
            batch: 1,
            reported_latency_ms: 0.0,
            joules_per_inference: 0.0,
        }
    }
}

impl WorkerInfo {
    /// A schedulable, idle worker on mains with 4 of 8 GiB free and `model` loaded;
    /// callers change what differs.
    pub fn new(index: usize, name: String, model: ModelOnWorker) -> WorkerInfo {
        WorkerInfo {
            index,
            name,
            schedulable: true,
            unschedulable_reason: String::new(),
            labels: BTreeMap::new(),
            ram_total_bytes: 8 << 30,
            ram_free_bytes: 4 << 30,
            gpu_free_bytes: 0,
            power: PowerSource::Mains,
            previous_power: PowerSource::Mains,
            power_changed_ms: 0,
            battery_percent: None,
            low_battery: false,
            battery_runtime_s: None,
            models: vec![model],
            dispatched: 0,
            peak_ewma_ms: 0.0,
        }
    }

    /// The model version a request wants, if loaded here.
    pub fn model(&self, request: &RequestInfo) -> Option<&ModelOnWorker> {
        self.models
            .iter()
            .find(|m| m.name == request.model && m.version == request.version)
    }

    /// The first `localml.selector` pair this worker's labels do not match (Labels'
    /// rule; PowerState asks it too, to know which mains workers could take a request).
    pub fn selector_mismatch<'r>(&self, request: &'r RequestInfo) -> Option<&'r (String, String)> {
        request
            .selector
            .iter()
            .find(|(key, value)| self.labels.get(key) != Some(value))
    }

    /// Why this worker cannot give the request the provider it asks for (ExecutionProvider's
    /// rule), if it cannot.
    pub fn provider_mismatch(&self, request: &RequestInfo) -> Option<&'static str> {
        let on_gpu = self.model(request).is_some_and(|m| m.on_gpu);
        match (request.provider, on_gpu) {
            (ProviderChoice::Gpu, false) => {
                Some("the model runs on CPU here; the request asks for gpu")
            }
            (ProviderChoice::Cpu, true) => {
                Some("the model runs on GPU here; the request asks for cpu")
            }
            _ => None,
        }
    }

    /// Free RAM in percent of the total; 100 when the worker reports none (not penalised).
    pub fn free_ram_percent(&self) -> f64 {
        if self.ram_total_bytes == 0 {
            return 100.0;
        }
        self.ram_free_bytes as f64 * 100.0 / self.ram_total_bytes as f64
    }

    /// The latency to expect for the request's model here, in milliseconds: the
    /// scheduler's peak-EWMA, else the worker's own EWMA, else `default_ms`.
    pub fn latency_ms(&self, request: &RequestInfo, default_ms: f64) -> f64 {
        if self.peak_ewma_ms > 0.0 {
            return self.peak_ewma_ms;
        }
        self.model(request)
            .map(|m| m.reported_latency_ms)
            .filter(|l| *l > 0.0)
            .unwrap_or(default_ms)
    }

    /// Whole waves of requests ahead of one more: the requests outstanding here (the
    /// larger of the scheduler's count and the worker's queue + in-flight) over what the
    /// model's sessions run at once (sessions, times the batch when batching), rounded
    /// down. Times [`Self::latency_ms`], the wait before a new
    /// request starts.
    pub fn waves_ahead(&self, request: &RequestInfo) -> f64 {
        let model = self.model(request);
        let reported = model
            .map(|m| m.queue_depth.saturating_add(m.in_flight))
            .unwrap_or(0);
        let outstanding = f64::from(self.dispatched.max(reported));
        let instances = f64::from(model.map(|m| m.instances).unwrap_or(1).max(1));
        // A session that batches dynamically runs up to a batch in one wave (its reported
        // latency is a batch's).
        let batch = f64::from(model.map(|m| m.batch).unwrap_or(1).max(1));
        (outstanding / (instances * batch)).floor()
    }
}

/// What a scheduling decision is about (kube-scheduler's PodInfo).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RequestInfo {
    pub model: String,
    /// Resolved version (never empty inside a cycle).
    pub version: String,
    pub provider: ProviderChoice,
    /// `localml.selector`: every label must match.
    pub selector: Vec<(String, String)>,
    pub priority: i64,
    pub tenant: String,
    /// `localml.power=mains_only`: only workers on mains power (or with no power supply
    /// reported) may run it; PowerState filters the others.
    pub mains_only: bool,
    /// `localml.min_battery`: only a worker on mains whose own battery or UPS is charged
    /// to at least this many percent (one without a battery qualifies); PowerState
    /// filters the others.
    pub min_battery_percent: Option<f32>,
}

/// Cluster state a cycle decides on; never changes during the cycle.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub workers: Vec<WorkerInfo>,
    /// Milliseconds on the scheduler's clock (simulated time in the simulator).
    pub now_ms: u64,
    /// Requests waiting in the scheduler's queue for a free worker (they start before a
    /// new one on the workers that can serve them).
    pub queued: usize,
}

/// Every plugin has a unique name.
pub trait Plugin: Send + Sync {
    fn name(&self) -> &'static str;
}

/// Checks the request once per cycle before filtering.
pub trait PreFilter: Plugin {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        request: &RequestInfo,
        snapshot: &Snapshot,
    ) -> Status;
}

/// Can this worker run the request?
pub trait Filter: Plugin {
    fn filter(&self, state: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> Status;
}

/// Runs when no worker passed Filter. Answering Success means "I changed the cycle's
/// state; filter the workers once more" (kube-scheduler's PostFilter makes room by
/// preemption; PowerState drops its battery preference when it alone stands between the
/// request and a worker); anything else leaves the rejection as it is.
pub trait PostFilter: Plugin {
    fn post_filter(
        &self,
        state: &mut CycleState,
        request: &RequestInfo,
        rejected: &[(usize, Status)],
    ) -> Status;
}

/// Prepares scoring once per cycle, over the feasible workers.
pub trait PreScore: Plugin {
    fn pre_score(
        &self,
        state: &mut CycleState,
        request: &RequestInfo,
        feasible: &[&WorkerInfo],
    ) -> Status;
}

/// Ranks a feasible worker (higher is better); `normalize` maps the raw scores of all
/// feasible workers to 0..=MAX_SCORE (NormalizeScore).
pub trait Score: Plugin {
    fn score(&self, state: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> i64;
    fn normalize(&self, _state: &CycleState, _scores: &mut [i64]) {}
}

/// Claims resources on the chosen worker before binding; `unreserve` undoes it when
/// binding fails.
pub trait Reserve: Plugin {
    fn reserve(&self, state: &mut CycleState, request: &RequestInfo, worker: &WorkerInfo)
        -> Status;
    fn unreserve(&self, state: &mut CycleState, request: &RequestInfo, worker: &WorkerInfo);
}

/// Orders the scheduler's queue (kube-scheduler's QueueSort): true if `a` goes first.
pub trait QueueSort: Send + Sync {
    fn less(&self, a: &QueuedRequest, b: &QueuedRequest) -> bool;
}

/// A request waiting in the queue.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedRequest {
    pub priority: i64,
    /// Arrival order.
    pub sequence: u64,
    pub tenant: String,
    /// Requests of the same tenant dispatched and not yet answered (filled by the queue
    /// when it compares).
    pub tenant_in_flight: u32,
}

/// The default QueueSort: higher priority first; among equals the tenant with fewer
/// requests in flight (so one heavy client cannot starve the others); then arrival.
pub struct PrioritySort;

impl QueueSort for PrioritySort {
    fn less(&self, a: &QueuedRequest, b: &QueuedRequest) -> bool {
        (
            std::cmp::Reverse(a.priority),
            a.tenant_in_flight,
            a.sequence,
        ) < (
            std::cmp::Reverse(b.priority),
            b.tenant_in_flight,
            b.sequence,
        )
    }
}
