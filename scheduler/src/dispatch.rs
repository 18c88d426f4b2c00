//! Sending a request to a worker: pick one, forward, and on a worker failure retry on
//! another within the client's deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use localml_proto::inference::{ModelInferRequest, ModelInferResponse};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::framework::{
    Code as FrameworkCode, CycleState, PrioritySort, ProviderChoice, QueuedRequest, RequestInfo,
};
use crate::plugins::capacity;
use crate::profile::Profiles;
use crate::queue::AdmissionQueue;
use crate::registry::{Lookup, Registry};
use crate::stats::Stats;

pub struct Dispatcher {
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
    profiles: Profiles,
    attempts: u32,
    rotation: AtomicUsize,
    queue: AdmissionQueue,
}

/// Request parameters (OIP `parameters`) that steer scheduling.
pub const PROFILE_PARAMETER: &str = "localml.profile";
pub const PROVIDER_PARAMETER: &str = "localml.provider";
pub const SELECTOR_PARAMETER: &str = "localml.selector";
pub const PRIORITY_PARAMETER: &str = "localml.priority";
pub const TENANT_PARAMETER: &str = "localml.tenant";
pub const POWER_PARAMETER: &str = "localml.power";
/// Response parameter naming the worker that served a request (set by workers).
pub const WORKER_PARAMETER: &str = "localml.worker";

/// The worker that served `response`, when it says.
pub fn served_by(response: &ModelInferResponse) -> Option<String> {
    use localml_proto::inference::infer_parameter::ParameterChoice;
    match response
        .parameters
        .get(WORKER_PARAMETER)?
        .parameter_choice
        .as_ref()?
    {
        ParameterChoice::StringParam(s) => Some(s.clone()),
        _ => None,
    }
}

fn string_parameter(request: &ModelInferRequest, key: &str) -> Result<Option<String>, Status> {
    use localml_proto::inference::infer_parameter::ParameterChoice;
    match request
        .parameters
        .get(key)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => Ok(None),
        Some(ParameterChoice::StringParam(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Status::invalid_argument(format!(
            "parameter '{key}' must be a string"
        ))),
    }
}

/// Reads the scheduling parameters of a request; errors name the parameter.
pub fn request_info(
    request: &ModelInferRequest,
    version: &str,
) -> Result<(String, RequestInfo), Status> {
    use localml_proto::inference::infer_parameter::ParameterChoice;
    let profile = string_parameter(request, PROFILE_PARAMETER)?.unwrap_or_default();
    let provider = match string_parameter(request, PROVIDER_PARAMETER)?.as_deref() {
        None | Some("any") => ProviderChoice::Any,
        Some("gpu") => ProviderChoice::Gpu,
        Some("cpu") => ProviderChoice::Cpu,
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "parameter '{PROVIDER_PARAMETER}' is '{other}'; expected gpu, cpu or any"
            )))
        }
    };
    let mut selector = Vec::new();
    if let Some(text) = string_parameter(request, SELECTOR_PARAMETER)? {
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = pair.split_once('=').filter(|(k, _)| !k.trim().is_empty()) else {
                return Err(Status::invalid_argument(format!(
                    "parameter '{SELECTOR_PARAMETER}' has '{pair}'; expected key=value pairs separated by commas"
                )));
            };
            selector.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let priority = match request
        .parameters
        .get(PRIORITY_PARAMETER)
        .and_then(|p| p.parameter_choice.as_ref())
    {
        None => 0,
        Some(ParameterChoice::Int64Param(p)) => *p,
        Some(ParameterChoice::StringParam(s)) => s.parse().map_err(|_| {
            Status::invalid_argument(format!(
                "parameter '{PRIORITY_PARAMETER}' is '{s}'; expected an integer"
            ))
        })?,
        Some(_) => {
            return Err(Status::invalid_argument(format!(
                "parameter '{PRIORITY_PARAMETER}' must be an integer"
            )))
        }
    };
    let tenant = string_parameter(request, TENANT_PARAMETER)?.unwrap_or_default();
    let mains_only = match string_parameter(request, POWER_PARAMETER)?.as_deref() {
        None | Some("any") | Some("prefer_mains") => false,
        Some("mains_only") => true,
        Some(other) => {
            return Err(Status::invalid_argument(format!(
            "parameter '{POWER_PARAMETER}' is '{other}'; expected any, prefer_mains or mains_only"
        )))
        }
    };
    Ok((
        profile,
        RequestInfo {
            model: request.model_name.clone(),
            version: version.to_string(),
            provider,
            selector,
            priority,
            tenant,
            mains_only,
        },
    ))
}

/// Decrements a worker's dispatched count however the request ends.
struct InFlight(Arc<std::sync::atomic::AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often a queued request looks again without being woken.
const QUEUE_RECHECK: Duration = Duration::from_millis(100);

/// Counts a dispatched request for its tenant; when it ends, the next queued request is
/// woken.
struct TenantInFlight<'a> {
    queue: &'a AdmissionQueue,
    tenant: String,
}

impl<'a> TenantInFlight<'a> {
    fn new(queue: &'a AdmissionQueue, tenant: &str) -> TenantInFlight<'a> {
        queue.started(tenant);
        TenantInFlight {
            queue,
            tenant: tenant.to_string(),
        }
    }
}

impl Drop for TenantInFlight<'_> {
    fn drop(&mut self) {
        self.queue.finished(&self.tenant);
    }
}

/// Whether a failure is the worker's (retry elsewhere) rather than the request's.
fn worker_failed(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::Internal
            | Code::ResourceExhausted
    )
}

/// Whether the failure means the worker could not be reached at all.
fn unreachable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::Cancelled
    )
}

/// Status for a lookup that found no worker.
pub fn lookup_error(model: &str, version: &str, lookup: Lookup) -> Status {
    match lookup {
        Lookup::Found(_) => Status::internal("no worker chosen"),
        Lookup::UnknownModel => {
            Status::not_found(format!("unknown model '{model}': no worker has it loaded"))
        }
        Lookup::UnknownVersion { available } => Status::not_found(format!(
            "model '{model}' has no version '{version}' (available: {})",
            available.join(", ")
        )),
        Lookup::NoReadyWorker { details } => Status::unavailable(format!(
            "no Ready worker can serve model '{model}'{}; workers that have it: {}",
            if version.is_empty() {
                String::new()
            } else {
                format!(" version {version}")
            },
            if details.is_empty() {
                "none".to_string()
            } else {
                details.join(", ")
            }
        )),
    }
}

impl Dispatcher {
    /// Requests waiting in the admission queue.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn new(
        registry: Arc<Registry>,
        stats: Arc<Stats>,
        profiles: Profiles,
        attempts: u32,
        max_queued: usize,
    ) -> Dispatcher {
        Dispatcher {
            registry,
            stats,
            profiles,
            attempts,
            rotation: AtomicUsize::new(0),
            queue: AdmissionQueue::new(max_queued, Box::new(PrioritySort)),
        }
    }

    /// Routes one request; `deadline` is the client's.
    pub async fn infer(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<ModelInferResponse, Status> {
        self.infer_counting(request, deadline, &mut 0).await
    }

    /// [`Dispatcher::infer`], also counting in `tried` the workers the request was sent
    /// to (0: it failed before reaching any).
    pub async fn infer_counting(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
        tried: &mut usize,
    ) -> Result<ModelInferResponse, Status> {
        let started = Instant::now();
        let model = request.model_name.clone();
        let version = request.model_version.clone();
        let result = self.infer_with_retries(request, deadline, tried).await;
        self.stats.record(
            &model,
            &version,
            localml_proto::metrics::result_code(&result),
            started.elapsed(),
        );
        result
    }

    /// Queue -> PreFilter/Filter/Score over a fresh snapshot -> Reserve -> Bind
    /// (forward). A worker failure unreserves and re-enters the cycle without that worker.
    async fn infer_with_retries(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
        tried_count: &mut usize,
    ) -> Result<ModelInferResponse, Status> {
        let (profile_name, _) = request_info(&request, "")?;
        let profile = self.profiles.get(&profile_name).ok_or_else(|| {
            Status::invalid_argument(format!(
                "parameter '{PROFILE_PARAMETER}' names unknown profile '{profile_name}' (profiles: {})",
                self.profiles.names().join(", ")
            ))
        })?;
        let (_, arrival) = request_info(&request, "")?;
        let queued = QueuedRequest {
            priority: arrival.priority,
            sequence: self.queue.arrive(),
            tenant: arrival.tenant.clone(),
            tenant_in_flight: 0,
        };
        // Arrivals queue behind requests already waiting, so waiting ones keep their turn.
        let mut wait = !self.queue.is_empty();
        let mut tried: Vec<String> = Vec::new();
        let mut last_error: Option<Status> = None;
        let mut attempts = 0;
        while attempts < self.attempts {
            if std::mem::take(&mut wait) {
                let turn = self.queue.enqueue(queued.clone()).map_err(|full| {
                    Status::resource_exhausted(format!(
                        "the scheduler's queue is full ({} requests wait for a free worker); try again later",
                        full.0
                    ))
                })?;
                // Woken when capacity frees; also look again now and then, as workers
                // report and join.
                let _ = tokio::time::timeout(QUEUE_RECHECK, turn).await;
            }
            let (version, snapshot, handles) = match self
                .registry
                .snapshot(&request.model_name, &request.model_version)
            {
                Ok(found) => found,
                Err(lookup) if last_error.is_none() => {
                    return Err(lookup_error(
                        &request.model_name,
                        &request.model_version,
                        lookup,
                    ))
                }
                Err(_) => break,
            };
            let (_, info) = request_info(&request, &version)?;
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
                // Every feasible worker is busy: wait in the queue for a turn.
                Err(rejection) if capacity::all_busy(&rejection) => {
                    wait = true;
                    continue;
                }
                Err(rejection) if last_error.is_none() => {
                    return Err(match rejection.code {
                        FrameworkCode::UnschedulableAndUnresolvable => {
                            Status::failed_precondition(format!(
                                "model '{}' version {version}: {}",
                                info.model, rejection.message
                            ))
                        }
                        _ => Status::unavailable(format!(
                            "model '{}' version {version}: {}",
                            info.model, rejection.message
                        )),
                    })
                }
                Err(_) => break,
            };
            let chosen = &handles[decision.worker];
            tracing::debug!(worker = %chosen.name, score = decision.score, profile = %profile.name, "scheduled");
            tried.push(chosen.id.clone());
            *tried_count = tried.len();
            attempts += 1;
            chosen.dispatched.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(Arc::clone(&chosen.dispatched));
            let _tenant = TenantInFlight::new(&self.queue, &info.tenant);
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
            match client.model_infer(forwarded).await {
                Ok(response) => {
                    let ms = sent.elapsed().as_secs_f64() * 1e3;
                    chosen.observe_latency(&info.model, &version, ms, self.registry.now_ms());
                    return Ok(response.into_inner());
                }
                Err(status) if worker_failed(&status) => {
                    tracing::warn!(worker = %chosen.name, code = ?status.code(), message = status.message(), "dispatch failed; trying another worker");
                    profile.unreserve(&mut state, &info, &snapshot.workers[decision.worker]);
                    if unreachable(&status) {
                        self.registry.mark_unreachable(&chosen.id, status.message());
                    }
                    last_error = Some(status);
                }
                Err(status) => return Err(status),
            }
        }
        Err(match last_error {
            // Every worker tried was unreachable: the cluster cannot serve this now.
            Some(status) if unreachable(&status) => Status::unavailable(format!(
                "no worker could serve model '{}' after {} attempt(s); last error: {}",
                request.model_name,
                tried.len(),
                status.message()
            )),
            // The workers answered with an error of their own: keep its code.
            Some(status) => Status::new(
                status.code(),
                format!("{} (tried {} worker(s))", status.message(), tried.len()),
            ),
            None => Status::unavailable(format!(
                "no Ready worker can serve model '{}'",
                request.model_name
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_classification() {
        let cases = [
            (Code::Unavailable, true, true),
            (Code::Unknown, true, true),
            (Code::ResourceExhausted, true, false),
            (Code::Internal, true, false),
            (Code::InvalidArgument, false, false),
            (Code::NotFound, false, false),
            (Code::DeadlineExceeded, false, false),
        ];
        for (code, retry, unreach) in cases {
            let s = Status::new(code, "x");
            assert_eq!(
                (worker_failed(&s), unreachable(&s)),
                (retry, unreach),
                "{code:?}"
            );
        }
    }
}
