//! `kubectl localml top`: a live full-screen view of the cluster. Each frame comes from
//! two readings (ListWorkers, ListModels) an interval apart: rates and latency percentiles
//! are over that interval, not since start.
//!
//! [`View::from_readings`] computes a frame's numbers without any I/O (here); [`draw`]
//! lays them out with ratatui widgets and [`run`] owns the terminal (alternate screen, raw
//! mode) and hands it back on every way out (in `screen`).

use std::collections::HashMap;
use std::time::Duration;

use crate::client::Connection;
use localml_proto::localml::v1::admin_client::AdminClient;
use localml_proto::localml::v1::{
    ListModelsRequest, ListWorkersRequest, ModelInfo, WorkerInfo, WorkerState,
};
use localml_serving::metrics::quantile;

mod screen;

pub use screen::{bar, draw, run, text_frame, DashboardError};

/// One reading of the cluster.
#[derive(Clone, Default)]
pub struct Reading {
    pub workers: Vec<WorkerInfo>,
    pub models: Vec<ModelInfo>,
}

/// Takes one reading: the workers, then the models.
pub async fn read(admin: &mut AdminClient<Connection>) -> Result<Reading, tonic::Status> {
    Ok(Reading {
        workers: admin
            .list_workers(ListWorkersRequest {})
            .await?
            .into_inner()
            .workers,
        models: admin
            .list_models(ListModelsRequest {})
            .await?
            .into_inner()
            .models,
    })
}

/// Memory in use out of a total, in bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub used: u64,
    pub total: u64,
}

impl Usage {
    /// `None` when nothing is known (a total of 0).
    fn of(total: u64, free: u64) -> Option<Usage> {
        (total > 0).then(|| Usage {
            used: total.saturating_sub(free),
            total,
        })
    }

    pub fn fraction(&self) -> f64 {
        self.used as f64 / self.total as f64
    }
}

/// A worker's line of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerLine {
    pub name: String,
    pub state: &'static str,
    pub ram: Option<Usage>,
    /// Summed over the worker's GPUs; `None` without a GPU.
    pub gpu: Option<Usage>,
    /// Source, UPS and its state, battery charge and runtime.
    pub power: String,
    /// Power draw and joules per inference (see `table::energy_cell`).
    pub energy: String,
    pub queue: u32,
    pub in_flight: u32,
    /// Inferences per second over the interval.
    pub rate: f64,
}

/// A model version's line of a frame.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelLine {
    pub name: String,
    pub version: String,
    /// Requests (succeeded and failed) per second over the interval.
    pub rate: f64,
    /// Latency percentiles over the interval, in seconds; `None` without requests.
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    /// Failed requests over the interval.
    pub errors: u64,
    pub workers: Vec<String>,
}

/// The numbers of one frame.
#[derive(Debug, Clone, PartialEq)]
pub struct View {
    /// What is being watched (the scheduler's address).
    pub title: String,
    pub ready: usize,
    pub workers_total: usize,
    pub workers: Vec<WorkerLine>,
    pub models: Vec<ModelLine>,
}

fn power(w: &WorkerInfo) -> String {
    let p = w
        .status
        .as_ref()
        .and_then(|s| s.power.clone())
        .unwrap_or_default();
    match crate::table::battery_cell(&p).as_str() {
        "-" => crate::table::power_cell(&p),
        battery => format!("{} {battery}", crate::table::power_cell(&p)),
    }
}

fn state(w: &WorkerInfo) -> &'static str {
    match (WorkerState::try_from(w.state), w.cordoned) {
        (Ok(WorkerState::Ready), true) => "Cordoned",
        (Ok(WorkerState::Ready), false) => "Ready",
        (Ok(WorkerState::NotReady), _) => "NotReady",
        (Ok(WorkerState::Draining), _) => "Draining",
        _ => "Unknown",
    }
}

fn worker_inferences(w: &WorkerInfo) -> u64 {
    w.status
        .as_ref()
        .map(|s| s.models.iter().map(|m| m.inference_count).sum())
        .unwrap_or(0)
}

impl View {
    /// The frame for the previous and the current reading, `elapsed` apart.
    pub fn from_readings(
        previous: &Reading,
        current: &Reading,
        elapsed: Duration,
        title: &str,
    ) -> View {
        let dt = elapsed.as_secs_f64().max(1e-3);
        let before: HashMap<&str, u64> = previous
            .workers
            .iter()
            .filter_map(|w| {
                w.status
                    .as_ref()
                    .map(|s| (s.name.as_str(), worker_inferences(w)))
            })
            .collect();
        let workers = current
            .workers
            .iter()
            .filter_map(|w| {
                let s = w.status.as_ref()?;
                let (gpu_total, gpu_free) = s.gpus.iter().fold((0u64, 0u64), |(t, f), g| {
                    (t + g.memory_total_bytes, f + g.memory_free_bytes)
                });
                Some(WorkerLine {
                    name: s.name.clone(),
                    state: state(w),
                    ram: Usage::of(s.ram_total_bytes, s.ram_free_bytes),
                    gpu: Usage::of(gpu_total, gpu_free),
                    power: power(w),
                    energy: crate::table::energy_cell(s),
                    queue: s.models.iter().map(|m| m.queue_depth).sum(),
                    in_flight: w.dispatched_in_flight,
                    rate: before
                        .get(s.name.as_str())
                        .map(|b| worker_inferences(w).saturating_sub(*b) as f64 / dt)
                        .unwrap_or(0.0),
                })
            })
            .collect();
        let models = current
            .models
            .iter()
            .map(|m| {
                let prev = previous
                    .models
                    .iter()
                    .find(|p| p.name == m.name && p.version == m.version);
                let delta: Vec<u64> = match prev {
                    Some(p) if p.latency_cumulative.len() == m.latency_cumulative.len() => m
                        .latency_cumulative
                        .iter()
                        .zip(&p.latency_cumulative)
                        .map(|(c, b)| c.saturating_sub(*b))
                        .collect(),
                    _ => m.latency_cumulative.clone(),
                };
                let ok =
                    m.requests_ok - prev.map(|p| p.requests_ok).unwrap_or(0).min(m.requests_ok);
                let failed = m.requests_failed
                    - prev
                        .map(|p| p.requests_failed)
                        .unwrap_or(0)
                        .min(m.requests_failed);
                let q = |x| quantile(&m.latency_bounds_seconds, &delta, x);
                ModelLine {
                    name: m.name.clone(),
                    version: m.version.clone(),
                    rate: (ok + failed) as f64 / dt,
                    p50: q(0.5),
                    p90: q(0.9),
                    p99: q(0.99),
                    errors: failed,
                    workers: m.ready_workers.clone(),
                }
            })
            .collect();
        View {
            title: title.to_string(),
            ready: current
                .workers
                .iter()
                .filter(|w| w.state == WorkerState::Ready as i32)
                .count(),
            workers_total: current.workers.len(),
            workers,
            models,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_proto::localml::v1::{Gpu, LoadedModel, PowerSource, PowerStatus, WorkerStatus};

    pub(super) fn worker(name: &str, inferences: u64) -> WorkerInfo {
        WorkerInfo {
            state: WorkerState::Ready as i32,
            dispatched_in_flight: 2,
            status: Some(WorkerStatus {
                name: name.into(),
                ram_total_bytes: 8 << 30,
                ram_free_bytes: 2 << 30,
                gpus: vec![Gpu {
                    memory_total_bytes: 16 << 30,
                    memory_free_bytes: 12 << 30,
                    ..Default::default()
                }],
                power: Some(PowerStatus {
                    source: PowerSource::Battery as i32,
                    battery_percent: Some(64.0),
                    origin: "sysfs".into(),
                    ups: "ups1@10.0.0.5".into(),
                    ups_status: "OB DISCHRG".into(),
                    battery_runtime_seconds: Some(1230),
                    power_watts: Some(31.5),
                    ..Default::default()
                }),
                models: vec![LoadedModel {
                    name: "m".into(),
                    version: "1".into(),
                    inference_count: inferences,
                    queue_depth: 3,
                    joules_per_inference: 0.125,
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn model(ok: u64, cumulative: Vec<u64>) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            version: "1".into(),
            ready_workers: vec!["pc1".into()],
            requests_ok: ok,
            latency_bounds_seconds: vec![0.001, 0.01, 0.1],
            latency_cumulative: cumulative,
            ..Default::default()
        }
    }

    /// 50 more requests in 2 s, all between 1 and 10 ms.
    pub(super) fn two_readings() -> (Reading, Reading) {
        (
            Reading {
                workers: vec![worker("pc1", 100)],
                models: vec![model(100, vec![100, 100, 100, 100])],
            },
            Reading {
                workers: vec![worker("pc1", 150)],
                models: vec![model(150, vec![100, 150, 150, 150])],
            },
        )
    }

    #[test]
    fn a_view_holds_usage_power_rates_and_recent_percentiles() {
        let (previous, current) = two_readings();
        let view = View::from_readings(&previous, &current, Duration::from_secs(2), "test");
        assert_eq!((view.ready, view.workers_total), (1, 1));
        let w = &view.workers[0];
        assert_eq!(
            w.ram,
            Some(Usage {
                used: 6 << 30,
                total: 8 << 30
            })
        );
        assert_eq!(
            w.gpu,
            Some(Usage {
                used: 4 << 30,
                total: 16 << 30
            })
        );
        assert_eq!(
            w.power,
            "battery (UPS ups1@10.0.0.5 OB DISCHRG) 64% 20m left"
        );
        assert_eq!(w.energy, "31.5 W 0.1250 J/inf");
        assert_eq!((w.queue, w.in_flight), (3, 2));
        assert_eq!(w.rate, 25.0, "50 inferences in 2 s");
        let m = &view.models[0];
        assert_eq!(m.rate, 25.0, "50 requests in 2 s");
        // Recent requests are all in (1, 10] ms: p50 5.5 ms by interpolation.
        let p50 = m.p50.expect("p50");
        assert!((p50 - 0.0055).abs() < 1e-9, "{p50}");
        assert_eq!(m.errors, 0);
    }
}
