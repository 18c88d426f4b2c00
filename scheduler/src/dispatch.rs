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

pub struct Dispatcher {
    pub workers: Arc<Workers>,
    pub stats: Arc<Stats>,
    profiles: Profiles,
    attempts: u32,
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

/// Releases a request's bytes from [`Dispatcher::held_bytes`] however it ends.
struct HeldBytes(Arc<AtomicUsize>, usize);

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

/// What became of one request on its way: the workers it was sent to, the version chosen,
/// and when it left for the last worker tried.
struct Trace {
    tried: usize,
    version: String,
    sent: Option<Instant>,
    /// Whether the queue's expected wait may refuse it (online requests, not jobs).
    bounded: bool,
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
        self.queue.len()
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
            workers,
            stats,
            profiles,
            attempts,
            rotation: AtomicUsize::new(0),
            queue,
            held_bytes: Arc::new(AtomicUsize::new(0)),
            max_held_bytes: max_queued_bytes,
            max_queue_wait: None,
            queue_safety_net: Some(Duration::from_secs(1)),
        }
    }

    /// Queued requests no event woke look again after `net` (zero: never).
    pub fn with_queue_safety_net(mut self, net: Duration) -> Dispatcher {
        self.queue_safety_net = (!net.is_zero()).then_some(net);
        self
    }

    /// Refuses requests whose expected wait in the queue is over `max` (`max_queue_wait_ms`;
    /// zero: no bound). Jobs are not refused: they wait their turn.
    pub fn with_max_queue_wait(mut self, max: Duration) -> Dispatcher {
        self.max_queue_wait = (!max.is_zero()).then_some(max);
        self
    }

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

    /// Takes `bytes` of the byte budget for one request, or says why not.
    fn hold(&self, bytes: usize) -> Result<HeldBytes, DispatchError> {
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

    async fn infer_traced(
        &self,
        request: Forwarded,
        deadline: Option<Instant>,
        tried: &mut usize,
        bounded: bool,
    ) -> Result<Bytes, Status> {
        let started = Instant::now();
        let model = request.head.model_name.clone();
        let mut trace = Trace {
            tried: 0,
            version: request.head.model_version.clone(),
            sent: None,
            bounded,
        };
        let result = match self.hold(request.len()) {
            Ok(_held) => self.infer_with_retries(request, deadline, &mut trace).await,
            Err(full) => Err(full),
        };
        *tried = trace.tried;
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

    /// Queue -> PreFilter/Filter/Score over a fresh snapshot -> Reserve -> Bind
    /// (forward). A worker failure unreserves and re-enters the cycle without that worker.
    async fn infer_with_retries(
        &self,
        request: Forwarded,
        deadline: Option<Instant>,
        trace: &mut Trace,
    ) -> Result<Bytes, DispatchError> {
        let head = &request.head;
        let (profile_name, _) = request_info(head, "")?;
        let profile =
            self.profiles
                .get(&profile_name)
                .ok_or_else(|| DispatchError::UnknownProfile {
                    known: self.profiles.names().join(", "),
                    name: profile_name.clone(),
                })?;
        let (_, arrival) = request_info(head, "")?;
        let queued = QueuedRequest {
            priority: arrival.priority,
            sequence: self.queue.arrive(),
            tenant: arrival.tenant.clone(),
            tenant_in_flight: 0,
        };
        let class = crate::queue::class(&profile_name, &arrival, &head.model_version);
        // Arrivals queue behind requests of their class already waiting, so waiting ones
        // keep their turn.
        let mut wait = self.queue.has_waiting(&class);
        let mut how = if wait {
            Queueing::Behind
        } else {
            Queueing::Busy
        };
        // Whether the queue's expected wait was checked and found acceptable: at once for
        // an arrival that queues behind others, else when it first finds every worker busy.
        let mut admitted = false;
        if wait && trace.bounded {
            if let Ok((version, snapshot, _)) =
                self.workers.snapshot(&head.model_name, &head.model_version)
            {
                let (_, info) = request_info(head, &version)?;
                if let Some(refusal) = self.refuse_to_queue(&snapshot, &info, deadline, true) {
                    return Err(refusal);
                }
                admitted = true;
            }
        }
        let mut tried: Vec<String> = Vec::new();
        // The last worker failure, to say why when the attempts run out.
        let mut last_error: Option<Status> = None;
        let mut attempts = 0;
        // The queue's events when the workers were last looked at.
        let mut seen = self.queue.events();
        let mut baton = Baton {
            queue: &self.queue,
            class: &class,
            waiting: None,
            held: false,
        };
        while attempts < self.attempts {
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
                        // Bounded by the deadline (a job's too: it has no other timer here).
                        let until = deadline.map_or(net, |d| d.min(net));
                        if !baton.wait(turn, until).await
                            && deadline.is_some_and(|d| Instant::now() >= d)
                        {
                            return Err(DispatchError::Request(Status::deadline_exceeded(
                                "the request's deadline passed while it waited in the \
                                 scheduler's queue",
                            )));
                        }
                        how = Queueing::Again;
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
                    Err(lookup) if last_error.is_none() => {
                        return Err(DispatchError::from_lookup(
                            &head.model_name,
                            &head.model_version,
                            lookup,
                        ))
                    }
                    Err(_) => break,
                };
            snapshot.queued = self.queue.len();
            // Whether a worker was lost since this snapshot is seen at dispatch.
            let epochs: Vec<u64> = handles
                .iter()
                .map(|h| h.lost_epoch.load(Ordering::SeqCst))
                .collect();
            trace.version.clone_from(&version);
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
                    if !admitted {
                        if let Some(refusal) =
                            self.refuse_to_queue(&snapshot, &info, deadline, trace.bounded)
                        {
                            return Err(refusal);
                        }
                        admitted = true;
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
                Err(rejection) if last_error.is_none() => {
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
                    });
                }
                Err(_) => break,
            };
            let chosen = &handles[decision.worker];
            tracing::debug!(worker = %chosen.name, score = decision.score, profile = %profile.name, "scheduled");
            tried.push(chosen.id.clone());
            trace.tried = tried.len();
            attempts += 1;
            // Dropped in reverse order: the worker's count falls before the queue is woken,
            // so the waiter woken sees the slot free.
            let _tenant = TenantInFlight::new(&self.queue, &info.tenant, &class);
            chosen.dispatched.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(Arc::clone(&chosen.dispatched));
            // Counted as dispatched first, so the next waiter sees this one's share taken.
            baton.pass();
            let mut forwarded = tonic::Request::new(request.clone());
            if let Some(deadline) = deadline {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    profile.unreserve(&mut state, &info, &snapshot.workers[decision.worker]);
                    break;
                }
                forwarded.set_timeout(remaining.max(Duration::from_millis(1)));
            }
            let mut client = chosen.client.clone();
            let sent = Instant::now();
            trace.sent = Some(sent);
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
            let answer = if chosen.lost_epoch.load(Ordering::SeqCst) != epochs[decision.worker] {
                Err(gone())
            } else {
                tokio::select! {
                    answer = client.model_infer(forwarded) => answer,
                    _ = lost => Err(gone()),
                }
            };
            match answer {
                Ok(response) => {
                    let ms = sent.elapsed().as_secs_f64() * 1e3;
                    chosen.observe_latency(&info.model, &version, ms, self.workers.now_ms());
                    return Ok(response.into_inner());
                }
                // The client's deadline passed while the worker worked (the channel then
                // answers CANCELLED "Timeout expired"): the client's doing, not the
                // worker's; the worker is not marked, nor is the request tried elsewhere.
                Err(status) if deadline.is_some_and(|d| Instant::now() + DEADLINE_SLACK >= d) => {
                    tracing::debug!(worker = %chosen.name, code = ?status.code(), "the client's deadline passed on the worker");
                    return Err(DispatchError::Request(Status::deadline_exceeded(format!(
                        "the request did not finish within the client's deadline on worker {}",
                        chosen.name
                    ))));
                }
                Err(status) if worker_failed(&status) => {
                    tracing::warn!(worker = %chosen.name, code = ?status.code(), message = status.message(), "dispatch failed; trying another worker");
                    profile.unreserve(&mut state, &info, &snapshot.workers[decision.worker]);
                    if unreachable(&status) {
                        self.workers.mark_unreachable(&chosen.id, status.message());
                    }
                    last_error = Some(status);
                }
                Err(status) => return Err(DispatchError::Request(status)),
            }
        }
        Err(match last_error {
            // Every worker tried was unreachable: the cluster cannot serve this now.
            Some(status) if unreachable(&status) => DispatchError::Unreachable {
                model: head.model_name.clone(),
                tried: tried.len(),
                last: status.message().to_string(),
            },
            // The workers answered with an error of their own: keep its code.
            Some(status) => DispatchError::WorkersFailed {
                code: status.code(),
                message: status.message().to_string(),
                tried: tried.len(),
            },
            None => DispatchError::NothingTried(head.model_name.clone()),
        })
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
        assert_eq!(dispatcher(0).max_queue_wait, None);
        assert_eq!(
            dispatcher(1500).max_queue_wait,
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
