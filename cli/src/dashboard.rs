//! `kubectl localml top`: a live full-screen view of the cluster. Each frame comes from
//! two readings (ListWorkers, ListModels) a second apart: rates and latency percentiles
//! are over that interval, not since start.

use std::collections::HashMap;
use std::time::Duration;

use localml_proto::localml::v1::{ModelInfo, PowerSource, WorkerInfo, WorkerState};
use localml_serving::metrics::quantile;

/// One reading of the cluster.
#[derive(Clone, Default)]
pub struct Reading {
    pub workers: Vec<WorkerInfo>,
    pub models: Vec<ModelInfo>,
}

/// A horizontal bar: `[#####.....]`, `fraction` of `width` filled.
pub fn bar(fraction: f64, width: usize) -> String {
    let filled = ((fraction.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled))
}

fn gib(bytes: u64) -> String {
    format!("{:.1}G", bytes as f64 / (1u64 << 30) as f64)
}

fn power(w: &WorkerInfo) -> String {
    let p = w
        .status
        .as_ref()
        .and_then(|s| s.power.clone())
        .unwrap_or_default();
    let source = match PowerSource::try_from(p.source) {
        Ok(PowerSource::Mains) => "mains",
        Ok(PowerSource::Battery) => "battery",
        Ok(PowerSource::Ups) => "ups",
        _ => "-",
    };
    match p.battery_percent {
        Some(pct) => format!("{source} {pct:.0}%"),
        None => source.to_string(),
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

fn ms(seconds: Option<f64>) -> String {
    match seconds {
        Some(s) => format!("{:.1}", s * 1e3),
        None => "-".into(),
    }
}

/// Renders a frame from the previous and the current reading, `elapsed` apart.
pub fn render(previous: &Reading, current: &Reading, elapsed: Duration, title: &str) -> String {
    let dt = elapsed.as_secs_f64().max(1e-3);
    let mut out = Vec::new();
    let ready = current
        .workers
        .iter()
        .filter(|w| w.state == WorkerState::Ready as i32)
        .count();
    out.push(format!(
        "localml top - {title} - {ready}/{} workers ready, {} model versions   (Ctrl-C quits)",
        current.workers.len(),
        current.models.len()
    ));
    out.push(String::new());
    out.push(format!(
        "{:<18} {:<9} {:<24} {:<24} {:<13} {:>5} {:>8} {:>7}",
        "WORKER", "STATE", "RAM used", "GPU memory used", "POWER", "QUEUE", "INFLIGHT", "REQ/S"
    ));
    let before: HashMap<&str, u64> = previous
        .workers
        .iter()
        .filter_map(|w| {
            w.status
                .as_ref()
                .map(|s| (s.name.as_str(), worker_inferences(w)))
        })
        .collect();
    for w in &current.workers {
        let Some(s) = &w.status else { continue };
        let ram = if s.ram_total_bytes > 0 {
            let used = s.ram_total_bytes.saturating_sub(s.ram_free_bytes);
            format!(
                "{} {}",
                bar(used as f64 / s.ram_total_bytes as f64, 10),
                gib(used)
            )
        } else {
            "-".into()
        };
        let (gpu_total, gpu_free) = s.gpus.iter().fold((0u64, 0u64), |(t, f), g| {
            (t + g.memory_total_bytes, f + g.memory_free_bytes)
        });
        let gpu = if gpu_total > 0 {
            let used = gpu_total.saturating_sub(gpu_free);
            format!("{} {}", bar(used as f64 / gpu_total as f64, 10), gib(used))
        } else {
            "no GPU".into()
        };
        let queue: u32 = s.models.iter().map(|m| m.queue_depth).sum();
        let rate = before
            .get(s.name.as_str())
            .map(|b| worker_inferences(w).saturating_sub(*b) as f64 / dt)
            .unwrap_or(0.0);
        out.push(format!(
            "{:<18} {:<9} {:<24} {:<24} {:<13} {:>5} {:>8} {:>7.1}",
            s.name,
            state(w),
            ram,
            gpu,
            power(w),
            queue,
            w.dispatched_in_flight,
            rate
        ));
    }
    out.push(String::new());
    out.push(format!(
        "{:<22} {:<8} {:>8} {:>9} {:>9} {:>9} {:>7}  {}",
        "MODEL", "VERSION", "REQ/S", "p50 ms", "p90 ms", "p99 ms", "ERRORS", "WORKERS"
    ));
    for m in &current.models {
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
        let ok = m.requests_ok - prev.map(|p| p.requests_ok).unwrap_or(0).min(m.requests_ok);
        let failed = m.requests_failed
            - prev
                .map(|p| p.requests_failed)
                .unwrap_or(0)
                .min(m.requests_failed);
        let q = |x| quantile(&m.latency_bounds_seconds, &delta, x);
        out.push(format!(
            "{:<22} {:<8} {:>8.1} {:>9} {:>9} {:>9} {:>7}  {}",
            m.name,
            m.version,
            (ok + failed) as f64 / dt,
            ms(q(0.5)),
            ms(q(0.9)),
            ms(q(0.99)),
            failed,
            m.ready_workers.join(",")
        ));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_proto::localml::v1::{Gpu, LoadedModel, PowerStatus, WorkerStatus};

    fn worker(name: &str, inferences: u64) -> WorkerInfo {
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
                }),
                models: vec![LoadedModel {
                    name: "m".into(),
                    version: "1".into(),
                    inference_count: inferences,
                    queue_depth: 3,
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

    #[test]
    fn bars_fill_by_fraction() {
        assert_eq!(bar(0.0, 4), "[....]");
        assert_eq!(bar(0.5, 4), "[##..]");
        assert_eq!(bar(2.0, 4), "[####]");
    }

    #[test]
    fn a_frame_shows_bars_power_rates_and_recent_percentiles() {
        let previous = Reading {
            workers: vec![worker("pc1", 100)],
            models: vec![model(100, vec![100, 100, 100, 100])],
        };
        // 50 more requests in 2 s, all between 1 and 10 ms.
        let current = Reading {
            workers: vec![worker("pc1", 150)],
            models: vec![model(150, vec![100, 150, 150, 150])],
        };
        let frame = render(&previous, &current, Duration::from_secs(2), "test");
        assert!(frame.contains("1/1 workers ready"), "{frame}");
        let row = frame
            .lines()
            .find(|l| l.starts_with("pc1"))
            .expect("worker row");
        assert!(
            row.contains("[########..] 6.0G"),
            "RAM 6 of 8 GiB used: {row}"
        );
        assert!(
            row.contains("[###.......] 4.0G"),
            "GPU 4 of 16 GiB used: {row}"
        );
        assert!(row.contains("battery 64%"), "{row}");
        assert!(
            row.trim_end().ends_with("25.0"),
            "50 requests in 2 s: {row}"
        );
        let m = frame
            .lines()
            .find(|l| l.starts_with("m "))
            .expect("model row");
        // Recent requests are all in (1, 10] ms: p50 5.5 ms by interpolation.
        assert!(m.contains("25.0") && m.contains("5.5"), "{m}");
    }
}
