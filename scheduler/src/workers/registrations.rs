//! Worker registrations in the store, with Kubernetes Lease semantics.
//!
//! `workers/<name>` holds the worker's last status, bound to a store lease of the grace
//! period. A replica that hears from the worker writes it (at most every third of the
//! grace period), which also renews the lease; every replica follows `workers/`, so a
//! worker that reaches only one replica is still known to the others, and when no replica
//! hears from it for the grace period the lease expires and the key goes: the worker
//! becomes NotReady on every replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use localml_proto::localml::v1::WorkerStatus;
use prost::Message;
use tokio::time::Instant;

use crate::workers::Workers;
use localml_store::{Event, LeaseId, Store, StoreError, Txn};

pub const WORKERS: &str = "workers/";

fn key(name: &str) -> String {
    format!("{WORKERS}{}", localml_store::escape_segment(name))
}

pub struct Registrations {
    store: Arc<dyn Store>,
    ttl: Duration,
    /// Last write per worker name.
    written: Mutex<HashMap<String, (Instant, LeaseId)>>,
}

impl Registrations {
    pub fn new(store: Arc<dyn Store>, grace: Duration) -> Registrations {
        Registrations {
            store,
            ttl: grace,
            written: Mutex::new(HashMap::new()),
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, LeaseId)>> {
        self.written.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a status this replica received (join or report); writes in the background
    /// when the last write is older than a third of the grace period, or `now` is set.
    pub fn record(self: &Arc<Self>, status: &WorkerStatus, now: bool) {
        let lease = {
            let mut written = self.written();
            let last = written.get(&status.name).copied();
            if !now && last.is_some_and(|(at, _)| at.elapsed() < self.ttl / 3) {
                return;
            }
            let lease = last.map(|(_, l)| l).unwrap_or(0);
            written.insert(status.name.clone(), (Instant::now(), lease));
            lease
        };
        let this = Arc::clone(self);
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(e) = this.write(&status, lease).await {
                tracing::debug!(worker = %status.name, error = %e, "cannot record the registration");
                // Try again on the next report.
                this.written().remove(&status.name);
            }
        });
    }

    async fn write(&self, status: &WorkerStatus, lease: LeaseId) -> Result<(), StoreError> {
        let key = key(&status.name);
        let value = status.encode_to_vec();
        // Reuse the lease the key has (another replica may have created it), else ours.
        let mut lease = match self.store.get(&key).await? {
            Some(kv) if kv.lease != 0 => kv.lease,
            _ => lease,
        };
        for _ in 0..2 {
            if lease != 0 {
                match self.store.keep_alive(lease).await {
                    Ok(()) => {
                        let txn = Txn::new().put(&key, value.clone(), lease);
                        match self.store.commit(txn).await {
                            Ok(_) => {
                                self.remember(&status.name, lease);
                                return Ok(());
                            }
                            Err(StoreError::LeaseNotFound(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    Err(StoreError::LeaseNotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            lease = self.store.grant(self.ttl).await?;
        }
        Err(StoreError::LeaseNotFound(lease))
    }

    fn remember(&self, name: &str, lease: LeaseId) {
        if let Some(entry) = self.written().get_mut(name) {
            entry.1 = lease;
        }
    }

    /// Follows `workers/` into `workers` until `stop`: workers this replica does not
    /// hear from directly are added and refreshed from the store, and turn NotReady when
    /// their lease expires.
    pub async fn follow(
        store: Arc<dyn Store>,
        workers: Arc<Workers>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let apply = |kv: &localml_store::KeyValue| {
            if let Ok(status) = WorkerStatus::decode(kv.value.as_slice()) {
                workers.apply_remote(status, Instant::now());
            }
        };
        localml_store::follow(
            store,
            WORKERS,
            stop,
            |kvs| kvs.iter().for_each(apply),
            |event| match event {
                Event::Put(kv) => apply(&kv),
                Event::Delete { key, .. } => {
                    if let Some(segment) = key.strip_prefix(WORKERS) {
                        workers.remote_lease_expired(&localml_store::unescape_segment(segment));
                    }
                }
            },
        )
        .await
    }
}
