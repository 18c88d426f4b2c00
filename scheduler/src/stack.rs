//! The dispatch stack: how a request goes from the client to a worker, as `tower` layers
//! composed in one place ([`stack`]). Outermost first:
//!
//! 1. [`Deadline`]: the client's deadline (capped at a day) bounds everything below; when
//!    it passes, what is under way is dropped (a queued request leaves the queue and
//!    passes its turn on, a call on a worker is cancelled there) and the client gets
//!    DEADLINE_EXCEEDED saying where it was.
//! 2. [`HoldBytes`]: load shedding by size: the request's bytes are held against
//!    `max_queued_bytes` until it ends; over it, RESOURCE_EXHAUSTED at once.
//! 3. `tower::retry::Retry` with [`WorkerFailures`]: a worker's failure (unreachable,
//!    busy, draining, no longer holding the model, lost while it held the request) sends
//!    the request to another worker, at most `dispatch_attempts` workers in all and within
//!    a retry budget shared by all requests ([`retry_budget`]), so a cluster in trouble
//!    is not flooded with retries. A worker's own answer about the request, the client's
//!    deadline and refusals are never retried.
//! 4. [`Attempt`]: the scheduling decision: the admission queue (the concurrency limit:
//!    a request waits while every feasible worker has its sessions' worth; refused at once
//!    when the queue is full or its expected wait is over `max_queue_wait_ms` or the
//!    deadline), the framework's cycle over a fresh snapshot, and the call to the worker
//!    chosen ([`crate::dispatch::Core::attempt`]).
//!
//! Statistics are recorded around the stack ([`crate::dispatch::Dispatcher`]), once per
//! request whatever layer ended it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tower::retry::budget::{Budget, TpsBudget};
use tower::retry::{Policy, RetryLayer};
use tower::{Layer, Service, ServiceBuilder};

use crate::dispatch::{past_deadline, AttemptError, Core, DispatchError, Routed};

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The stack for one request over `core`: at most `attempts` workers, retries drawn from
/// `budget`.
pub(crate) fn stack(
    core: Arc<Core>,
    attempts: u32,
    budget: Arc<TpsBudget>,
) -> impl Service<
    Routed,
    Response = Bytes,
    Error = AttemptError,
    Future = BoxFuture<Result<Bytes, AttemptError>>,
> {
    ServiceBuilder::new()
        .layer(DeadlineLayer)
        .layer(HoldBytesLayer(Arc::clone(&core)))
        .layer(RetryLayer::new(WorkerFailures {
            retries_left: attempts.saturating_sub(1),
            budget,
            core: Arc::clone(&core),
        }))
        .service(Attempt(core))
}

/// Retries for the whole scheduler (tower's `TpsBudget`): one retry for every five
/// requests served over the last 10 s, plus a reserve of 10 a second over those 10 s
/// (100), so a worker lost under light load, even with 100 requests in flight on it,
/// still has them all moved, while a cluster that fails most calls is not sent five
/// times the load.
pub(crate) fn retry_budget() -> Arc<TpsBudget> {
    Arc::new(TpsBudget::new(Duration::from_secs(10), 10, 0.2))
}

/// Layer 1: the client's deadline.
#[derive(Clone, Copy)]
pub(crate) struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline(inner)
    }
}

#[derive(Clone)]
pub(crate) struct Deadline<S>(S);

impl<S> Service<Routed> for Deadline<S>
where
    S: Service<Routed, Response = Bytes, Error = AttemptError>,
    S::Future: Send + 'static,
{
    type Response = Bytes;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Bytes, AttemptError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed) -> Self::Future {
        // Capped as at the edge (a day), whatever the caller passed; a request without a
        // deadline keeps none below (no timeout sent to the worker, none compared with
        // the queue's expected wait).
        let cap = Instant::now() + localml_serving::service::MAX_REQUEST_TIMEOUT;
        let deadline = routed.deadline.map_or(cap, |d| d.min(cap));
        let trace = Arc::clone(&routed.trace);
        let inner = self.0.call(routed);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, inner).await {
                Ok(result) => result,
                Err(_) => {
                    let trace = trace.lock().unwrap_or_else(|e| e.into_inner());
                    Err(AttemptError::Final(DispatchError::Request(past_deadline(
                        trace.at_worker.as_deref(),
                    ))))
                }
            }
        })
    }
}

/// Layer 2: the byte budget.
#[derive(Clone)]
pub(crate) struct HoldBytesLayer(Arc<Core>);

impl<S> Layer<S> for HoldBytesLayer {
    type Service = HoldBytes<S>;
    fn layer(&self, inner: S) -> HoldBytes<S> {
        HoldBytes {
            core: Arc::clone(&self.0),
            inner,
        }
    }
}

#[derive(Clone)]
pub(crate) struct HoldBytes<S> {
    core: Arc<Core>,
    inner: S,
}

impl<S> Service<Routed> for HoldBytes<S>
where
    S: Service<Routed, Response = Bytes, Error = AttemptError>,
    S::Future: Send + 'static,
{
    type Response = Bytes;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Bytes, AttemptError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, routed: Routed) -> Self::Future {
        match self.core.hold(routed.request.len()) {
            Err(full) => Box::pin(std::future::ready(Err(full.into()))),
            Ok(held) => {
                let inner = self.inner.call(routed);
                Box::pin(async move {
                    let _held = held;
                    inner.await
                })
            }
        }
    }
}

/// Layer 3's policy: which failures go to another worker, how many times, and the budget.
#[derive(Clone)]
pub(crate) struct WorkerFailures {
    retries_left: u32,
    budget: Arc<TpsBudget>,
    /// To see whether another worker could take it at all (else no token is spent).
    core: Arc<Core>,
}

impl Policy<Routed, Bytes, AttemptError> for WorkerFailures {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        routed: &mut Routed,
        result: &mut Result<Bytes, AttemptError>,
    ) -> Option<Self::Future> {
        match result {
            Ok(_) => {
                self.budget.deposit();
                None
            }
            Err(AttemptError::Worker)
                if self.retries_left > 0 && self.core.untried_worker(routed) =>
            {
                if !self.budget.withdraw() {
                    tracing::warn!(
                        "retry budget spent: the request ends with its worker's failure"
                    );
                    return None;
                }
                self.retries_left -= 1;
                Some(std::future::ready(()))
            }
            Err(_) => None,
        }
    }

    fn clone_request(&mut self, routed: &Routed) -> Option<Routed> {
        // Cheap: the request's bytes are shared, the trace is shared on purpose.
        Some(routed.clone())
    }
}

/// Layer 4: one attempt ([`Core::attempt`]).
#[derive(Clone)]
pub(crate) struct Attempt(Arc<Core>);

impl Service<Routed> for Attempt {
    type Response = Bytes;
    type Error = AttemptError;
    type Future = BoxFuture<Result<Bytes, AttemptError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), AttemptError>> {
        // Capacity is the queue's business, inside the call: a request that must wait
        // waits there, in its turn.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, routed: Routed) -> Self::Future {
        let core = Arc::clone(&self.0);
        Box::pin(async move { core.attempt(routed).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::Trace;
    use crate::forward::Forwarded;
    use localml_proto::inference::ModelInferRequest;

    fn routed(deadline: Option<Instant>) -> Routed {
        Routed {
            request: Forwarded::from_request(&ModelInferRequest {
                model_name: "m".into(),
                ..Default::default()
            }),
            deadline,
            bounded: true,
            sequence: 0,
            trace: Arc::new(std::sync::Mutex::new(Trace::default())),
        }
    }

    /// A policy over a scheduler that knows two workers with model `m`; their ids.
    fn policy(retries_left: u32, budget: TpsBudget) -> (WorkerFailures, Vec<String>) {
        use localml_proto::localml::v1 as pb;
        let workers = Arc::new(crate::workers::Workers::new(1 << 20));
        let ids = ["a", "b"]
            .iter()
            .map(|name| {
                workers.join(
                    pb::WorkerStatus {
                        name: name.to_string(),
                        inference_address: "127.0.0.1:1".into(),
                        models: vec![pb::LoadedModel {
                            name: "m".into(),
                            version: "1".into(),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    Instant::now(),
                )
            })
            .collect();
        let dispatcher = crate::dispatch::Dispatcher::new(
            workers,
            Arc::new(crate::stats::Stats::default()),
            localml_framework::profile::Profiles::build(&localml_framework::profile::builtin())
                .expect("profiles"),
            3,
            16,
            1 << 20,
        );
        let policy = WorkerFailures {
            retries_left,
            budget: Arc::new(budget),
            core: Arc::clone(dispatcher.core()),
        };
        (policy, ids)
    }

    #[tokio::test]
    async fn only_worker_failures_are_retried_within_the_attempts_and_the_budget() {
        let mut r = routed(None);
        let worker = || Err(AttemptError::Worker);
        // Two retries, then no more.
        let (mut p, _) = policy(2, TpsBudget::new(Duration::from_secs(10), 10, 0.2));
        assert!(p.retry(&mut r, &mut worker()).is_some());
        assert!(p.retry(&mut r, &mut worker()).is_some());
        assert!(p.retry(&mut r, &mut worker()).is_none(), "attempts spent");
        // Never: the request's own end, or nothing left to try.
        let (mut p, ids) = policy(2, TpsBudget::new(Duration::from_secs(10), 10, 0.2));
        let mut answer = Err(AttemptError::Final(DispatchError::Request(
            tonic::Status::internal("onnx runtime failed"),
        )));
        assert!(p.retry(&mut r, &mut answer).is_none());
        assert!(p.retry(&mut r, &mut Err(AttemptError::Exhausted)).is_none());
        assert!(p.retry(&mut r, &mut Ok(Bytes::new())).is_none());
        // Every worker with the model tried: no retry, and no token spent on it.
        r.trace().tried = ids;
        assert!(p.retry(&mut r, &mut worker()).is_none(), "no other worker");
        r.trace().tried.clear();
        // A spent budget stops retries however many attempts are left.
        let (mut p, _) = policy(5, TpsBudget::new(Duration::from_secs(1), 2, 0.0));
        let mut allowed = 0;
        while p.retry(&mut r, &mut worker()).is_some() {
            allowed += 1;
            assert!(allowed <= 5, "the attempts bound it anyway");
        }
        assert!(allowed < 5, "the budget ran out first ({allowed} retries)");
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_layer_ends_a_request_where_it_is() {
        use tower::ServiceExt;
        let never =
            tower::service_fn(|_: Routed| std::future::pending::<Result<Bytes, AttemptError>>());
        // Queued (not on a worker) when the deadline passes.
        let r = routed(Some(Instant::now() + Duration::from_millis(50)));
        let err = DeadlineLayer
            .layer(never)
            .oneshot(r)
            .await
            .expect_err("deadline");
        let AttemptError::Final(DispatchError::Request(status)) = err else {
            panic!("{err:?}");
        };
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        assert!(status.message().contains("scheduler's queue"), "{status:?}");
        // On a worker: the message names it.
        let r = routed(Some(Instant::now() + Duration::from_millis(50)));
        r.trace().at_worker = Some("lab-pc-2".into());
        let err = DeadlineLayer
            .layer(never)
            .oneshot(r)
            .await
            .expect_err("deadline");
        let AttemptError::Final(DispatchError::Request(status)) = err else {
            panic!("{err:?}");
        };
        assert!(
            status.message().contains("on worker lab-pc-2"),
            "{status:?}"
        );
        // No deadline: capped at a day, not unbounded.
        let started = Instant::now();
        let err = DeadlineLayer
            .layer(never)
            .oneshot(routed(None))
            .await
            .expect_err("cap");
        assert!(matches!(
            err,
            AttemptError::Final(DispatchError::Request(_))
        ));
        assert_eq!(
            Instant::now() - started,
            localml_serving::service::MAX_REQUEST_TIMEOUT
        );
    }
}
