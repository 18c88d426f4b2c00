//! Sending a request to a worker: pick one, forward, and on a worker failure retry on
//! another within the client's deadline.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use localml_proto::inference::{ModelInferRequest, ModelInferResponse};
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::registry::{Lookup, Registry};
use crate::routing::least_in_flight;
use crate::stats::Stats;

pub struct Dispatcher {
    pub registry: Arc<Registry>,
    pub stats: Arc<Stats>,
    attempts: u32,
    rotation: AtomicUsize,
}

/// Decrements a worker's dispatched count however the request ends.
struct InFlight(Arc<std::sync::atomic::AtomicU32>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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
    pub fn new(registry: Arc<Registry>, stats: Arc<Stats>, attempts: u32) -> Dispatcher {
        Dispatcher {
            registry,
            stats,
            attempts,
            rotation: AtomicUsize::new(0),
        }
    }

    /// Routes one request; `deadline` is the client's.
    pub async fn infer(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<ModelInferResponse, Status> {
        let started = Instant::now();
        let model = request.model_name.clone();
        let version = request.model_version.clone();
        let result = self.infer_with_retries(request, deadline).await;
        self.stats
            .record(&model, &version, result.is_ok(), started.elapsed());
        result
    }

    async fn infer_with_retries(
        &self,
        request: ModelInferRequest,
        deadline: Option<Instant>,
    ) -> Result<ModelInferResponse, Status> {
        let mut tried: HashSet<String> = HashSet::new();
        let mut last_error: Option<Status> = None;
        for _ in 0..self.attempts {
            let candidates = match self
                .registry
                .lookup(&request.model_name, &request.model_version)
            {
                Lookup::Found(c) => c,
                other if last_error.is_none() => {
                    return Err(lookup_error(
                        &request.model_name,
                        &request.model_version,
                        other,
                    ))
                }
                _ => break,
            };
            let loads: Vec<(u32, bool)> = candidates
                .iter()
                .map(|c| (c.dispatched.load(Ordering::Relaxed), tried.contains(&c.id)))
                .collect();
            let rotation = self.rotation.fetch_add(1, Ordering::Relaxed);
            let Some(index) = least_in_flight(&loads, rotation) else {
                break;
            };
            let chosen = &candidates[index];
            tried.insert(chosen.id.clone());
            chosen.dispatched.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(Arc::clone(&chosen.dispatched));
            let mut forwarded = tonic::Request::new(request.clone());
            if let Some(deadline) = deadline {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    break;
                }
                forwarded.set_timeout(remaining.max(Duration::from_millis(1)));
            }
            let mut client = chosen.client.clone();
            match client.model_infer(forwarded).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if worker_failed(&status) => {
                    tracing::warn!(worker = %chosen.name, code = ?status.code(), message = status.message(), "dispatch failed; trying another worker");
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
