//! Sending a request to a worker: queue, pick one (the framework's cycle over a fresh
//! snapshot), forward, and on a worker failure retry on another within the client's
//! deadline. Its errors become `tonic::Status` in one place, [`DispatchError`]'s `From`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use localml_proto::inference::{ModelInferRequest, ModelInferResponse};
use tokio::time::Instant;
use tonic::{Code, Status};

use localml_framework::plugins::capacity;
use localml_framework::profile::Profiles;
use localml_framework::{Code as FrameworkCode, CycleState, PrioritySort, QueuedRequest};

use crate::failure::{classify, Failure};
use crate::forward::{decode_response, Forwarded};
use crate::parameters::{request_info, ParameterError, PROFILE_PARAMETER};
use crate::queue::{AdmissionQueue, Queueing, Turn};
use crate::stats::Stats;
use crate::workers::{Lookup, Workers};

/// Why a request could not be served, as the client is told.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// A scheduling parameter is malformed.
    #[error(transparent)]
    Parameter(#[from] ParameterError),
    /// `localml.profile` names a profile the config does not define.
    #[error(
        "parameter '{}' names unknown profile '{name}' (profiles: {known})",
        PROFILE_PARAMETER
    )]
    UnknownProfile { name: String, known: String },
    /// The admission queue holds its maximum.
    #[error(
        "the scheduler's queue is full ({0} requests wait for a free worker); try again later"
    )]
    QueueFull(usize),
    /// The request would wait in the queue longer than its deadline leaves.
    #[error("the expected wait in the scheduler's queue ({expected_ms} ms, {ahead} request(s) ahead of it) is longer than the request's deadline leaves ({left_ms} ms)")]
    WaitOverDeadline {
        expected_ms: u64,
        ahead: usize,
        left_ms: u64,
    },
    /// The request would wait in the queue longer than `max_queue_wait_ms`.
    #[error("the expected wait in the scheduler's queue ({expected_ms} ms, {ahead} request(s) ahead of it) is over max_queue_wait_ms ({max_ms} ms); try again later")]
    WaitTooLong {
        expected_ms: u64,
        ahead: usize,
        max_ms: u64,
    },
    /// The requests held (queued or in flight) fill the byte budget.
    #[error("the scheduler holds {held} bytes of requests, its budget is {max} (max_queued_bytes); try again later")]
    BytesFull { held: usize, max: usize },
    /// No worker has the model loaded.
    #[error("unknown model '{0}': no worker has it loaded")]
    UnknownModel(String),
    /// The model exists, not in that version.
    #[error("model '{model}' has no version '{version}' (available: {})", .available.join(", "))]
    UnknownVersion {
        model: String,
        version: String,
        available: Vec<String>,
    },
    /// Only workers that are not Ready have the model.
    #[error(
        "no Ready worker can serve model '{model}'{}; workers that have it: {}",
        version_suffix(.version),
        or_none(.details)
    )]
    NoReadyWorker {
        model: String,
        version: String,
        details: Vec<String>,
    },
    /// A lookup found workers but none was chosen (a bug, not a client error).
    #[error("no worker chosen")]
    NoWorkerChosen,
    /// No worker can ever take the request as it is (e.g. a selector matches none).
    #[error("model '{model}' version {version}: {reason}")]
    Unresolvable {
        model: String,
        version: String,
        reason: String,
    },
    /// No worker can take the request now.
    #[error("model '{model}' version {version}: {reason}")]
    Unschedulable {
        model: String,
        version: String,
        reason: String,
    },
    /// The worker answered with an error about the request: passed on unchanged.
    #[error("{}", .0.message())]
    Request(Status),
    /// Every worker tried was unreachable.
    #[error("no worker could serve model '{model}' after {tried} attempt(s); last error: {last}")]
    Unreachable {
        model: String,
        tried: usize,
        last: String,
    },
    /// The workers tried failed with an error of their own, whose code is kept.
    #[error("{message} (tried {tried} worker(s))")]
    WorkersFailed {
        code: Code,
        message: String,
        tried: usize,
    },
    /// The retries ran out (or the deadline passed) before any worker was tried.
    #[error("no Ready worker can serve model '{0}'")]
    NothingTried(String),
}

fn version_suffix(version: &str) -> String {
    if version.is_empty() {
        String::new()
    } else {
        format!(" version {version}")
    }
}

fn or_none(details: &[String]) -> String {
    if details.is_empty() {
        "none".to_string()
    } else {
        details.join(", ")
    }
}

impl DispatchError {
    /// Why a lookup found no worker to route `model` (at `version`) to.
    pub fn from_lookup(model: &str, version: &str, lookup: Lookup) -> DispatchError {
        match lookup {
            Lookup::Found(_) => DispatchError::NoWorkerChosen,
            Lookup::UnknownModel => DispatchError::UnknownModel(model.to_string()),
            Lookup::UnknownVersion { available } => DispatchError::UnknownVersion {
                model: model.to_string(),
                version: version.to_string(),
                available,
            },
            Lookup::NoReadyWorker { details } => DispatchError::NoReadyWorker {
                model: model.to_string(),
                version: version.to_string(),
                details,
            },
        }
    }
}

impl From<DispatchError> for Status {
    fn from(e: DispatchError) -> Status {
        let message = e.to_string();
        match e {
            DispatchError::Parameter(_) | DispatchError::UnknownProfile { .. } => {
                Status::invalid_argument(message)
            }
            DispatchError::WaitOverDeadline { .. } => Status::deadline_exceeded(message),
            DispatchError::QueueFull(_)
            | DispatchError::BytesFull { .. }
            | DispatchError::WaitTooLong { .. } => {
                // gRPC's retry hint: a client (or its retry policy) waits this long.
                let mut status = Status::resource_exhausted(message);
                status.metadata_mut().insert(
                    "grpc-retry-pushback-ms",
                    tonic::metadata::MetadataValue::from(RETRY_PUSHBACK_MS),
                );
                status
            }
            DispatchError::UnknownModel(_) | DispatchError::UnknownVersion { .. } => {
                Status::not_found(message)
            }
            DispatchError::NoReadyWorker { .. }
            | DispatchError::Unschedulable { .. }
            | DispatchError::Unreachable { .. }
            | DispatchError::NothingTried(_) => Status::unavailable(message),
            DispatchError::NoWorkerChosen => Status::internal(message),
            DispatchError::Unresolvable { .. } => Status::failed_precondition(message),
            DispatchError::Request(status) => status,
            DispatchError::WorkersFailed { code, .. } => Status::new(code, message),
        }
    }
}

/// Routes requests: the dispatch stack ([`crate::stack`]) over the scheduler's queue and
/// the framework's cycle.
pub struct Dispatcher {
    pub workers: Arc<Workers>,
    pub stats: Arc<Stats>,
    core: Arc<Core>,
    /// Workers a request is sent to at most (`dispatch_attempts`).
    attempts: u32,
    /// Retries on another worker, shared by all requests ([`crate::stack::retry_budget`]).
    budget: Arc<tower::retry::budget::TpsBudget>,
}

/// What one attempt needs: the workers, the profiles, the queue and its limits. Shared by
/// the stack's services.
pub(crate) struct Core {
    workers: Arc<Workers>,
    profiles: Profiles,
    rotation: AtomicUsize,
    queue: Arc<AdmissionQueue>,
    /// Bytes of the requests held now (queued or in flight), and their ceiling.
    held_bytes: Arc<AtomicUsize>,
    max_held_bytes: usize,
    /// The longest expected wait in the queue a request is admitted to (None: no bound).
    max_queue_wait: Option<Duration>,
    /// A queued request that no event woke looks again after this long (None: never): a
    /// safety net for a wake-up the events miss (`queue_safety_net_ms`).
    queue_safety_net: Option<Duration>,
}

/// Releases a request's bytes from [`Core::held_bytes`] however it ends.
pub(crate) struct HeldBytes(Arc<AtomicUsize>, usize);

impl Drop for HeldBytes {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// Decrements a worker's dispatched count however the request ends.
struct InFlight(Arc<std::sync::atomic::AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The retry hint sent with RESOURCE_EXHAUSTED (`grpc-retry-pushback-ms`).
const RETRY_PUSHBACK_MS: u32 = 200;

/// A queued request's turn. Waiting, it holds the receiver its wake-up comes through;
/// woken, it holds the turn until it is dispatched (the next waiter of its class looks:
/// capacity may be left), gives up (deadline, error, its caller gone: the turn passes on
/// too, even when the wake-up came just as it was dropped), or finds every worker busy
/// again and goes back to wait (the turn goes to another class, [`AdmissionQueue::went_back`]).
struct Baton<'a> {
    queue: &'a AdmissionQueue,
    class: &'a str,
    waiting: Option<tokio::sync::oneshot::Receiver<()>>,
    held: bool,
}

impl Baton<'_> {
    /// Waits for the turn until `until`; false when that came first (the request is then
    /// out of the queue, unless the wake-up came at that moment: then it holds the turn).
    async fn wait(&mut self, turn: tokio::sync::oneshot::Receiver<()>, until: Instant) -> bool {
        let turn = self.waiting.insert(turn);
        let woken = tokio::time::timeout_at(until, turn).await.is_ok();
        if woken {
            self.waiting = None;
            self.held = true;
        } else {
            self.stop_waiting();
        }
        woken || self.held
    }

    /// Leaves the queue; a wake-up that came meanwhile is held, not lost.
    fn stop_waiting(&mut self) {
        if let Some(mut turn) = self.waiting.take() {
            turn.close();
            if turn.try_recv().is_ok() {
                self.held = true;
            }
        }
    }

    fn pass(&mut self) {
        if std::mem::take(&mut self.held) {
            self.queue.pass_on(self.class);
        }
    }

    fn went_back(&mut self) {
        if std::mem::take(&mut self.held) {
            self.queue.went_back(self.class);
        }
    }
}

impl Drop for Baton<'_> {
    fn drop(&mut self) {
        // Dropped while waiting: a wake-up already sent is passed on, not lost.
        self.stop_waiting();
        self.pass();
    }
}

/// Counts a dispatched request for its tenant; when it ends, the first queued request of
/// its class is woken.
struct TenantInFlight<'a> {
    queue: &'a AdmissionQueue,
    tenant: String,
    class: &'a str,
}

impl<'a> TenantInFlight<'a> {
    fn new(queue: &'a AdmissionQueue, tenant: &str, class: &'a str) -> TenantInFlight<'a> {
        queue.started(tenant);
        TenantInFlight {
            queue,
            tenant: tenant.to_string(),
            class,
        }
    }
}

impl Drop for TenantInFlight<'_> {
    fn drop(&mut self) {
        self.queue.finished(&self.tenant, self.class);
    }
}

/// What became of one request on its way, kept across its attempts (shared by the stack's
/// layers): the workers it was sent to, the version chosen, where it is now, and the last
/// worker failure.
#[derive(Default)]
pub(crate) struct Trace {
    /// Ids of the workers it was sent to; later attempts' cycles exclude them.
    pub tried: Vec<String>,
    pub version: String,
    /// When it left for the last worker tried.
    pub sent: Option<Instant>,
    /// The worker that holds it now (None: in the scheduler, e.g. queued).
    pub at_worker: Option<String>,
    /// Whether the queue's expected wait was checked and found acceptable: at once for an
    /// arrival that queues behind others, else when it first finds every worker busy.
    pub admitted: bool,
    /// Whether it has waited its turn in the queue (a request that did is never refused
    /// for a full queue when it goes back, [`Queueing::Again`]).
    pub waited: bool,
    /// The last worker failure (what the client is told when the attempts run out).
    pub last_error: Option<Status>,
}

/// A request on its way through the dispatch stack ([`crate::stack`]).
#[derive(Clone)]
pub(crate) struct Routed {
    pub request: Forwarded,
    /// The client's deadline (a job's attempt's).
    pub deadline: Option<Instant>,
    /// Whether the queue's expected wait may refuse it (online requests, not jobs).
    pub bounded: bool,
    /// Its place among equals in the queue (arrival order), kept across attempts.
    pub sequence: u64,
    pub trace: Arc<std::sync::Mutex<Trace>>,
}

impl Routed {
    /// The trace, however a panic elsewhere left the lock.
    pub fn trace(&self) -> std::sync::MutexGuard<'_, Trace> {
        self.trace.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How one attempt ended, when not with the worker's answer.
#[derive(Debug)]
pub(crate) enum AttemptError {
    /// The request's own end (a bad parameter, an unknown model, a refusal, the worker's
    /// answer about the request): the client gets it.
    Final(DispatchError),
    /// The worker failed ([`crate::failure::Failure::Unreachable`] or `Elsewhere`): another
    /// worker may serve it (the retry layer decides).
    Worker,
    /// After a worker failure, no other worker could be tried (none left, none Ready, the
    /// deadline too close): the request ends with that failure.
    Exhausted,
}

impl From<DispatchError> for AttemptError {
    fn from(e: DispatchError) -> AttemptError {
        AttemptError::Final(e)
    }
}

impl From<ParameterError> for AttemptError {
    fn from(e: ParameterError) -> AttemptError {
        AttemptError::Final(e.into())
    }
}

/// An error this close to the client's deadline is taken as the deadline's (timers and
/// the channel's own timeout do not fire at the same instant).
const DEADLINE_SLACK: Duration = Duration::from_millis(2);

/// Whether a failure is the worker's (try another worker) rather than an answer about
/// the request ([`crate::failure::classify`]).
fn worker_failed(status: &Status) -> bool {
    !matches!(classify(status), Failure::Answer)
}

/// Whether the failure means the worker could not be reached at all.
fn unreachable(status: &Status) -> bool {
    matches!(classify(status), Failure::Unreachable)
}

impl Dispatcher {
    /// Requests waiting in the admission queue.
    pub fn queued(&self) -> usize {
        self.core.queue.len()
    }

    pub fn new(
        workers: Arc<Workers>,
        stats: Arc<Stats>,
        profiles: Profiles,
        attempts: u32,
        max_queued: usize,
        max_queued_bytes: usize,
    ) -> Dispatcher {
        let queue = Arc::new(AdmissionQueue::new(max_queued, Box::new(PrioritySort)));
        // A change of the workers (a report, a join, a cordon, one lost) may change what
        // queued requests can run on: they look.
        let waiters = Arc::downgrade(&queue);
        workers.on_change(Box::new(move || {
            if let Some(queue) = waiters.upgrade() {
                queue.changed();
            }
        }));
        Dispatcher {
            workers: Arc::clone(&workers),
            stats,
            core: Arc::new(Core {
                workers,
                profiles,
                rotation: AtomicUsize::new(0),
                queue,
                held_bytes: Arc::new(AtomicUsize::new(0)),
                max_held_bytes: max_queued_bytes,
                max_queue_wait: None,
                queue_safety_net: Some(Duration::from_secs(1)),
            }),
            attempts: attempts.max(1),
            budget: crate::stack::retry_budget(),
        }
    }

    #[cfg(test)]
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.core
    }

    /// The settings below are made before the first request, while the core is not
    /// shared yet.
    fn core_mut(&mut self) -> &mut Core {
        Arc::get_mut(&mut self.core).expect("configured before the first request")
    }

    /// Queued requests no event woke look again after `net` (zero: never).
    pub fn with_queue_safety_net(mut self, net: Duration) -> Dispatcher {
        self.core_mut().queue_safety_net = (!net.is_zero()).then_some(net);
        self
    }

    /// Refuses requests whose expected wait in the queue is over `max` (`max_queue_wait_ms`;
    /// zero: no bound). Jobs are not refused: they wait their turn.
    pub fn with_max_queue_wait(mut self, max: Duration) -> Dispatcher {
        self.core_mut().max_queue_wait = (!max.is_zero()).then_some(max);
        self
    }

    /// Routes one request as it arrived (its bytes, never re-encoded) and returns the
    /// worker's answer as it came; `deadline` is the client's.
    pub async fn forward(
        &self,
        request: Forwarded,
        deadline: Option<Instant>,
    ) -> Result<Bytes, Status> {
        self.infer_traced(request, deadline, &mut 0, true).await
    }

    /// Routes one request built in process (REST, streams): [`Dispatcher::forward`] with
    /// the request encoded once and the answer decoded.
    pub async fn infer(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<ModelInferResponse, Status> {
        decode_response(
            self.forward(Forwarded::from_request(&request), deadline)
                .await?,
        )
    }

    /// [`Dispatcher::infer`] for a job, also counting in `tried` the workers the request
    /// was sent to (0: it failed before reaching any). A job is not refused for the
    /// queue's expected wait (`max_queue_wait_ms`): it waits its turn.
    pub async fn infer_counting(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
        tried: &mut usize,
    ) -> Result<ModelInferResponse, Status> {
        let request = Forwarded::from_request(&request);
        decode_response(self.infer_traced(request, deadline, tried, false).await?)
    }

    /// Sends the request down the dispatch stack and records how it ended.
    async fn infer_traced(
        &self,
        request: Forwarded,
        deadline: Option<Instant>,
        tried: &mut usize,
        bounded: bool,
    ) -> Result<Bytes, Status> {
        use tower::ServiceExt;
        let started = Instant::now();
        let model = request.head.model_name.clone();
        let trace = Arc::new(std::sync::Mutex::new(Trace {
            version: request.head.model_version.clone(),
            ..Trace::default()
        }));
        let routed = Routed {
            request,
            deadline,
            bounded,
            sequence: self.core.queue.arrive(),
            trace: Arc::clone(&trace),
        };
        let stack = crate::stack::stack(
            Arc::clone(&self.core),
            self.attempts,
            Arc::clone(&self.budget),
        );
        let result = stack.oneshot(routed).await;
        let mut trace = trace.lock().unwrap_or_else(|e| e.into_inner());
        let result = result.map_err(|e| match e {
            AttemptError::Final(e) => e,
            AttemptError::Worker | AttemptError::Exhausted => ended_after_failures(&model, &trace),
        });
        *tried = trace.tried.len();
        // Counted under the version that served (or was chosen to), as Triton does; a
        // request refused before routing counts under the version it would have had.
        if trace.version.is_empty() {
            if let Some((m, _)) = self.workers.model(&model, "") {
                trace.version = m.version;
            }
        }
        // Names a client invents are not kept one by one (memory and metric series would
        // grow with every name sent): an unknown model counts under one label, and an
        // unknown version is left out of the per-version statistics.
        let seen = match &result {
            Err(DispatchError::UnknownModel(_)) => crate::stats::Seen::UnknownModel,
            Err(DispatchError::UnknownVersion { .. }) => crate::stats::Seen::UnknownVersion,
            _ => crate::stats::Seen::Known,
        };
        let result = result.map_err(Status::from);
        let now = Instant::now();
        self.stats.record(
            &model,
            &trace.version,
            seen,
            localml_serving::metrics::result_code(&result),
            crate::stats::Times {
                total: now - started,
                // Until the request left for the worker that answered (all of it when
                // none did).
                queued: trace.sent.unwrap_or(now) - started,
            },
        );
        result
    }
}

/// What a request that worker failures ended is told: every worker tried unreachable
/// (the cluster cannot serve it now), or the workers' own error with its code.
fn ended_after_failures(model: &str, trace: &Trace) -> DispatchError {
    match &trace.last_error {
        Some(status) if unreachable(status) => DispatchError::Unreachable {
            model: model.to_string(),
            tried: trace.tried.len(),
            last: status.message().to_string(),
        },
        Some(status) => DispatchError::WorkersFailed {
            code: status.code(),
            message: status.message().to_string(),
            tried: trace.tried.len(),
        },
        None => DispatchError::NothingTried(model.to_string()),
    }
}

impl Core {
    /// How long a request that must queue now can expect to wait before it starts: the
    /// requests ahead of it (queued, and outstanding at the workers that could serve it)
    /// over the rate those workers finish them (each runs its sessions' worth, times the
    /// batch when batching, per latency). None when no worker gives a rate.
    fn expected_wait(
        &self,
        snapshot: &localml_framework::Snapshot,
        info: &localml_framework::RequestInfo,
    ) -> Option<(Duration, usize)> {
        let mut per_ms = 0.0;
        let mut outstanding = 0usize;
        for w in snapshot.workers.iter().filter(|w| w.schedulable) {
            let Some(m) = w.model(info) else { continue };
            let at_once = f64::from(m.instances.max(1)) * f64::from(m.batch.max(1));
            // The worker's own run time where it reports one: the scheduler's figure also
            // holds the time queued at the worker, counted here as `outstanding`.
            let latency = if m.reported_latency_ms > 0.0 {
                m.reported_latency_ms
            } else {
                w.latency_ms(info, localml_framework::contracts::DEFAULT_LATENCY_MS)
            };
            if latency > 0.0 && latency.is_finite() {
                per_ms += at_once / latency;
            }
            let reported = m.queue_depth.saturating_add(m.in_flight);
            outstanding = outstanding.saturating_add(w.dispatched.max(reported) as usize);
        }
        if per_ms <= 0.0 {
            return None;
        }
        let ahead = self.queue.len().saturating_add(outstanding);
        let ms = ahead as f64 / per_ms;
        Some((Duration::from_secs_f64((ms / 1e3).min(1e6)), ahead))
    }

    /// Why an online request that finds every worker busy is refused at once instead of
    /// queued: its deadline cannot be met, or the wait is over `max_queue_wait_ms`. Jobs
    /// (`bounded` false) always queue: they wait their turn and retry.
    fn refuse_to_queue(
        &self,
        snapshot: &localml_framework::Snapshot,
        info: &localml_framework::RequestInfo,
        deadline: Option<Instant>,
        bounded: bool,
    ) -> Option<DispatchError> {
        if !bounded {
            return None;
        }
        let (expected, ahead) = self.expected_wait(snapshot, info)?;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            if expected > left {
                return Some(DispatchError::WaitOverDeadline {
                    expected_ms: ms(expected),
                    ahead,
                    left_ms: ms(left),
                });
            }
        }
        match self.max_queue_wait {
            Some(max) if expected > max => Some(DispatchError::WaitTooLong {
                expected_ms: ms(expected),
                ahead,
                max_ms: ms(max),
            }),
            _ => None,
        }
    }

    /// Whether a worker not tried yet has the request's model (the retry layer asks before
    /// spending its budget on an attempt that could only end `Exhausted`).
    pub(crate) fn untried_worker(&self, routed: &Routed) -> bool {
        let head = &routed.request.head;
        let tried = routed.trace().tried.clone();
        match self.workers.lookup(&head.model_name, &head.model_version) {
            crate::workers::Lookup::Found(candidates) => {
                candidates.iter().any(|c| !tried.contains(&c.id))
            }
            _ => false,
        }
    }

    /// Takes `bytes` of the byte budget for one request, or says why not (load shedding:
    /// the stack's [`crate::stack::HoldBytes`] layer).
    pub(crate) fn hold(&self, bytes: usize) -> Result<HeldBytes, DispatchError> {
        let before = self.held_bytes.fetch_add(bytes, Ordering::Relaxed);
        let held = HeldBytes(Arc::clone(&self.held_bytes), bytes);
        if before.saturating_add(bytes) > self.max_held_bytes {
            return Err(DispatchError::BytesFull {
                held: before,
                max: self.max_held_bytes,
            });
        }
        Ok(held)
    }

    /// One attempt, the stack's innermost service: queue -> PreFilter/Filter/Score over a
    /// fresh snapshot (without the workers tried before) -> Reserve -> Bind (forward to
    /// the worker chosen). A worker failure unreserves and ends the attempt with
    /// [`AttemptError::Worker`]: the retry layer decides whether another one follows.
    /// The deadline is the deadline layer's: this waits in the queue for as long as it
    /// takes, and gives the worker what is left of it.
    pub(crate) async fn attempt(&self, routed: Routed) -> Result<Bytes, AttemptError> {
        let head = &routed.request.head;
        let deadline = routed.deadline;
        let (profile_name, arrival) = request_info(head, "")?;
        let profile =
            self.profiles
                .get(&profile_name)
                .ok_or_else(|| DispatchError::UnknownProfile {
                    known: self.profiles.names().join(", "),
                    name: profile_name.clone(),
                })?;
        let queued = QueuedRequest {
            priority: arrival.priority,
            sequence: routed.sequence,
            tenant: arrival.tenant.clone(),
            tenant_in_flight: 0,
        };
        let class = crate::queue::class(&profile_name, &arrival, &head.model_version);
        let (tried, failed_before) = {
            let trace = routed.trace();
            (trace.tried.clone(), trace.last_error.is_some())
        };
        // Arrivals queue behind requests of their class already waiting, so waiting ones
        // keep their turn; a request tried on a worker before looks at once, as it did.
        let mut wait = tried.is_empty() && self.queue.has_waiting(&class);
        let mut how = if wait {
            Queueing::Behind
        } else if routed.trace().waited {
            Queueing::Again
        } else {
            Queueing::Busy
        };
        if wait && routed.bounded && !routed.trace().admitted {
            if let Ok((version, snapshot, _)) =
                self.workers.snapshot(&head.model_name, &head.model_version)
            {
                let (_, info) = request_info(head, &version)?;
                if let Some(refusal) = self.refuse_to_queue(&snapshot, &info, deadline, true) {
                    return Err(refusal.into());
                }
                routed.trace().admitted = true;
            }
        }
        // The queue's events when the workers were last looked at.
        let mut seen = self.queue.events();
        let mut baton = Baton {
            queue: &self.queue,
            class: &class,
            waiting: None,
            held: false,
        };
        loop {
            if std::mem::take(&mut wait) {
                let turn = self
                    .queue
                    .enqueue(queued.clone(), &class, seen, how)
                    .map_err(|full| DispatchError::QueueFull(full.0))?;
                // Woken when a request ends, when the workers change (a report, a join, a
                // cordon, one lost), or passed the turn by another waiter.
                match turn {
                    Turn::Wait(turn) => {
                        // A day stands for "never" (deadlines are capped at a day too).
                        let net = Instant::now()
                            + self
                                .queue_safety_net
                                .unwrap_or(localml_serving::service::MAX_REQUEST_TIMEOUT);
                        baton.wait(turn, net).await;
                        how = Queueing::Again;
                        routed.trace().waited = true;
                    }
                    // Something changed since it looked: look again, after letting others run.
                    Turn::LookAgain => {
                        if how == Queueing::Behind {
                            how = Queueing::Busy;
                        }
                        tokio::task::yield_now().await
                    }
                }
            }
            seen = self.queue.events();
            let (version, mut snapshot, handles) =
                match self.workers.snapshot(&head.model_name, &head.model_version) {
                    Ok(found) => found,
                    Err(_) if failed_before => return Err(AttemptError::Exhausted),
                    Err(lookup) => {
                        return Err(DispatchError::from_lookup(
                            &head.model_name,
                            &head.model_version,
                            lookup,
                        )
                        .into())
                    }
                };
            snapshot.queued = self.queue.len();
            // Whether a worker was lost since this snapshot is seen at dispatch.
            let epochs: Vec<u64> = handles
                .iter()
                .map(|h| h.lost_epoch.load(Ordering::SeqCst))
                .collect();
            routed.trace().version.clone_from(&version);
            let (_, info) = request_info(head, &version)?;
            let excluded: Vec<usize> = handles
                .iter()
                .enumerate()
                .filter(|(_, h)| tried.contains(&h.id))
                .map(|(i, _)| i)
                .collect();
            let mut state = CycleState::default();
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let decision = match profile.schedule(&mut state, &info, &snapshot, &excluded, rotation)
            {
                Ok(d) => d,
                // Every feasible worker is busy: wait in the queue for a turn, unless the
                // wait cannot end in time. Once admitted, a request keeps its place.
                Err(rejection) if capacity::all_busy(&rejection) => {
                    if !routed.trace().admitted {
                        if let Some(refusal) =
                            self.refuse_to_queue(&snapshot, &info, deadline, routed.bounded)
                        {
                            return Err(refusal.into());
                        }
                        routed.trace().admitted = true;
                    }
                    if tried.is_empty() {
                        baton.went_back();
                    } else if std::mem::take(&mut baton.held) {
                        // It excludes workers it tried: others of its class may use them.
                        self.queue.pass_on(&class);
                    }
                    wait = true;
                    continue;
                }
                Err(_) if failed_before => return Err(AttemptError::Exhausted),
                Err(rejection) => {
                    let (model, reason) = (info.model.clone(), rejection.message);
                    return Err(match rejection.code {
                        FrameworkCode::UnschedulableAndUnresolvable => {
                            DispatchError::Unresolvable {
                                model,
                                version,
                                reason,
                            }
                        }
                        _ => DispatchError::Unschedulable {
                            model,
                            version,
                            reason,
                        },
                    }
                    .into());
                }
            };
            let chosen = &handles[decision.worker];
            tracing::debug!(worker = %chosen.name, score = decision.score, profile = %profile.name, "scheduled");
            // Dropped in reverse order: the worker's count falls before the queue is woken,
            // so the waiter woken sees the slot free.
            let _tenant = TenantInFlight::new(&self.queue, &info.tenant, &class);
            chosen.dispatched.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(Arc::clone(&chosen.dispatched));
            // Counted as dispatched first, so the next waiter sees this one's share taken.
            baton.pass();
            let mut forwarded = tonic::Request::new(routed.request.clone());
            if let Some(deadline) = deadline {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    profile.unreserve(&mut state, &info, &snapshot.workers[decision.worker]);
                    return Err(if failed_before {
                        AttemptError::Exhausted
                    } else {
                        AttemptError::Final(DispatchError::NothingTried(head.model_name.clone()))
                    });
                }
                forwarded.set_timeout(remaining.max(Duration::from_millis(1)));
            }
            let sent = Instant::now();
            {
                let mut trace = routed.trace();
                trace.tried.push(chosen.id.clone());
                trace.sent = Some(sent);
                trace.at_worker = Some(chosen.name.clone());
            }
            let mut client = chosen.client.clone();
            // A worker that stops answering while it holds the request (it misses its
            // reports, its lease expires) gives it up: the call is dropped there (the
            // stream reset) and the request goes to another worker.
            let lost = chosen.lost.notified();
            tokio::pin!(lost);
            lost.as_mut().enable();
            let gone = || {
                Status::unavailable(format!(
                    "worker {} stopped answering (NotReady) while it held the request",
                    chosen.name
                ))
            };
            // `given_up`: the scheduler stopped waiting (the worker may still hold it).
            let (answer, given_up) =
                if chosen.lost_epoch.load(Ordering::SeqCst) != epochs[decision.worker] {
                    (Err(gone()), true)
                } else {
                    tokio::select! {
                        answer = client.model_infer(forwarded) => (answer, false),
                        _ = lost => (Err(gone()), true),
                    }
                };
            routed.trace().at_worker = None;
            let deadline_passed = deadline.is_some_and(|d| Instant::now() + DEADLINE_SLACK >= d);
            // The worker's own answer (not a call dropped, cut by the deadline or broken:
            // such a request may still run there) takes the request off the worker's last
            // report's counts; counted before the queue is woken (end of this scope).
            let from_worker = match &answer {
                Ok(_) => true,
                Err(status) => {
                    !deadline_passed && !given_up && std::error::Error::source(status).is_none()
                }
            };
            if from_worker {
                chosen.note_answered(&info.model, &version);
            }
            return match answer {
                Ok(response) => {
                    let ms = sent.elapsed().as_secs_f64() * 1e3;
                    chosen.observe_latency(&info.model, &version, ms, self.workers.now_ms());
                    Ok(response.into_inner())
                }
                // The client's deadline passed while the worker worked (the channel then
                // answers CANCELLED "Timeout expired"): the client's doing, not the
                // worker's; the worker is not marked, nor is the request tried elsewhere.
                Err(_) if deadline_passed => {
                    tracing::debug!(worker = %chosen.name, "the client's deadline passed on the worker");
                    Err(DispatchError::Request(past_deadline(Some(&chosen.name))).into())
                }
                Err(status) if worker_failed(&status) => {
                    tracing::warn!(worker = %chosen.name, code = ?status.code(), message = status.message(), "dispatch failed; trying another worker");
                    profile.unreserve(&mut state, &info, &snapshot.workers[decision.worker]);
                    if unreachable(&status) {
                        self.workers.mark_unreachable(&chosen.id, status.message());
                    }
                    routed.trace().last_error = Some(status);
                    Err(AttemptError::Worker)
                }
                Err(status) => Err(DispatchError::Request(status).into()),
            };
        }
    }
}

/// DEADLINE_EXCEEDED for a request whose deadline passed: on the worker that held it, or
/// in the scheduler (queued, or between workers).
pub(crate) fn past_deadline(worker: Option<&str>) -> Status {
    match worker {
        Some(name) => Status::deadline_exceeded(format!(
            "the request did not finish within the client's deadline on worker {name}"
        )),
        None => Status::deadline_exceeded(
            "the request's deadline passed while it waited in the scheduler's queue",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_queue_wait_zero_means_no_bound() {
        let dispatcher = |ms: u64| {
            Dispatcher::new(
                Arc::new(Workers::new(1 << 20)),
                Arc::new(Stats::default()),
                Profiles::build(&localml_framework::profile::builtin()).expect("profiles"),
                3,
                16,
                1 << 20,
            )
            .with_max_queue_wait(Duration::from_millis(ms))
        };
        assert_eq!(dispatcher(0).core.max_queue_wait, None);
        assert_eq!(
            dispatcher(1500).core.max_queue_wait,
            Some(Duration::from_millis(1500))
        );
    }

    #[test]
    fn failure_classification() {
        // (code, from the transport, tried on another worker, worker marked unreachable)
        let cases = [
            (Code::Unavailable, true, true, true),
            (Code::Unknown, true, true, true),
            (Code::Cancelled, true, true, true),
            (Code::Internal, true, true, true),
            (Code::Unavailable, false, true, false),
            (Code::ResourceExhausted, false, true, false),
            (Code::NotFound, false, true, false),
            (Code::Internal, false, false, false),
            (Code::InvalidArgument, false, false, false),
            (Code::DeadlineExceeded, false, false, false),
        ];
        for (code, transport, retry, unreach) in cases {
            let mut s = Status::new(code, "x");
            if transport {
                s.set_source(Arc::new(std::io::Error::other("broken pipe")));
            }
            assert_eq!(
                (worker_failed(&s), unreachable(&s)),
                (retry, unreach),
                "{code:?}, transport: {transport}"
            );
        }
    }
}
