//! The scheduler's view of the workers, one entry per worker: its last status report,
//! its node-lifecycle state (Ready, NotReady, Draining) and lease, and whether it is
//! cordoned. One writer at a time behind a lock held only for in-memory work, never
//! across I/O; routing reads it through [`routing`].
//!
//! - this file: the table and the worker lifecycle (join, report, leave, leases).
//! - [`candidate`]: a routable worker: its gRPC channel and observed latency.
//! - [`routing`]: lookups and the snapshot a scheduling cycle runs on.
//! - [`listing`]: what operators see (workers with conditions, models).
//! - [`cordons`]: cordons, in memory and followed from the store.
//! - [`registrations`]: registrations with leases in the store, shared by replicas.

pub mod candidate;
pub mod cordons;
pub mod listing;
pub mod registrations;
pub mod routing;

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use localml_framework::PowerSource;
use localml_proto::localml::v1 as pb;
use tokio::time::Instant;

pub use candidate::{Candidate, WorkerClient};
pub use routing::Lookup;

/// Kubernetes-style node lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    Ready,
    /// Missed reports for the grace period, or failed a dispatch; gets no traffic.
    NotReady,
    /// Left the cluster: finishes what it has, gets nothing new.
    Draining,
}

impl WorkerState {
    pub fn to_proto(self) -> pb::WorkerState {
        match self {
            WorkerState::Ready => pb::WorkerState::Ready,
            WorkerState::NotReady => pb::WorkerState::NotReady,
            WorkerState::Draining => pb::WorkerState::Draining,
        }
    }
}

struct WorkerEntry {
    id: String,
    status: pb::WorkerStatus,
    state: WorkerState,
    reason: String,
    last_report: Instant,
    dispatched: Arc<AtomicU32>,
    /// The handle's answers per model version when the last report arrived: answers
    /// received since are requests the report still counts ([`routing`]). None for a
    /// status from the store (another replica's report, on another timeline).
    answered_at_report: Option<std::collections::HashMap<String, u64>>,
    /// What routing needs; `None` while the worker's address is unusable.
    handle: Option<Arc<Candidate>>,
    /// An operator cordoned it (kept across rejoins under the same name).
    cordoned: bool,
    /// Power source before the last change, and when it changed.
    previous_power: PowerSource,
    power_changed_at: Instant,
    /// Known through the store (another replica hears from it), not from its own reports.
    remote: bool,
}

impl WorkerEntry {
    /// The worker stopped answering: requests in flight on it give up there and are
    /// dispatched again elsewhere (inference is idempotent).
    fn lose_in_flight(&self) {
        if let Some(handle) = &self.handle {
            handle.lose_in_flight();
        }
    }
}

fn power_of(status: &pb::WorkerStatus) -> PowerSource {
    let source = status.power.as_ref().map(|p| p.source).unwrap_or_default();
    match pb::PowerSource::try_from(source) {
        Ok(pb::PowerSource::Mains) => PowerSource::Mains,
        Ok(pb::PowerSource::Battery) => PowerSource::Battery,
        Ok(pb::PowerSource::Ups) => PowerSource::Ups,
        _ => PowerSource::Unknown,
    }
}

pub struct Workers {
    workers: RwLock<HashMap<String, WorkerEntry>>,
    max_message_bytes: usize,
    /// TLS for channels to workers (None: plaintext, in unit tests).
    dial: Option<crate::trust::WorkerDial>,
    /// HTTP/2 keepalive on channels to workers: ping interval and how long a ping may go
    /// unanswered (None: off).
    keepalive: Option<(std::time::Duration, std::time::Duration)>,
    /// Origin of the snapshot clock.
    epoch: Instant,
    /// Names of cordoned workers (from the store, shared by every replica); kept for
    /// workers that are not connected, so a cordon outlives rejoins and restarts.
    cordons: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Called after a change to what queued requests can be routed to (a report, a join,
    /// a cordon, a worker turning NotReady, leaving or removed): the dispatcher's queue
    /// wakes its waiters to look again ([`Workers::on_change`]).
    on_change: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

fn version_key(v: &str) -> (u64, String) {
    (v.parse().unwrap_or(0), v.to_string())
}

impl Workers {
    pub fn new(max_message_bytes: usize) -> Workers {
        Workers {
            workers: RwLock::new(HashMap::new()),
            max_message_bytes,
            dial: None,
            keepalive: None,
            epoch: Instant::now(),
            cordons: Default::default(),
            on_change: std::sync::OnceLock::new(),
        }
    }

    /// Calls `f` after every change to what queued requests can be routed to; the first
    /// caller's `f` stays.
    pub fn on_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_change.set(f);
    }

    pub(super) fn changed(&self) {
        if let Some(f) = self.on_change.get() {
            f();
        }
    }

    /// Pings each worker's connection every `interval`; a ping unanswered for `timeout`
    /// ends the connection and fails the calls on it (a PC switched off, frozen or cut off
    /// is noticed in seconds, not after TCP's retransmissions), so they are tried on
    /// another worker.
    pub fn with_keepalive(
        mut self,
        interval: std::time::Duration,
        timeout: std::time::Duration,
    ) -> Workers {
        self.keepalive = Some((interval, timeout));
        self
    }

    /// Dials workers over mutual TLS with `dial`.
    pub fn with_tls(mut self, dial: crate::trust::WorkerDial) -> Workers {
        self.dial = Some(dial);
        self
    }

    fn connect(
        &self,
        id: &str,
        status: &pb::WorkerStatus,
        dispatched: &Arc<AtomicU32>,
    ) -> Option<Arc<Candidate>> {
        candidate::connect(
            id,
            status,
            dispatched,
            self.max_message_bytes,
            self.dial.as_ref(),
            self.keepalive,
        )
    }

    /// Whether a worker named `name` is connected: it reports (Ready or Draining), here or
    /// through another replica.
    pub fn is_live(&self, name: &str) -> bool {
        self.read()
            .values()
            .any(|w| w.status.name == name && w.state != WorkerState::NotReady)
    }

    /// The name the worker `id` registered under.
    pub fn name_of(&self, id: &str) -> Option<String> {
        self.read().get(id).map(|w| w.status.name.clone())
    }

    /// Forgets the worker `name` (it was removed by an operator); true when it was known.
    pub fn remove(&self, name: &str) -> bool {
        let removed = {
            let mut workers = self.write();
            let before = workers.len();
            workers.retain(|_, w| {
                let keep = w.status.name != name;
                if !keep {
                    w.lose_in_flight();
                }
                keep
            });
            before != workers.len()
        };
        if removed {
            // Queued requests look again: some may now have no worker at all.
            self.changed();
        }
        removed
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, WorkerEntry>> {
        self.workers
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, WorkerEntry>> {
        self.workers
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a worker. A worker rejoining under the same name replaces its old entry.
    pub fn join(&self, status: pb::WorkerStatus, now: Instant) -> String {
        let id = self.insert(status, now, false);
        self.changed();
        id
    }

    /// Adds an entry; a `remote` one (from the store) never replaces a worker that reports
    /// here, checked under the same lock as the insert.
    fn insert(&self, status: pb::WorkerStatus, now: Instant, remote: bool) -> String {
        // Random, so an id says nothing about other workers' ids.
        let id = format!(
            "w-{}",
            localml_trust::random_hex(8).unwrap_or_else(|_| format!("{:016x}", fastrand::u64(..)))
        );
        let dispatched = Arc::new(AtomicU32::new(0));
        let handle = self.connect(&id, &status, &dispatched);
        let (state, reason) = match (&handle, status.draining) {
            (None, _) => (
                WorkerState::NotReady,
                format!("invalid inference address '{}'", status.inference_address),
            ),
            (Some(_), true) => (WorkerState::Draining, "worker is draining".to_string()),
            (Some(_), false) => (WorkerState::Ready, String::new()),
        };
        let cordoned = self.is_cordoned(&status.name);
        let mut workers = self.write();
        if remote {
            if let Some(direct) = workers
                .values()
                .find(|w| w.status.name == status.name && !w.remote)
            {
                return direct.id.clone();
            }
        }
        workers.retain(|_, w| w.status.name != status.name);
        tracing::info!(worker = %status.name, id = %id, address = %status.inference_address, remote, "worker joined");
        workers.insert(
            id.clone(),
            WorkerEntry {
                id: id.clone(),
                state,
                reason,
                last_report: now,
                previous_power: power_of(&status),
                power_changed_at: now,
                status,
                answered_at_report: (!remote).then(Default::default),
                dispatched,
                handle,
                cordoned,
                remote,
            },
        );
        id
    }

    /// A registration read from the store: ignored for workers that report here (their
    /// own reports are fresher); otherwise added or refreshed like a report.
    pub fn apply_remote(&self, status: pb::WorkerStatus, now: Instant) {
        let existing = self
            .read()
            .values()
            .find(|w| w.status.name == status.name)
            .map(|w| (w.id.clone(), w.remote));
        match existing {
            Some((_, false)) => {}
            Some((id, true)) => {
                self.report(&id, status, now);
            }
            None => {
                self.insert(status, now, true);
                self.changed();
            }
        }
    }

    /// The store's registration of `name` expired: no replica heard from it for the
    /// grace period. Workers known only through the store become NotReady here.
    pub fn remote_lease_expired(&self, name: &str) {
        let mut workers = self.write();
        for w in workers
            .values_mut()
            .filter(|w| w.remote && w.status.name == name && w.state != WorkerState::Draining)
        {
            tracing::warn!(worker = name, "worker lease expired in the store; NotReady");
            w.state = WorkerState::NotReady;
            w.reason = "lease expired: no scheduler replica hears from it".into();
            w.lose_in_flight();
        }
        drop(workers);
        self.changed();
    }

    /// Records a status report (renewing the lease). False when the id is unknown.
    pub fn report(&self, id: &str, status: pb::WorkerStatus, now: Instant) -> bool {
        let known = self.record_report(id, status, now);
        if known {
            self.changed();
        }
        known
    }

    fn record_report(&self, id: &str, status: pb::WorkerStatus, now: Instant) -> bool {
        let new_handle = {
            let workers = self.read();
            match workers.get(id) {
                None => return false,
                Some(w)
                    if w.status.inference_address != status.inference_address
                        || w.status.name != status.name =>
                {
                    Some(self.connect(id, &status, &w.dispatched))
                }
                Some(_) => None,
            }
        };
        let mut workers = self.write();
        let Some(w) = workers.get_mut(id) else {
            return false;
        };
        if let Some(handle) = new_handle {
            // A new address: what was in flight at the old one goes elsewhere.
            w.lose_in_flight();
            w.handle = handle;
        }
        w.last_report = now;
        let (state, reason) = if status.draining || w.state == WorkerState::Draining {
            (WorkerState::Draining, "worker is draining".to_string())
        } else if w.handle.is_none() {
            (
                WorkerState::NotReady,
                format!("invalid inference address '{}'", status.inference_address),
            )
        } else {
            (WorkerState::Ready, String::new())
        };
        if state != w.state {
            tracing::info!(worker = %status.name, from = ?w.state, to = ?state, "worker state changed");
        }
        w.state = state;
        w.reason = reason;
        if power_of(&status) != power_of(&w.status) {
            w.previous_power = power_of(&w.status);
            w.power_changed_at = now;
        }
        w.status = status;
        w.answered_at_report = match &w.handle {
            Some(handle) if !w.remote => Some(handle.answered()),
            _ => None,
        };
        true
    }

    /// Whether a report changes what other replicas route by (power source, models,
    /// labels, address, draining): such changes are written to the store at once.
    pub fn power_or_models_changed(&self, id: &str, status: &pb::WorkerStatus) -> bool {
        let workers = self.read();
        let Some(w) = workers.get(id) else {
            return true;
        };
        let models = |s: &pb::WorkerStatus| -> Vec<(String, String)> {
            s.models
                .iter()
                .map(|m| (m.name.clone(), m.version.clone()))
                .collect()
        };
        power_of(&w.status) != power_of(status)
            || models(&w.status) != models(status)
            || w.status.labels != status.labels
            || w.status.inference_address != status.inference_address
            || w.status.draining != status.draining
    }

    /// The worker left: it gets no new work.
    pub fn leave(&self, id: &str) -> bool {
        let mut workers = self.write();
        let Some(w) = workers.get_mut(id) else {
            return false;
        };
        tracing::info!(worker = %w.status.name, "worker leaving (draining)");
        w.state = WorkerState::Draining;
        w.reason = "worker left the cluster".into();
        drop(workers);
        self.changed();
        true
    }

    /// A dispatch to the worker failed at the transport level: stop routing to it until
    /// its next status report shows it alive.
    pub fn mark_unreachable(&self, id: &str, reason: &str) {
        let mut workers = self.write();
        if let Some(w) = workers.get_mut(id) {
            if w.state == WorkerState::Ready {
                tracing::warn!(worker = %w.status.name, reason, "worker unreachable; NotReady until it reports again");
                w.state = WorkerState::NotReady;
                w.reason = format!("dispatch failed: {reason}");
                drop(workers);
                self.changed();
            }
        }
    }

    /// Marks workers whose lease expired NotReady, and forgets long-silent ones.
    pub fn check_leases(&self, now: Instant, grace: Duration, forget_after: Duration) {
        let mut workers = self.write();
        let before = workers.len();
        workers.retain(|_, w| {
            let silent = now.saturating_duration_since(w.last_report);
            let forget =
                silent > forget_after || (w.state == WorkerState::Draining && silent > grace);
            if forget {
                tracing::info!(worker = %w.status.name, "worker removed");
            }
            !forget
        });
        let mut changed = before != workers.len();
        for w in workers.values_mut() {
            let silent = now.saturating_duration_since(w.last_report);
            // Workers known through the store live as long as their store lease.
            if w.state == WorkerState::Ready && silent > grace && !w.remote {
                tracing::warn!(worker = %w.status.name, silent_ms = silent.as_millis() as u64, "worker missed its reports; NotReady");
                w.state = WorkerState::NotReady;
                w.reason = format!("no status report for {:.1}s", silent.as_secs_f64());
                w.lose_in_flight();
                changed = true;
            }
        }
        drop(workers);
        if changed {
            // Queued requests look again: some may now have no worker at all.
            self.changed();
        }
    }

    /// Milliseconds since the workers started (the snapshot clock).
    pub fn now_ms(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.epoch)
            .as_millis() as u64
    }
}

#[cfg(test)]
mod tests;
