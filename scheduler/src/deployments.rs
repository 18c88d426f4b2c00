//! Model deployments: "keep N replicas of this model loaded on workers that match".
//!
//! Specs live under `deployments/<name>`; the leader's controller assigns workers,
//! writing `assignments/<worker>/<deployment>` (fenced by its leadership), and every
//! replica follows `assignments/` so that whichever one a worker reports to tells it what
//! to load and unload (`ReportAck.load/unload`). Only workers started with
//! `--load on-demand` take assignments; the others keep their whole repository loaded.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use localml_proto::localml::v1::{
    AvailableModel, CatalogModel, Deployment, ModelRef, WorkerInfo, WorkerState, WorkerStatus,
};
use localml_proto::units::human_bytes;
use prost::Message;

use crate::leader::Leadership;
use crate::workers::Workers;
use localml_store::{Event, Store, StoreError};

pub const DEPLOYMENTS: &str = "deployments/";
pub const ASSIGNMENTS: &str = "assignments/";

/// `assignments/<worker, escaped>/<deployment>` (deployment names have no `/`).
fn assignment_key(worker: &str, deployment: &str) -> String {
    format!(
        "{ASSIGNMENTS}{}/{deployment}",
        localml_store::escape_segment(worker)
    )
}

/// What is wrong with a deployment spec from a client; each message names the field.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The name is empty or has characters other than letters, digits, '-', '_', '.'.
    #[error("deployment name '{0}' must be non-empty letters, digits, '-', '_' or '.'")]
    Name(String),
    /// No model named.
    #[error("deployment.model is empty")]
    NoModel,
    /// A version that is not a number.
    #[error("deployment.version '{0}' is not a number")]
    Version(String),
    /// A provider other than gpu, cpu or any.
    #[error("deployment.provider '{0}': expected gpu, cpu or empty")]
    Provider(String),
}

/// Checks a deployment from a client.
pub fn validate(d: &Deployment) -> Result<(), DeploymentError> {
    let name_ok = !d.name.is_empty()
        && d.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !name_ok {
        return Err(DeploymentError::Name(d.name.clone()));
    }
    if d.model.is_empty() {
        return Err(DeploymentError::NoModel);
    }
    if !d.version.is_empty() && d.version.parse::<u64>().is_err() {
        return Err(DeploymentError::Version(d.version.clone()));
    }
    if !matches!(d.provider.as_str(), "" | "any" | "gpu" | "cpu") {
        return Err(DeploymentError::Provider(d.provider.clone()));
    }
    Ok(())
}

/// The spec part of a deployment (status fields cleared), as stored.
pub fn spec(d: &Deployment) -> Deployment {
    Deployment {
        name: d.name.clone(),
        model: d.model.clone(),
        version: d.version.clone(),
        replicas: d.replicas,
        selector: d.selector.clone(),
        provider: d.provider.clone(),
        ..Default::default()
    }
}

/// Assignments by worker name, followed from the store by every replica.
#[derive(Default)]
pub struct Assignments {
    by_worker: RwLock<HashMap<String, HashMap<String, ModelRef>>>,
}

impl Assignments {
    fn parse(key: &str) -> Option<(String, String)> {
        let rest = key.strip_prefix(ASSIGNMENTS)?;
        let (worker, deployment) = rest.split_once('/')?;
        Some((
            localml_store::unescape_segment(worker),
            deployment.to_string(),
        ))
    }

    fn set(&self, key: &str, model: Option<ModelRef>) {
        let Some((worker, deployment)) = Assignments::parse(key) else {
            return;
        };
        let mut map = self.by_worker.write().unwrap_or_else(|e| e.into_inner());
        match model {
            Some(m) => {
                map.entry(worker).or_default().insert(deployment, m);
            }
            None => {
                if let Some(d) = map.get_mut(&worker) {
                    d.remove(&deployment);
                }
            }
        }
    }

    /// What an on-demand worker should load and unload, given its report.
    pub fn instructions(&self, status: &WorkerStatus) -> (Vec<ModelRef>, Vec<ModelRef>) {
        if !status.on_demand {
            return (Vec::new(), Vec::new());
        }
        let map = self.by_worker.read().unwrap_or_else(|e| e.into_inner());
        let assigned: Vec<ModelRef> = map
            .get(&status.name)
            .map(|d| d.values().cloned().collect())
            .unwrap_or_default();
        let matches = |a: &ModelRef, name: &str, version: &str| {
            a.name == name && (a.version.is_empty() || a.version == version)
        };
        let load = assigned
            .iter()
            .filter(|a| {
                !status
                    .models
                    .iter()
                    .any(|m| matches(a, &m.name, &m.version))
            })
            .cloned()
            .collect();
        let unload = status
            .models
            .iter()
            .filter(|m| !assigned.iter().any(|a| matches(a, &m.name, &m.version)))
            .map(|m| ModelRef {
                name: m.name.clone(),
                version: m.version.clone(),
            })
            .collect();
        (load, unload)
    }

    /// Keeps this replica's view equal to the store's until `stop`.
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        localml_store::follow(
            store,
            ASSIGNMENTS,
            stop,
            |kvs| {
                self.by_worker
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .clear();
                for kv in &kvs {
                    self.set(&kv.key, ModelRef::decode(kv.value.as_slice()).ok());
                }
            },
            |event| match event {
                Event::Put(kv) => self.set(&kv.key, ModelRef::decode(kv.value.as_slice()).ok()),
                Event::Delete { key, .. } => self.set(&key, None),
            },
        )
        .await
    }
}

/// Stored deployments and assignments (deployment -> worker names).
pub async fn load_state(
    store: &dyn Store,
) -> Result<(Vec<Deployment>, HashMap<String, Vec<String>>), StoreError> {
    let (kvs, _) = store.list(DEPLOYMENTS).await?;
    let deployments = kvs
        .iter()
        .filter_map(|kv| Deployment::decode(kv.value.as_slice()).ok())
        .collect();
    let (kvs, _) = store.list(ASSIGNMENTS).await?;
    let mut assigned: HashMap<String, Vec<String>> = HashMap::new();
    for kv in kvs {
        if let Some((worker, deployment)) = Assignments::parse(&kv.key) {
            assigned.entry(deployment).or_default().push(worker);
        }
    }
    for workers in assigned.values_mut() {
        workers.sort();
    }
    Ok((deployments, assigned))
}

fn has_provider(status: &WorkerStatus, provider: &str) -> bool {
    let gpu = status
        .execution_providers
        .iter()
        .any(|p| p != "CPUExecutionProvider");
    match provider {
        "gpu" => gpu,
        _ => true,
    }
}

/// Whether `worker` may take `d`: on-demand, Ready, not cordoned, labels and provider
/// match, and its repository has the model (see [`with_catalog`] for the catalog's).
pub fn eligible(d: &Deployment, worker: &WorkerInfo) -> bool {
    let Some(status) = &worker.status else {
        return false;
    };
    status.on_demand
        && worker.state == WorkerState::Ready as i32
        && !worker.cordoned
        && d.selector
            .iter()
            .all(|(k, v)| status.labels.get(k) == Some(v))
        && has_provider(status, &d.provider)
        && status
            .available
            .iter()
            .any(|a| a.name == d.model && (d.version.is_empty() || a.version == d.version))
}

/// Workers as the planner sees them: one that fetches models from the catalog
/// (`WorkerStatus.catalog`) can take every catalog version, as if its repository had it.
pub async fn with_catalog(
    store: &dyn Store,
    mut workers: Vec<WorkerInfo>,
) -> Result<Vec<WorkerInfo>, StoreError> {
    if !workers
        .iter()
        .any(|w| w.status.as_ref().is_some_and(|s| s.catalog))
    {
        return Ok(workers);
    }
    let (kvs, _) = store.list(crate::catalog::CATALOG).await?;
    let models: Vec<AvailableModel> = kvs
        .iter()
        .filter_map(|kv| CatalogModel::decode(kv.value.as_slice()).ok())
        .map(|m| AvailableModel {
            file_bytes: m.files.iter().map(|f| f.size).sum(),
            name: m.name,
            version: m.version,
        })
        .collect();
    for status in workers
        .iter_mut()
        .filter_map(|w| w.status.as_mut())
        .filter(|s| s.catalog)
    {
        for m in &models {
            let has = status
                .available
                .iter()
                .any(|a| a.name == m.name && a.version == m.version);
            if !has {
                status.available.push(m.clone());
            }
        }
    }
    Ok(workers)
}

/// The RAM `d`'s model is expected to take on `worker`, estimated from its files (ONNX
/// Runtime holds the weights and its working memory: 1.5 times the files), or None when
/// the worker does not report it.
pub fn footprint(d: &Deployment, worker: &WorkerInfo) -> Option<u64> {
    worker
        .status
        .as_ref()?
        .available
        .iter()
        .filter(|a| a.name == d.model && (d.version.is_empty() || a.version == d.version))
        .max_by_key(|a| a.version.parse::<u64>().unwrap_or(0))
        .map(|a| a.file_bytes.saturating_add(a.file_bytes / 2))
}

/// Takes `d`'s footprint off worker `name`'s free RAM when `when` holds.
fn reserve(
    workers: &mut [WorkerInfo],
    d: &Deployment,
    name: &str,
    when: impl Fn(&Deployment, &WorkerInfo) -> bool,
) {
    let Some(w) = workers
        .iter_mut()
        .find(|w| w.status.as_ref().is_some_and(|s| s.name == name))
    else {
        return;
    };
    if !when(d, w) {
        return;
    }
    let need = footprint(d, w).unwrap_or(0);
    if let Some(s) = w.status.as_mut() {
        s.ram_free_bytes = s.ram_free_bytes.saturating_sub(need);
    }
}

/// Whether `d`'s model fits in `worker`'s free RAM (unknown sizes fit).
pub fn fits(d: &Deployment, worker: &WorkerInfo) -> bool {
    let free = worker.status.as_ref().map_or(0, |s| s.ram_free_bytes);
    footprint(d, worker).is_none_or(|need| need <= free)
}

/// Whether `worker` serves `d` now (Ready with the model loaded).
pub fn serving(d: &Deployment, worker: &WorkerInfo) -> bool {
    worker.state == WorkerState::Ready as i32
        && worker.status.as_ref().is_some_and(|s| {
            s.models
                .iter()
                .any(|m| m.name == d.model && (d.version.is_empty() || m.version == d.version))
        })
}

/// The changes that bring `assigned` to `d.replicas` workers: (add, remove).
pub fn plan(
    d: &Deployment,
    assigned: &[String],
    workers: &[WorkerInfo],
) -> (Vec<String>, Vec<String>) {
    let by_name: HashMap<&str, &WorkerInfo> = workers
        .iter()
        .filter_map(|w| w.status.as_ref().map(|s| (s.name.as_str(), w)))
        .collect();
    // Assignments to workers that went away, stopped being Ready, were cordoned or no
    // longer match the spec (selector, provider, version) are given up.
    let (keep, mut remove): (Vec<String>, Vec<String>) = assigned
        .iter()
        .cloned()
        .partition(|n| by_name.get(n.as_str()).is_some_and(|w| eligible(d, w)));
    let want = d.replicas as usize;
    let mut add = Vec::new();
    if keep.len() > want {
        let mut extra = keep.clone();
        extra.sort();
        remove.extend(extra.into_iter().skip(want));
    } else if keep.len() < want {
        let taken: HashSet<&str> = assigned.iter().map(String::as_str).collect();
        let mut candidates: Vec<&WorkerInfo> = workers
            .iter()
            .filter(|w| eligible(d, w) && fits(d, w))
            .filter(|w| {
                w.status
                    .as_ref()
                    .is_some_and(|s| !taken.contains(s.name.as_str()))
            })
            .collect();
        // Most free memory first; the name breaks ties so plans are stable.
        candidates.sort_by_key(|w| {
            let s = w.status.clone().unwrap_or_default();
            (std::cmp::Reverse(s.ram_free_bytes), s.name)
        });
        add = candidates
            .iter()
            .take(want - keep.len())
            .filter_map(|w| w.status.as_ref().map(|s| s.name.clone()))
            .collect();
    }
    (add, remove)
}

/// The leader's controller: every second, plans each deployment and writes the changes.
pub struct Controller {
    pub store: Arc<dyn Store>,
    pub workers: Arc<Workers>,
    /// Waited after gaining leadership before the first reconcile, so that workers have
    /// (re)joined: a new leader that started empty would otherwise move every replica.
    pub settle: Duration,
}

impl Controller {
    pub async fn run(&self, leadership: &Leadership, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut lost = leadership.lost.clone();
        let settled = tokio::select! {
            _ = tokio::time::sleep(self.settle) => true,
            _ = stop.wait_for(|s| *s) => false,
            _ = lost.wait_for(|l| *l) => false,
        };
        if !settled {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let go = tokio::select! {
                _ = tick.tick() => true,
                _ = stop.wait_for(|s| *s) => false,
                _ = lost.wait_for(|l| *l) => false,
            };
            if !go {
                return;
            }
            if let Err(e) = self.reconcile(leadership).await {
                tracing::warn!(error = %e, "deployments: cannot reconcile");
            }
        }
    }

    async fn reconcile(&self, leadership: &Leadership) -> Result<(), StoreError> {
        let (deployments, assigned) = load_state(self.store.as_ref()).await?;
        let workers = self.workers.list(tokio::time::Instant::now());
        let mut workers = with_catalog(self.store.as_ref(), workers).await?;
        // RAM promised to models assigned but not served yet (fetching, loading) is not
        // free for another: taken off each worker's free figure before planning.
        for d in &deployments {
            for name in assigned.get(&d.name).map(Vec::as_slice).unwrap_or_default() {
                reserve(&mut workers, d, name, |d, w| !serving(d, w));
            }
        }
        let names: HashSet<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
        // What each assignment says now, to rewrite those whose spec changed (a new
        // version or model for the same deployment).
        let (kvs, _) = self.store.list(ASSIGNMENTS).await?;
        let stored: HashMap<String, ModelRef> = kvs
            .iter()
            .filter_map(|kv| Some((kv.key.clone(), ModelRef::decode(kv.value.as_slice()).ok()?)))
            .collect();
        let mut txn = leadership.fenced();
        let mut changes = 0;
        for (deployment, workers) in &assigned {
            if !names.contains(deployment.as_str()) {
                for w in workers {
                    txn = txn.delete(&assignment_key(w, deployment));
                    changes += 1;
                }
            }
        }
        for d in &deployments {
            let current = assigned.get(&d.name).cloned().unwrap_or_default();
            let (add, remove) = plan(d, &current, &workers);
            // What this pass assigns is promised too, for the deployments planned after.
            for name in &add {
                reserve(&mut workers, d, name, |_, _| true);
            }
            for w in &remove {
                tracing::info!(deployment = %d.name, worker = %w, "unassigning");
                txn = txn.delete(&assignment_key(w, &d.name));
                changes += 1;
            }
            let wanted = ModelRef {
                name: d.model.clone(),
                version: d.version.clone(),
            };
            let kept: Vec<(String, Option<ModelRef>)> = current
                .iter()
                .filter(|w| !remove.contains(w))
                .map(|w| (w.clone(), stored.get(&assignment_key(w, &d.name)).cloned()))
                .collect();
            if let Some(w) = next_to_move(d, &kept, &workers) {
                tracing::info!(deployment = %d.name, worker = %w, model = %d.model, version = %d.version, "moving a replica to the changed deployment");
                txn = txn.put(&assignment_key(&w, &d.name), wanted.encode_to_vec(), 0);
                changes += 1;
            }
            for w in &add {
                tracing::info!(deployment = %d.name, worker = %w, model = %d.model, "assigning");
                let model = ModelRef {
                    name: d.model.clone(),
                    version: d.version.clone(),
                };
                txn = txn.put(&assignment_key(w, &d.name), model.encode_to_vec(), 0);
                changes += 1;
            }
        }
        if changes > 0 && self.store.commit(txn).await?.is_none() {
            tracing::info!("deployments: leadership changed; not writing");
        }
        Ok(())
    }
}

/// After a deployment's model or version changed: the next kept worker whose assignment
/// still names the old one, but only once every worker already moved serves the new one
/// (a rolling change, one replica at a time, so the others keep serving meanwhile).
pub fn next_to_move(
    d: &Deployment,
    kept: &[(String, Option<ModelRef>)],
    workers: &[WorkerInfo],
) -> Option<String> {
    let wanted = ModelRef {
        name: d.model.clone(),
        version: d.version.clone(),
    };
    let by_name = |name: &str| {
        workers
            .iter()
            .find(|w| w.status.as_ref().is_some_and(|s| s.name == name))
    };
    let moving = kept
        .iter()
        .any(|(w, m)| m.as_ref() == Some(&wanted) && !by_name(w).is_some_and(|w| serving(d, w)));
    if moving {
        return None;
    }
    kept.iter()
        .find(|(_, m)| m.as_ref().is_some_and(|m| *m != wanted))
        .map(|(w, _)| w.clone())
}

/// Fills a deployment's status fields from the cluster.
pub fn with_status(d: &Deployment, assigned: &[String], workers: &[WorkerInfo]) -> Deployment {
    let mut out = d.clone();
    out.workers = assigned.to_vec();
    out.ready_replicas = workers
        .iter()
        .filter(|w| {
            w.status
                .as_ref()
                .is_some_and(|s| assigned.contains(&s.name))
                && serving(d, w)
        })
        .count() as u32;
    // Pending for memory: workers that could take it, none with room.
    let unassigned: Vec<&WorkerInfo> = workers
        .iter()
        .filter(|w| eligible(d, w))
        .filter(|w| {
            w.status
                .as_ref()
                .is_some_and(|s| !assigned.contains(&s.name))
        })
        .collect();
    let roomless = (assigned.len() < d.replicas as usize)
        && !unassigned.is_empty()
        && unassigned.iter().all(|w| !fits(d, w));
    if roomless {
        let need = unassigned
            .iter()
            .filter_map(|w| footprint(d, w))
            .min()
            .unwrap_or(0);
        let largest = unassigned
            .iter()
            .filter_map(|w| w.status.as_ref())
            .max_by_key(|s| s.ram_free_bytes);
        out.message = format!(
            "Pending: {} of {} replicas placed; '{}' needs about {} of RAM (1.5 times its files), the largest free is {} on {}",
            assigned.len(),
            d.replicas,
            d.model,
            human_bytes(need),
            human_bytes(largest.map_or(0, |s| s.ram_free_bytes)),
            largest.map_or("", |s| s.name.as_str()),
        );
    } else if out.ready_replicas < d.replicas {
        let eligible = workers.iter().filter(|w| eligible(d, w)).count();
        out.message = format!(
            "{} of {} replicas ready; {eligible} eligible worker(s) (Ready, --load on-demand, matching, model '{}' in the repository or the catalog)",
            out.ready_replicas, d.replicas, d.model
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_proto::localml::v1::AvailableModel;

    fn worker(name: &str, free_gib: u64, on_demand: bool, has_model: bool) -> WorkerInfo {
        WorkerInfo {
            state: WorkerState::Ready as i32,
            status: Some(WorkerStatus {
                name: name.into(),
                ram_free_bytes: free_gib << 30,
                on_demand,
                available: if has_model {
                    vec![AvailableModel {
                        name: "m".into(),
                        version: "1".into(),
                        file_bytes: 10,
                    }]
                } else {
                    Vec::new()
                },
                labels: [("room".to_string(), format!("r-{name}"))].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn deployment(replicas: u32) -> Deployment {
        Deployment {
            name: "d".into(),
            model: "m".into(),
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn plans_pick_eligible_workers_with_most_free_memory() {
        let workers = vec![
            worker("a", 2, true, true),
            worker("b", 8, true, true),
            worker("c", 16, false, true), // loads everything itself
            worker("d", 32, true, false), // no such model in its repository
            worker("e", 4, true, true),
        ];
        let (add, remove) = plan(&deployment(2), &[], &workers);
        assert_eq!((add, remove), (vec!["b".into(), "e".into()], vec![]));
        // Scaling down drops the extras; scaling up keeps what is assigned.
        let (add, remove) = plan(&deployment(1), &["b".into(), "e".into()], &workers);
        assert_eq!((add, remove), (vec![], vec!["e".into()]));
        let (add, remove) = plan(&deployment(3), &["a".into()], &workers);
        assert_eq!((add, remove), (vec!["b".into(), "e".into()], vec![]));
        // More replicas than eligible workers: as many as there are.
        let (add, _) = plan(&deployment(9), &[], &workers);
        assert_eq!(add.len(), 3);
    }

    #[test]
    fn lost_cordoned_and_unready_workers_are_replaced() {
        let mut workers = vec![
            worker("a", 2, true, true),
            worker("b", 8, true, true),
            worker("e", 4, true, true),
        ];
        workers[1].state = WorkerState::NotReady as i32;
        workers[2].cordoned = true;
        let (add, remove) = plan(
            &deployment(2),
            &["b".into(), "e".into(), "gone".into()],
            &workers,
        );
        assert_eq!(add, vec!["a".to_string()]);
        assert_eq!(remove, vec!["b".to_string(), "e".into(), "gone".into()]);
        // Selectors restrict the choice.
        let mut d = deployment(2);
        d.selector = [("room".to_string(), "r-b".to_string())].into();
        workers[1].state = WorkerState::Ready as i32;
        assert_eq!(plan(&d, &[], &workers).0, vec!["b".to_string()]);
    }

    #[test]
    fn instructions_load_the_assigned_and_unload_the_rest() {
        let assignments = Assignments::default();
        assignments.set(
            "assignments/w1/d",
            Some(ModelRef {
                name: "m".into(),
                version: String::new(),
            }),
        );
        let mut status = WorkerStatus {
            name: "w1".into(),
            on_demand: true,
            ..Default::default()
        };
        let (load, unload) = assignments.instructions(&status);
        assert_eq!((load.len(), unload.len()), (1, 0));
        status.models = vec![
            localml_proto::localml::v1::LoadedModel {
                name: "m".into(),
                version: "3".into(),
                ..Default::default()
            },
            localml_proto::localml::v1::LoadedModel {
                name: "old".into(),
                version: "1".into(),
                ..Default::default()
            },
        ];
        let (load, unload) = assignments.instructions(&status);
        assert!(load.is_empty());
        assert_eq!(
            unload.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["old"]
        );
        // Workers that load everything get no instructions.
        status.on_demand = false;
        assert_eq!(assignments.instructions(&status), (vec![], vec![]));
    }

    #[test]
    fn worker_names_with_slashes_stay_one_segment() {
        let key = assignment_key("lab/pc-3", "images");
        assert_eq!(key, "assignments/lab%2Fpc-3/images");
        assert_eq!(
            Assignments::parse(&key),
            Some(("lab/pc-3".to_string(), "images".to_string()))
        );
    }

    #[test]
    fn validation_names_the_field() {
        let ok = deployment(1);
        assert!(validate(&ok).is_ok());
        for (d, text) in [
            (
                Deployment {
                    name: "a/b".into(),
                    ..ok.clone()
                },
                "deployment name",
            ),
            (
                Deployment {
                    model: String::new(),
                    ..ok.clone()
                },
                "deployment.model",
            ),
            (
                Deployment {
                    version: "x".into(),
                    ..ok.clone()
                },
                "deployment.version",
            ),
            (
                Deployment {
                    provider: "tpu".into(),
                    ..ok.clone()
                },
                "deployment.provider",
            ),
        ] {
            // As the admin service answers it.
            let e = tonic::Status::from(crate::services::admin::AdminError::from(
                validate(&d).expect_err("invalid"),
            ));
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(text), "{}", e.message());
        }
    }

    #[test]
    fn a_model_placed_only_where_it_fits_and_pending_says_why() {
        let mut big = deployment(2);
        big.model = "m".into();
        let mut workers = vec![worker("a", 2, true, true), worker("b", 8, true, true)];
        // 4 GiB of files: about 6 GiB of RAM.
        for w in &mut workers {
            if let Some(s) = w.status.as_mut() {
                s.available[0].file_bytes = 4 << 30;
            }
        }
        assert_eq!(footprint(&big, &workers[0]), Some(6 << 30));
        let (add, _) = plan(&big, &[], &workers);
        assert_eq!(add, ["b"], "only b has room");
        let status = with_status(&big, &add, &workers);
        assert_eq!(
            status.message,
            "Pending: 1 of 2 replicas placed; 'm' needs about 6.0 GiB of RAM (1.5 times its files), the largest free is 2.0 GiB on a"
        );
        // A worker already holding it is kept, whatever its free RAM says now.
        let (add, remove) = plan(&big, &["a".to_string()], &workers);
        assert!(remove.is_empty(), "{remove:?}");
        assert_eq!(add, ["b"]);
    }

    #[test]
    fn ram_promised_to_one_deployment_is_not_offered_to_the_next() {
        let mut first = deployment(1);
        first.model = "m".into();
        let mut second = first.clone();
        second.name = "e".into();
        // 4 GiB of files (6 GiB needed) on a worker with 8 GiB free: one fits, not two.
        let mut workers = vec![worker("a", 8, true, true)];
        if let Some(s) = workers[0].status.as_mut() {
            s.available[0].file_bytes = 4 << 30;
        }
        let (add, _) = plan(&first, &[], &workers);
        assert_eq!(add, ["a"]);
        reserve(&mut workers, &first, "a", |_, _| true);
        let (add, _) = plan(&second, &[], &workers);
        assert!(add.is_empty(), "{add:?}");
        assert!(with_status(&second, &[], &workers)
            .message
            .starts_with("Pending: "));
    }

    #[test]
    fn a_changed_deployment_moves_one_replica_at_a_time() {
        let mut d = deployment(2);
        d.model = "m".into();
        d.version = "2".into();
        let old = ModelRef {
            name: "m".into(),
            version: "1".into(),
        };
        let new = ModelRef {
            name: "m".into(),
            version: "2".into(),
        };
        let serving_version = |name: &str, version: &str| {
            let mut w = worker(name, 8, true, true);
            if let Some(s) = w.status.as_mut() {
                s.models = vec![localml_proto::localml::v1::LoadedModel {
                    name: "m".into(),
                    version: version.into(),
                    ..Default::default()
                }];
            }
            w
        };
        let kept = |a: &ModelRef, b: &ModelRef| {
            vec![
                ("a".to_string(), Some(a.clone())),
                ("b".to_string(), Some(b.clone())),
            ]
        };
        // Both on v1: the first moves.
        let workers = vec![serving_version("a", "1"), serving_version("b", "1")];
        assert_eq!(
            next_to_move(&d, &kept(&old, &old), &workers).as_deref(),
            Some("a")
        );
        // a moved but does not serve v2 yet: b waits (and keeps serving v1).
        assert_eq!(next_to_move(&d, &kept(&new, &old), &workers), None);
        // a serves v2: b moves.
        let workers = vec![serving_version("a", "2"), serving_version("b", "1")];
        assert_eq!(
            next_to_move(&d, &kept(&new, &old), &workers).as_deref(),
            Some("b")
        );
        // Both moved: nothing to do.
        assert_eq!(next_to_move(&d, &kept(&new, &new), &workers), None);
    }
}
