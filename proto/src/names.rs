//! The names people read for cluster enums, one place for the CLI's tables and the web
//! page's API.

use crate::localml::v1::{PowerSource, WorkerState};

/// "Ready", "NotReady", "Draining" or "Unknown".
pub fn worker_state(state: i32) -> &'static str {
    match WorkerState::try_from(state) {
        Ok(WorkerState::Ready) => "Ready",
        Ok(WorkerState::NotReady) => "NotReady",
        Ok(WorkerState::Draining) => "Draining",
        _ => "Unknown",
    }
}

/// "mains", "battery", "ups" or "unknown".
pub fn power_source(source: i32) -> &'static str {
    match PowerSource::try_from(source) {
        Ok(PowerSource::Mains) => "mains",
        Ok(PowerSource::Battery) => "battery",
        Ok(PowerSource::Ups) => "ups",
        _ => "unknown",
    }
}
