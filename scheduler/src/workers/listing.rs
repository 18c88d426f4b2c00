//! What operators see: every worker with its state and conditions, every model with
//! the workers serving it.

use std::sync::atomic::Ordering;

use localml_framework::{PowerSource, MEMORY_PRESSURE_PERCENT};
use localml_proto::localml::v1 as pb;
use tokio::time::Instant;

use super::{power_of, version_key, WorkerState, Workers};

/// The conditions that hold for a worker's last report.
pub(super) fn conditions(status: &pb::WorkerStatus) -> Vec<String> {
    let mut out = Vec::new();
    // In floating point: the numbers are the worker's, and u64 products could overflow.
    if status.ram_total_bytes > 0
        && (status.ram_free_bytes as f64) * 100.0
            < status.ram_total_bytes as f64 * MEMORY_PRESSURE_PERCENT
    {
        out.push("MemoryPressure".to_string());
    }
    match power_of(status) {
        PowerSource::Battery => out.push("OnBattery".to_string()),
        PowerSource::Ups => out.push("OnUPS".to_string()),
        _ => {}
    }
    if status.power.as_ref().is_some_and(|p| p.low_battery) {
        out.push("LowBattery".to_string());
    }
    out
}

impl Workers {
    /// Every worker with its state, for operators.
    pub fn list(&self, now: Instant) -> Vec<pb::WorkerInfo> {
        let workers = self.read();
        let mut out: Vec<pb::WorkerInfo> = workers
            .values()
            .map(|w| pb::WorkerInfo {
                id: w.id.clone(),
                state: w.state.to_proto() as i32,
                state_reason: w.reason.clone(),
                status: Some(w.status.clone()),
                dispatched_in_flight: w.dispatched.load(Ordering::Relaxed),
                last_report_age_ms: now.saturating_duration_since(w.last_report).as_millis() as u64,
                cordoned: w.cordoned,
                conditions: conditions(&w.status),
            })
            .collect();
        out.sort_by(|a, b| {
            let name = |w: &pb::WorkerInfo| {
                w.status
                    .as_ref()
                    .map(|s| s.name.clone())
                    .unwrap_or_default()
            };
            name(a).cmp(&name(b))
        });
        out
    }

    /// Every model version with the Ready workers serving it.
    pub fn models(&self) -> Vec<pb::ModelInfo> {
        let workers = self.read();
        let mut by_key: std::collections::BTreeMap<(String, (u64, String)), pb::ModelInfo> =
            Default::default();
        for w in workers.values() {
            for m in &w.status.models {
                let info = by_key
                    .entry((m.name.clone(), version_key(&m.version)))
                    .or_insert_with(|| pb::ModelInfo {
                        name: m.name.clone(),
                        version: m.version.clone(),
                        ready_workers: Vec::new(),
                        signature: m.signature.clone(),
                        max_batch_size: m.max_batch_size,
                        ..Default::default()
                    });
                if info.task.is_none() {
                    info.task = m.task.clone();
                }
                if w.state == WorkerState::Ready {
                    info.ready_workers.push(w.status.name.clone());
                    info.ready_variants.push(m.variant.clone());
                }
            }
        }
        let mut out: Vec<pb::ModelInfo> = by_key.into_values().collect();
        for m in &mut out {
            let mut pairs: Vec<(String, String)> = m
                .ready_workers
                .drain(..)
                .zip(m.ready_variants.drain(..))
                .collect();
            pairs.sort();
            (m.ready_workers, m.ready_variants) = pairs.into_iter().unzip();
        }
        out
    }
}
