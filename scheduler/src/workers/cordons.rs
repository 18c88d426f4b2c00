//! Cordons: an operator's "no new work for this worker", kept in the store (every
//! replica follows it) and mirrored here, including for workers not connected, so a
//! cordon outlives rejoins and restarts.

use std::sync::Arc;

use localml_store::Store;

use super::Workers;

/// Store prefix: `cordons/<escaped worker name>`.
pub const CORDONS: &str = "cordons/";

/// Keeps the table's cordons equal to the store's (every replica runs this).
pub async fn follow_cordons(
    store: Arc<dyn Store>,
    workers: Arc<Workers>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let name =
        |key: &str| localml_store::unescape_segment(key.strip_prefix(CORDONS).unwrap_or(key));
    localml_store::follow(
        store,
        CORDONS,
        stop,
        |kvs| workers.replace_cordons(kvs.iter().map(|kv| name(&kv.key)).collect()),
        |event| {
            let cordoned = matches!(event, localml_store::Event::Put(_));
            workers.set_cordon(&name(event.key()), cordoned);
        },
    )
    .await
}

impl Workers {
    fn cordon_names(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.cordons.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn is_cordoned(&self, name: &str) -> bool {
        self.cordon_names().contains(name)
    }

    /// Whether a worker named `name` is registered (in any state).
    pub fn knows(&self, name: &str) -> bool {
        self.read().values().any(|w| w.status.name == name)
    }

    /// Makes `names` the cordoned workers (after listing the store).
    pub fn replace_cordons(&self, names: std::collections::HashSet<String>) {
        {
            let mut workers = self.write();
            for w in workers.values_mut() {
                w.cordoned = names.contains(&w.status.name);
            }
            *self.cordon_names() = names;
        }
        self.changed();
    }

    /// Cordons or uncordons the worker named `name`; false if it is not registered (the
    /// cordon is kept for when it joins).
    pub fn set_cordon(&self, name: &str, cordoned: bool) -> bool {
        if cordoned {
            self.cordon_names().insert(name.to_string());
        } else {
            self.cordon_names().remove(name);
        }
        let found = {
            let mut workers = self.write();
            let mut found = false;
            for w in workers.values_mut().filter(|w| w.status.name == name) {
                tracing::info!(worker = name, cordoned, "cordon changed");
                w.cordoned = cordoned;
                found = true;
            }
            found
        };
        // Waiting requests look again (an uncordon frees a worker; a cordon may leave a
        // model with none).
        self.changed();
        found
    }
}
