//! The scheduler's `/metrics`, `/healthz` and `/readyz` (`--http-listen`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use localml_proto::localml::v1::{PowerSource, WorkerState};
use localml_serving::metrics::{Exposition, Kind};

use crate::dispatch::Dispatcher;

pub struct SchedulerProbe {
    pub dispatcher: Arc<Dispatcher>,
    /// This replica leads (runs the job dispatcher and the deployment controller).
    pub leading: Arc<AtomicBool>,
    /// The store answered the last check.
    pub store_ok: Arc<AtomicBool>,
    pub backend: &'static str,
    /// Shown on `/readyz` while ready too (an insecure client listener).
    pub warnings: Vec<String>,
}

fn state_label(state: i32) -> &'static str {
    match WorkerState::try_from(state) {
        Ok(WorkerState::Ready) => "ready",
        Ok(WorkerState::NotReady) => "not_ready",
        Ok(WorkerState::Draining) => "draining",
        _ => "unknown",
    }
}

fn source_label(source: i32) -> &'static str {
    match PowerSource::try_from(source) {
        Ok(PowerSource::Mains) => "mains",
        Ok(PowerSource::Battery) => "battery",
        Ok(PowerSource::Ups) => "ups",
        _ => "unknown",
    }
}

impl localml_serving::http::Probe for SchedulerProbe {
    fn not_ready(&self) -> Option<String> {
        (!self.store_ok.load(Ordering::Relaxed))
            .then(|| format!("the {} state store does not answer", self.backend))
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }

    fn metrics(&self) -> String {
        let mut e = Exposition::default();
        let series = self.dispatcher.stats.series();
        e.family(
            "localml_scheduler_requests_total",
            Kind::Counter,
            "Inference requests the scheduler answered, by model and gRPC status code.",
        );
        for (model, codes, _) in &series {
            let mut codes: Vec<_> = codes.iter().collect();
            codes.sort();
            for (code, n) in codes {
                e.sample(&[("model", model), ("code", code)], *n as f64);
            }
        }
        e.family(
            "localml_scheduler_request_duration_seconds",
            Kind::Histogram,
            "Latency of successful inference requests through the scheduler, by model.",
        );
        for (model, _, latency) in &series {
            e.histogram(&[("model", model)], latency);
        }
        e.family(
            "localml_scheduler_queue_depth",
            Kind::Gauge,
            "Requests waiting in the scheduler for a free worker.",
        )
        .sample(&[], self.dispatcher.queued() as f64);
        let workers = self.dispatcher.workers.list(tokio::time::Instant::now());
        let in_flight: u32 = workers.iter().map(|w| w.dispatched_in_flight).sum();
        e.family(
            "localml_scheduler_in_flight_requests",
            Kind::Gauge,
            "Requests dispatched to workers and not yet answered.",
        )
        .sample(&[], f64::from(in_flight));
        e.family(
            "localml_scheduler_leader",
            Kind::Gauge,
            "1 while this replica is the leader.",
        )
        .sample(
            &[],
            if self.leading.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        );
        e.family("localml_workers", Kind::Gauge, "Workers by state.");
        for state in ["ready", "not_ready", "draining"] {
            let n = workers
                .iter()
                .filter(|w| state_label(w.state) == state)
                .count();
            e.sample(&[("state", state)], n as f64);
        }
        let per_worker: Vec<(String, &localml_proto::localml::v1::WorkerInfo)> = workers
            .iter()
            .filter_map(|w| w.status.as_ref().map(|s| (s.name.clone(), w)))
            .collect();
        let gauge =
            |e: &mut Exposition,
             name: &str,
             help: &str,
             value: &dyn Fn(&localml_proto::localml::v1::WorkerInfo) -> Option<f64>| {
                e.family(name, Kind::Gauge, help);
                for (worker, info) in &per_worker {
                    if let Some(v) = value(info) {
                        e.sample(&[("worker", worker)], v);
                    }
                }
            };
        gauge(
            &mut e,
            "localml_worker_memory_total_bytes",
            "Worker RAM, as last reported.",
            &|w| w.status.as_ref().map(|s| s.ram_total_bytes as f64),
        );
        gauge(
            &mut e,
            "localml_worker_memory_free_bytes",
            "Worker free RAM, as last reported.",
            &|w| w.status.as_ref().map(|s| s.ram_free_bytes as f64),
        );
        gauge(
            &mut e,
            "localml_worker_gpu_memory_free_bytes",
            "Free GPU memory summed over the worker's GPUs.",
            &|w| {
                w.status
                    .as_ref()
                    .filter(|s| !s.gpus.is_empty())
                    .map(|s| s.gpus.iter().map(|g| g.memory_free_bytes as f64).sum())
            },
        );
        gauge(
            &mut e,
            "localml_worker_battery_percent",
            "Battery charge of workers that report one.",
            &|w| {
                w.status
                    .as_ref()
                    .and_then(|s| s.power.as_ref())
                    .and_then(|p| p.battery_percent)
                    .map(f64::from)
            },
        );
        gauge(
            &mut e,
            "localml_worker_in_flight_requests",
            "Requests this scheduler dispatched to the worker and not yet answered.",
            &|w| Some(f64::from(w.dispatched_in_flight)),
        );
        gauge(
            &mut e,
            "localml_worker_queue_depth",
            "Requests waiting on the worker, summed over its models.",
            &|w| {
                w.status
                    .as_ref()
                    .map(|s| s.models.iter().map(|m| f64::from(m.queue_depth)).sum())
            },
        );
        e.family(
            "localml_worker_power_source",
            Kind::Gauge,
            "1 for the power source each worker runs on (mains, battery, ups, unknown).",
        );
        for (worker, info) in &per_worker {
            let source = info
                .status
                .as_ref()
                .and_then(|s| s.power.as_ref())
                .map(|p| p.source)
                .unwrap_or_default();
            e.sample(&[("worker", worker), ("source", source_label(source))], 1.0);
        }
        e.finish()
    }
}

/// Keeps `ok` equal to whether the store answers, checking every two seconds.
pub async fn watch_store(
    store: Arc<dyn localml_store::Store>,
    ok: Arc<AtomicBool>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let answered = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            store.get(crate::leader::LEADER_KEY),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        ok.store(answered, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
