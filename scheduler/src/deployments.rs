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
    Assignment, AvailableModel, CatalogModel, Deployment, ModelRef, WorkerInfo, WorkerState,
    WorkerStatus,
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
    /// max_surge and max_unavailable both 0.
    #[error("deployment.max_surge and deployment.max_unavailable are both 0: a change of version could never start; allow at least one")]
    NoRollingRoom,
}

/// How many replicas may load a new version beside the old one at once (default 1).
pub fn max_surge(d: &Deployment) -> usize {
    d.max_surge.unwrap_or(1) as usize
}

/// How many replicas may unload the old version before the new one serves (default 0).
pub fn max_unavailable(d: &Deployment) -> usize {
    d.max_unavailable.unwrap_or(0) as usize
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
    if max_surge(d) == 0 && max_unavailable(d) == 0 {
        return Err(DeploymentError::NoRollingRoom);
    }
    Ok(())
}

/// The spec part of a deployment from a client (status and what the scheduler records
/// cleared).
pub fn spec(d: &Deployment) -> Deployment {
    Deployment {
        name: d.name.clone(),
        model: d.model.clone(),
        version: d.version.clone(),
        replicas: d.replicas,
        selector: d.selector.clone(),
        provider: d.provider.clone(),
        max_surge: d.max_surge,
        max_unavailable: d.max_unavailable,
        ..Default::default()
    }
}

/// `new` as it replaces `old` in the store: a change of model or version remembers what
/// it replaced, for [`rollback`]; otherwise the earlier memory is kept.
pub fn revise(old: Option<&Deployment>, mut new: Deployment) -> Deployment {
    (new.previous_model, new.previous_version) = match old {
        Some(o) if (&o.model, &o.version) != (&new.model, &new.version) => {
            (o.model.clone(), o.version.clone())
        }
        Some(o) => (o.previous_model.clone(), o.previous_version.clone()),
        None => (String::new(), String::new()),
    };
    new
}

/// The spec that goes back to `d`'s model and version before its last change, or None
/// when it never changed.
pub fn rollback(d: &Deployment) -> Option<Deployment> {
    if d.previous_model.is_empty() {
        return None;
    }
    let back = Deployment {
        model: d.previous_model.clone(),
        version: d.previous_version.clone(),
        ..d.clone()
    };
    Some(revise(Some(d), back))
}

/// Writes the spec `change` makes of deployment `name`'s stored one (None: there is
/// none), recording what it replaces (see [`revise`]); retried when another writer
/// changed it meanwhile. Returns what was stored.
pub async fn store_spec<E: From<StoreError> + From<DeploymentError>>(
    store: &dyn Store,
    name: &str,
    change: impl Fn(Option<&Deployment>) -> Result<Deployment, E>,
) -> Result<Deployment, E> {
    let key = format!("{DEPLOYMENTS}{name}");
    for _ in 0..10 {
        let existing = store.get(&key).await?;
        let old = existing
            .as_ref()
            .and_then(|kv| Deployment::decode(kv.value.as_slice()).ok());
        let new = revise(old.as_ref(), change(old.as_ref())?);
        validate(&new)?;
        let seen = existing.as_ref().map_or(0, |kv| kv.mod_revision);
        let txn = localml_store::Txn::new()
            .when(&key, seen)
            .put(&key, new.encode_to_vec(), 0);
        if store.commit(txn).await?.is_some() {
            return Ok(new);
        }
    }
    Err(StoreError::Unavailable(format!(
        "deployment '{name}' kept changing under this write; try again"
    ))
    .into())
}

/// Assignments by worker name, followed from the store by every replica.
#[derive(Default)]
pub struct Assignments {
    by_worker: RwLock<HashMap<String, HashMap<String, Assignment>>>,
}

/// The model versions an assignment keeps loaded: its own, and during a rolling change
/// the one it keeps beside it.
fn refs(a: &Assignment) -> impl Iterator<Item = ModelRef> + '_ {
    std::iter::once(ModelRef {
        name: a.name.clone(),
        version: a.version.clone(),
        variant: a.variant.clone(),
    })
    .chain(a.keep.clone())
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

    fn set(&self, key: &str, model: Option<Assignment>) {
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
            .map(|d| d.values().flat_map(refs).collect())
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
                variant: m.variant.clone(),
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
                    self.set(&kv.key, Assignment::decode(kv.value.as_slice()).ok());
                }
            },
            |event| match event {
                Event::Put(kv) => self.set(&kv.key, Assignment::decode(kv.value.as_slice()).ok()),
                Event::Delete { key, .. } => self.set(&key, None),
            },
        )
        .await
    }
}

/// A deployment's assignments: (worker name, what it is assigned), by worker name.
pub type Assigned = Vec<(String, Assignment)>;

/// Worker names of `assigned`.
pub fn names(assigned: &[(String, Assignment)]) -> Vec<String> {
    assigned.iter().map(|(w, _)| w.clone()).collect()
}

/// Stored deployments and assignments (deployment -> workers and what they hold).
pub async fn load_state(
    store: &dyn Store,
) -> Result<(Vec<Deployment>, HashMap<String, Assigned>), StoreError> {
    let (kvs, _) = store.list(DEPLOYMENTS).await?;
    let deployments = kvs
        .iter()
        .filter_map(|kv| Deployment::decode(kv.value.as_slice()).ok())
        .collect();
    let (kvs, _) = store.list(ASSIGNMENTS).await?;
    let mut assigned: HashMap<String, Assigned> = HashMap::new();
    for kv in kvs {
        if let Some((worker, deployment)) = Assignments::parse(&kv.key) {
            let a = Assignment::decode(kv.value.as_slice()).unwrap_or_default();
            assigned.entry(deployment).or_default().push((worker, a));
        }
    }
    for workers in assigned.values_mut() {
        workers.sort_by(|a, b| a.0.cmp(&b.0));
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

/// The memory `d`'s model takes on the worker of `status`, and how much of it is free:
/// GPU memory where the model will run on the GPU (the worker's ONNX Runtime has a GPU
/// provider, it reports a GPU, and the deployment does not ask for the CPU): the worker's
/// sessions run on device 0, so that GPU's; else RAM.
fn free_memory(d: &Deployment, status: &WorkerStatus) -> (u64, &'static str) {
    match session_gpu(d, status) {
        Some(i) => (status.gpus[i].memory_free_bytes, "GPU memory"),
        None => (status.ram_free_bytes, "RAM"),
    }
}

/// Which of `status.gpus` `d`'s model would run on (device 0), if on a GPU.
fn session_gpu(d: &Deployment, status: &WorkerStatus) -> Option<usize> {
    if d.provider == "cpu" || !has_provider(status, "gpu") {
        return None;
    }
    status
        .gpus
        .iter()
        .position(|g| g.index == 0)
        .or((!status.gpus.is_empty()).then_some(0))
}

/// Takes `need` off the memory [`free_memory`] counts.
fn take_memory(d: &Deployment, status: &mut WorkerStatus, need: u64) {
    match session_gpu(d, status) {
        Some(i) => {
            let g = &mut status.gpus[i];
            g.memory_free_bytes = g.memory_free_bytes.saturating_sub(need);
        }
        None => status.ram_free_bytes = status.ram_free_bytes.saturating_sub(need),
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
            measured_bytes: m.measured_bytes,
            variants: m
                .variants
                .iter()
                .map(|v| localml_proto::localml::v1::AvailableVariant {
                    name: v.name.clone(),
                    file_bytes: v.files.iter().map(|f| f.size).sum(),
                    measured_bytes: v.measured_bytes,
                })
                .collect(),
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
            let held = status
                .available
                .iter_mut()
                .find(|a| a.name == m.name && a.version == m.version);
            match held {
                // Fetched already (the worker lists it): the catalog's record still says
                // what its variants and measured memory are.
                Some(a) => {
                    a.variants.clone_from(&m.variants);
                    a.measured_bytes = m.measured_bytes;
                    a.file_bytes = m.file_bytes;
                }
                None => status.available.push(m.clone()),
            }
        }
    }
    Ok(workers)
}

/// The RAM `d`'s model is expected to take on `worker`: what a worker measured when it
/// loaded the version (kept in the catalog), else an estimate from its files (ONNX
/// Runtime holds the weights and its working memory: 1.5 times the files); None when the
/// worker does not report it.
/// With variants, the footprint of the one [`choose_variant`] picks, or of the smallest
/// when none fits.
pub fn footprint(d: &Deployment, worker: &WorkerInfo) -> Option<u64> {
    placement(d, worker).map(|(_, need, _)| need)
}

/// How [`footprint`] was found, for messages.
fn footprint_basis(d: &Deployment, worker: &WorkerInfo) -> &'static str {
    placement(d, worker).map_or("1.5 times its files", |(_, _, basis)| basis)
}

/// RAM for a version's files: measured when a worker loaded them, else 1.5 times them.
fn need(file_bytes: u64, measured_bytes: u64) -> (u64, &'static str) {
    match measured_bytes {
        0 => (
            file_bytes.saturating_add(file_bytes / 2),
            "1.5 times its files",
        ),
        measured => (measured, "as measured when a worker loaded it"),
    }
}

/// The variants of `d`'s model for `worker`, in the order it prefers them, with what
/// each needs: on a worker with a GPU the fp16 variant first; then the version's own
/// files (fp32, variant ""); then int8 (for a worker short of RAM); fp16 last on CPU.
fn variants(d: &Deployment, worker: &WorkerInfo) -> Vec<(String, u64, &'static str)> {
    let Some(a) = available(d, worker) else {
        return Vec::new();
    };
    let (own, basis) = need(a.file_bytes, a.measured_bytes);
    let mut out = vec![(String::new(), own, basis)];
    for v in &a.variants {
        let (n, basis) = need(v.file_bytes, v.measured_bytes);
        out.push((v.name.clone(), n, basis));
    }
    let gpu = worker
        .status
        .as_ref()
        .is_some_and(|s| has_provider(s, "gpu"));
    let rank = |name: &str| match (name, gpu) {
        ("fp16", true) => 0,
        ("", _) => 1,
        ("int8", _) => 2,
        _ => 3,
    };
    out.sort_by_key(|(name, _, _)| rank(name));
    out
}

/// The variant [`choose_variant`] takes on `worker` and its need; without one that fits,
/// the smallest.
fn placement(d: &Deployment, worker: &WorkerInfo) -> Option<(String, u64, &'static str)> {
    let free = worker.status.as_ref().map_or(0, |s| free_memory(d, s).0);
    let options = variants(d, worker);
    options
        .iter()
        .find(|(_, need, _)| *need <= free)
        .or_else(|| options.iter().min_by_key(|(_, need, _)| *need))
        .cloned()
}

/// The catalog variant of `d`'s model to place on `worker` ("" for the version's own
/// files): the first of [`variants`]' order that fits its free memory (RAM, or GPU memory
/// where it runs on the GPU: [`free_memory`]).
pub fn choose_variant(d: &Deployment, worker: &WorkerInfo) -> String {
    placement(d, worker)
        .map(|(name, _, _)| name)
        .unwrap_or_default()
}

/// The version of `d`'s model `worker` would load.
fn available<'a>(d: &Deployment, worker: &'a WorkerInfo) -> Option<&'a AvailableModel> {
    worker
        .status
        .as_ref()?
        .available
        .iter()
        .filter(|a| a.name == d.model && (d.version.is_empty() || a.version == d.version))
        .max_by_key(|a| a.version.parse::<u64>().unwrap_or(0))
}

/// Takes `d`'s footprint off worker `name`'s free memory when `when` holds.
/// (The need of `variant` when given and known, else of the variant placement picks.)
fn reserve(
    workers: &mut [WorkerInfo],
    d: &Deployment,
    name: &str,
    variant: Option<&str>,
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
    let need = variant
        .and_then(|v| variant_need(d, w, v))
        .or_else(|| footprint(d, w))
        .unwrap_or(0);
    if let Some(s) = w.status.as_mut() {
        take_memory(d, s, need);
    }
}

/// Whether `d`'s model fits in `worker`'s free memory (unknown sizes fit).
pub fn fits(d: &Deployment, worker: &WorkerInfo) -> bool {
    let free = worker.status.as_ref().map_or(0, |s| free_memory(d, s).0);
    footprint(d, worker).is_none_or(|need| need <= free)
}

/// `a` with the variant chosen for worker `name` (see [`choose_variant`]).
/// A replica keeps the variant it has for a version (what it stored, or what it keeps
/// beside a new version): a variant changes only with the version, so a worker never
/// flaps between two. A deployment that follows the newest version gets the version's
/// own files (a newer version may lack the variant).
fn with_variant(
    d: &Deployment,
    workers: &[WorkerInfo],
    name: &str,
    stored: Option<&Assignment>,
    mut a: Assignment,
) -> Assignment {
    if d.version.is_empty() {
        a.variant.clear();
        return a;
    }
    let same = |n: &str, v: &str| n == a.name && v == a.version;
    if let Some(s) = stored {
        if same(&s.name, &s.version) {
            a.variant = s.variant.clone();
            return a;
        }
        if let Some(k) = s.keep.as_ref().filter(|k| same(&k.name, &k.version)) {
            a.variant = k.variant.clone();
            return a;
        }
    }
    if let Some(w) = workers
        .iter()
        .find(|w| w.status.as_ref().is_some_and(|s| s.name == name))
    {
        a.variant = choose_variant(d, w);
    }
    a
}

/// What variant `variant` of `d`'s model needs on `worker`, when known.
fn variant_need(d: &Deployment, worker: &WorkerInfo, variant: &str) -> Option<u64> {
    variants(d, worker)
        .into_iter()
        .find(|(name, _, _)| name == variant)
        .map(|(_, need, _)| need)
}

/// Whether `worker` serves `d` now (Ready with the model loaded).
pub fn serving(d: &Deployment, worker: &WorkerInfo) -> bool {
    serves(worker, &d.model, &d.version)
}

/// Whether `worker` is Ready with `model` loaded (in `version`, unless it is empty).
fn serves(worker: &WorkerInfo, model: &str, version: &str) -> bool {
    worker.state == WorkerState::Ready as i32
        && worker.status.as_ref().is_some_and(|s| {
            s.models
                .iter()
                .any(|m| m.name == model && (version.is_empty() || m.version == version))
        })
}

/// What `d` assigns a worker once a change has rolled over it.
fn wanted(d: &Deployment) -> Assignment {
    Assignment {
        name: d.model.clone(),
        version: d.version.clone(),
        keep: None,
        variant: String::new(),
    }
}

/// Whether `a` assigns `d`'s model and version (whatever it keeps beside).
fn is_wanted(d: &Deployment, a: &Assignment) -> bool {
    a.name == d.model && a.version == d.version
}

/// The changes that bring `assigned` (worker, assignment) to `d.replicas` workers:
/// (add, remove).
pub fn plan(
    d: &Deployment,
    assigned: &[(String, Assignment)],
    workers: &[WorkerInfo],
) -> (Vec<String>, Vec<String>) {
    let by_name: HashMap<&str, &WorkerInfo> = workers
        .iter()
        .filter_map(|w| w.status.as_ref().map(|s| (s.name.as_str(), w)))
        .collect();
    // Assignments to workers that went away, stopped being Ready, were cordoned or no
    // longer match the spec (selector, provider, version) are given up.
    let (keep, gone): (Vec<_>, Vec<_>) = assigned
        .iter()
        .partition(|(n, _)| by_name.get(n.as_str()).is_some_and(|w| eligible(d, w)));
    let mut remove: Vec<String> = gone.into_iter().map(|(n, _)| n.clone()).collect();
    let want = d.replicas as usize;
    let mut add = Vec::new();
    if keep.len() > want {
        let mut extra = keep.len() - want;
        // While the model or version changes, the replicas beyond the count are surges
        // onto other workers (see [`roll`]): an old replica goes first, and only while
        // the replicas serving something stay at least `replicas - max_unavailable`.
        // Whether a replica serves what its assignment names (the new version, or the
        // old one it keeps or still has).
        let up = |(n, a): &(String, Assignment)| {
            by_name
                .get(n.as_str())
                .is_some_and(|w| refs(a).any(|m| serves(w, &m.name, &m.version)))
        };
        if keep.iter().any(|(_, a)| !is_wanted(d, a)) {
            let mut serving_now = keep.iter().filter(|r| up(r)).count();
            let floor = want.saturating_sub(max_unavailable(d));
            let mut old: Vec<&&(String, Assignment)> =
                keep.iter().filter(|(_, a)| !is_wanted(d, a)).collect();
            old.sort_by_key(|r| (up(r), r.0.clone()));
            for r in old {
                if extra == 0 || (up(r) && serving_now <= floor) {
                    break;
                }
                serving_now -= usize::from(up(r));
                remove.push(r.0.clone());
                extra -= 1;
            }
            // What a surge allows stays; more than that (the count went down
            // meanwhile) goes as below.
            extra = extra.saturating_sub(max_surge(d));
        }
        // Replicas that serve the deployment's version stay first, then those that serve
        // another (an old version while a change rolls), then those still loading; by
        // name within each.
        let mut rest: Vec<&(String, Assignment)> = keep
            .iter()
            .copied()
            .filter(|(n, _)| !remove.contains(n))
            .collect();
        rest.sort_by_key(|r| {
            let serves_now = by_name.get(r.0.as_str()).is_some_and(|w| serving(d, w));
            (!serves_now, !up(r), r.0.clone())
        });
        let stay = rest.len().saturating_sub(extra);
        remove.extend(rest.into_iter().skip(stay).map(|(n, _)| n.clone()));
    } else if keep.len() < want {
        let taken: HashSet<&str> = assigned.iter().map(|(n, _)| n.as_str()).collect();
        add = spare(d, &taken, workers)
            .into_iter()
            .take(want - keep.len())
            .collect();
    }
    (add, remove)
}

/// Workers not in `taken` that could take `d` and have room for it: most free memory
/// first, the name breaking ties so that plans are stable.
fn spare(d: &Deployment, taken: &HashSet<&str>, workers: &[WorkerInfo]) -> Vec<String> {
    let mut candidates: Vec<(u64, String)> = workers
        .iter()
        .filter(|w| eligible(d, w) && fits(d, w))
        .filter_map(|w| w.status.as_ref())
        .filter(|s| !taken.contains(s.name.as_str()))
        .map(|s| (free_memory(d, s).0, s.name.clone()))
        .collect();
    candidates.sort_by_key(|(free, name)| (std::cmp::Reverse(*free), name.clone()));
    candidates.into_iter().map(|(_, name)| name).collect()
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
        crate::catalog::record_footprints(self.store.as_ref(), &workers).await?;
        let mut workers = with_catalog(self.store.as_ref(), workers).await?;
        // RAM promised to models assigned but not served yet (fetching, loading) is not
        // free for another: taken off each worker's free figure before planning. (A
        // replica still on the old version holds its RAM already; what the new one needs
        // is checked when it rolls.)
        for d in &deployments {
            for (name, a) in assigned.get(&d.name).map(Vec::as_slice).unwrap_or_default() {
                if is_wanted(d, a) {
                    reserve(&mut workers, d, name, Some(&a.variant), |d, w| {
                        !serving(d, w)
                    });
                }
            }
        }
        let specs: HashSet<&str> = deployments.iter().map(|d| d.name.as_str()).collect();
        let mut txn = leadership.fenced();
        let mut changes = 0;
        for (deployment, workers) in &assigned {
            if !specs.contains(deployment.as_str()) {
                for (w, _) in workers {
                    txn = txn.delete(&assignment_key(w, deployment));
                    changes += 1;
                }
            }
        }
        for d in &deployments {
            let current = assigned.get(&d.name).cloned().unwrap_or_default();
            let (add, remove) = plan(d, &current, &workers);
            // What this pass assigns is promised too, for the deployments planned after.
            // Each new replica's variant is chosen before its RAM is promised.
            let added: Vec<(String, Assignment)> = add
                .iter()
                .map(|w| {
                    let a = with_variant(d, &workers, w, None, wanted(d));
                    reserve(&mut workers, d, w, Some(&a.variant), |_, _| true);
                    (w.clone(), a)
                })
                .collect();
            for w in &remove {
                tracing::info!(deployment = %d.name, worker = %w, "unassigning");
                txn = txn.delete(&assignment_key(w, &d.name));
                changes += 1;
            }
            let kept: Assigned = current
                .into_iter()
                .filter(|(w, _)| !remove.contains(w))
                .collect();
            let step = roll(d, &kept, &workers, &remove);
            for (w, a) in step.writes {
                let stored = kept.iter().find(|(n, _)| *n == w).map(|(_, a)| a);
                let a = with_variant(d, &workers, &w, stored, a);
                match &a.keep {
                    Some(keep) => {
                        tracing::info!(deployment = %d.name, worker = %w, model = %d.model, version = %d.version, keeps = %keep.version, "rolling: loading the new version beside the old");
                        reserve(&mut workers, d, &w, Some(&a.variant), |_, _| true);
                    }
                    None => {
                        tracing::info!(deployment = %d.name, worker = %w, model = %d.model, version = %d.version, "rolling: moving a replica to the new version")
                    }
                }
                txn = txn.put(&assignment_key(&w, &d.name), a.encode_to_vec(), 0);
                changes += 1;
            }
            for (w, a) in step.surges {
                let a = with_variant(d, &workers, &w, None, a);
                reserve(&mut workers, d, &w, Some(&a.variant), |_, _| true);
                tracing::info!(deployment = %d.name, worker = %w, model = %d.model, version = %d.version, variant = %a.variant, "rolling: loading the new version on a spare worker");
                txn = txn.put(&assignment_key(&w, &d.name), a.encode_to_vec(), 0);
                changes += 1;
            }
            for (w, a) in added {
                tracing::info!(deployment = %d.name, worker = %w, model = %d.model, variant = %a.variant, "assigning");
                txn = txn.put(&assignment_key(&w, &d.name), a.encode_to_vec(), 0);
                changes += 1;
            }
        }
        if changes > 0 && self.store.commit(txn).await?.is_none() {
            tracing::info!("deployments: leadership changed; not writing");
        }
        Ok(())
    }
}

/// One step of a rolling change (a deployment's model or version changed).
#[derive(Debug, Default, PartialEq)]
pub struct Roll {
    /// New assignments, by worker.
    pub writes: Vec<(String, Assignment)>,
    /// Surges onto workers the deployment did not use: each loads the new version while
    /// the old replicas serve, and one old replica goes once it serves (see [`plan`]).
    pub surges: Vec<(String, Assignment)>,
    /// Why a replica cannot move now, when it is stuck rather than waiting its turn.
    pub blocked: Option<String>,
}

/// The next step of a rolling change over `kept` (workers assigned to `d`, by name):
/// - a replica that serves the new version stops keeping the old one (it unloads);
/// - up to `max_surge` replicas at once load the new version on a spare worker (one the
///   deployment does not use, with room for it), else beside the old version on the
///   replica's own worker where it has room for both; the old version serves meanwhile;
/// - up to `max_unavailable` replicas at once drop the old version before the new serves;
/// - a replica that serves nothing anyway moves at once.
///
/// `freed`: workers whose assignment this pass deletes; one of them that would be the
/// spare becomes it at the next pass (one store transaction cannot delete and write the
/// same key), and the replica it would take waits for it.
pub fn roll(
    d: &Deployment,
    kept: &[(String, Assignment)],
    workers: &[WorkerInfo],
    freed: &[String],
) -> Roll {
    let by_name = |name: &str| {
        workers
            .iter()
            .find(|w| w.status.as_ref().is_some_and(|s| s.name == name))
    };
    // What a replica on an older assignment serves now: its version, else the one it
    // keeps (the deployment changed again while it loaded the version before).
    let serving_now = |name: &str, a: &Assignment| {
        let w = by_name(name)?;
        refs(a).find(|m| serves(w, &m.name, &m.version))
    };
    let mut step = Roll::default();
    let want = d.replicas as usize;
    // Replicas beyond the count are surges onto spare workers, each standing for an old
    // replica that goes once they serve.
    let extras = kept.len().saturating_sub(want);
    let (mut surging, mut loading) = (extras, 0usize);
    let mut old = Vec::new();
    for (w, a) in kept {
        let new_serves = by_name(w).is_some_and(|x| serving(d, x));
        match (is_wanted(d, a), &a.keep) {
            (true, Some(_)) if new_serves => step.writes.push((w.clone(), wanted(d))),
            (true, Some(_)) => surging += 1,
            (true, None) if !new_serves => loading += 1,
            (true, None) => {}
            // It serves the new version already (loaded beside another one, or a rollback
            // to the version it keeps): the others go.
            (false, _) if new_serves => step.writes.push((w.clone(), wanted(d))),
            (false, _) => match serving_now(w, a) {
                Some(keep) => old.push((w, keep)),
                // It serves nothing anyway: nothing to keep.
                None => step.writes.push((w.clone(), wanted(d))),
            },
        }
    }
    // Loading without a surge's keep and not a surge onto a spare: swapped in place.
    let mut unavailable = loading.saturating_sub(extras);
    let taken: HashSet<&str> = kept.iter().map(|(n, _)| n.as_str()).collect();
    // While short of replicas the plan adds workers first.
    let mut spares = if kept.len() >= want {
        spare(d, &taken, workers)
    } else {
        Vec::new()
    }
    .into_iter();
    for (w, keep) in old.into_iter().skip(extras) {
        let fits_both = by_name(w).is_some_and(|x| fits(d, x));
        if surging < max_surge(d) {
            if let Some(other) = spares.next() {
                if !freed.contains(&other) {
                    step.surges.push((other, wanted(d)));
                }
                surging += 1;
                continue;
            }
        }
        if surging < max_surge(d) && fits_both {
            step.writes.push((
                w.clone(),
                Assignment {
                    keep: Some(keep),
                    ..wanted(d)
                },
            ));
            surging += 1;
        } else if unavailable < max_unavailable(d) {
            step.writes.push((w.clone(), wanted(d)));
            unavailable += 1;
        } else if surging == 0 && unavailable == 0 && step.blocked.is_none() {
            // Nothing in progress and this replica cannot move: stuck, not waiting.
            let worker = by_name(w);
            let need = worker.and_then(|x| footprint(d, x)).unwrap_or(0);
            let (free, kind) = worker
                .and_then(|x| x.status.as_ref())
                .map_or((0, "RAM"), |s| free_memory(d, s));
            step.blocked = Some(format!(
                "{w} has no {kind} for both versions (the new needs about {}, {} free), no spare worker has room for the new one, and max_unavailable is {}: raise it to let a replica swap in place, or add a worker",
                human_bytes(need),
                human_bytes(free),
                max_unavailable(d),
            ));
        }
    }
    step
}

/// Fills a deployment's status fields from the cluster.
pub fn with_status(
    d: &Deployment,
    assignments: &[(String, Assignment)],
    workers: &[WorkerInfo],
) -> Deployment {
    let assigned = names(assignments);
    let mut out = d.clone();
    out.workers = assigned.clone();
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
        let (need, basis) = unassigned
            .iter()
            .filter_map(|w| Some((footprint(d, w)?, footprint_basis(d, w))))
            .min()
            .unwrap_or((0, "1.5 times its files"));
        let largest = unassigned
            .iter()
            .filter_map(|w| w.status.as_ref())
            .max_by_key(|s| free_memory(d, s).0);
        let (free, kind) = largest.map_or((0, "RAM"), |s| free_memory(d, s));
        out.message = format!(
            "Pending: {} of {} replicas placed; '{}' needs about {} of {kind} ({basis}), the largest free is {} on {}",
            assigned.len(),
            d.replicas,
            d.model,
            human_bytes(need),
            human_bytes(free),
            largest.map_or("", |s| s.name.as_str()),
        );
    } else if assignments
        .iter()
        .any(|(_, a)| !is_wanted(d, a) || a.keep.is_some())
    {
        let version = if d.version.is_empty() {
            "the newest version".to_string()
        } else {
            format!("version {}", d.version)
        };
        out.message = format!(
            "Rolling to '{}' {version}: {} of {} replicas serve it",
            d.model, out.ready_replicas, d.replicas
        );
        if let Some(why) = roll(d, assignments, workers, &[]).blocked {
            out.message = format!("{}; waiting: {why}", out.message);
        }
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
                        measured_bytes: 0,
                        variants: Vec::new(),
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

    /// `workers` assigned deployment(n)'s model (no version: the newest).
    fn to(workers: &[&str]) -> Assigned {
        workers.iter().map(|w| (w.to_string(), on(""))).collect()
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
        let (add, remove) = plan(&deployment(1), &to(&["b", "e"]), &workers);
        assert_eq!((add, remove), (vec![], vec!["e".into()]));
        // The one that serves stays, whatever its name.
        let mut serving_e = workers.clone();
        if let Some(s) = serving_e[4].status.as_mut() {
            s.models = vec![localml_proto::localml::v1::LoadedModel {
                name: "m".into(),
                version: "1".into(),
                ..Default::default()
            }];
        }
        let (_, remove) = plan(&deployment(1), &to(&["b", "e"]), &serving_e);
        assert_eq!(remove, vec!["b".to_string()]);
        let (add, remove) = plan(&deployment(3), &to(&["a"]), &workers);
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
        let (add, remove) = plan(&deployment(2), &to(&["b", "e", "gone"]), &workers);
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
            Some(Assignment {
                name: "m".into(),
                ..Default::default()
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
        let assigned: Assigned = add.iter().map(|w| (w.clone(), wanted(&big))).collect();
        let status = with_status(&big, &assigned, &workers);
        assert_eq!(
            status.message,
            "Pending: 1 of 2 replicas placed; 'm' needs about 6.0 GiB of RAM (1.5 times its files), the largest free is 2.0 GiB on a"
        );
        // A worker already holding it is kept, whatever its free RAM says now.
        let (add, remove) = plan(&big, &to(&["a"]), &workers);
        assert!(remove.is_empty(), "{remove:?}");
        assert_eq!(add, ["b"]);
    }

    #[test]
    fn on_a_gpu_the_model_must_fit_the_gpu_memory() {
        let gpu_worker = |name: &str, ram_gib: u64, vram_gib: &[u64]| {
            let mut w = worker(name, ram_gib, true, true);
            if let Some(s) = w.status.as_mut() {
                s.available[0].file_bytes = 2 << 30; // about 3 GiB
                s.execution_providers = vec![
                    "CUDAExecutionProvider".into(),
                    "CPUExecutionProvider".into(),
                ];
                s.gpus = vram_gib
                    .iter()
                    .enumerate()
                    .map(|(i, g)| localml_proto::localml::v1::Gpu {
                        index: i as u32,
                        memory_total_bytes: 8 << 30,
                        memory_free_bytes: g << 30,
                        ..Default::default()
                    })
                    .collect();
            }
            w
        };
        let d = deployment(1);
        // 32 GiB of RAM free, but GPU 0 has 2 GiB: it runs there, so Pending (the room on
        // its second GPU does not help: sessions run on device 0).
        let small = gpu_worker("small-gpu", 32, &[2, 6]);
        assert!(!fits(&d, &small));
        let status = with_status(&d, &[], std::slice::from_ref(&small));
        assert_eq!(
            status.message,
            "Pending: 0 of 1 replicas placed; 'm' needs about 3.0 GiB of GPU memory (1.5 times its files), the largest free is 2.0 GiB on small-gpu"
        );
        // A deployment for the CPU counts RAM there; a GPU with room takes it.
        let mut on_cpu = d.clone();
        on_cpu.provider = "cpu".into();
        assert!(fits(&on_cpu, &small));
        let roomy = gpu_worker("roomy-gpu", 4, &[6, 1]);
        assert!(fits(&d, &roomy), "6 GiB free on GPU 0");
        let (add, _) = plan(&d, &[], &[small.clone(), roomy.clone()]);
        assert_eq!(add, ["roomy-gpu"]);
        // What is promised comes off that GPU's free memory, not off RAM.
        let mut workers = vec![roomy];
        reserve(&mut workers, &d, "roomy-gpu", None, |_, _| true);
        let s = workers[0].status.clone().unwrap_or_default();
        assert_eq!(s.ram_free_bytes, 4 << 30);
        assert_eq!(s.gpus[0].memory_free_bytes, 3 << 30);
        // A worker that reports no GPU counts RAM, whatever its providers.
        let mut no_gpu = gpu_worker("no-gpu", 4, &[]);
        assert!(fits(&d, &no_gpu));
        if let Some(s) = no_gpu.status.as_mut() {
            s.ram_free_bytes = 1 << 30;
        }
        assert!(!fits(&d, &no_gpu));
    }

    #[test]
    fn a_measured_footprint_replaces_the_estimate_from_the_files() {
        let d = deployment(1);
        let mut w = worker("a", 2, true, true);
        assert_eq!(footprint(&d, &w), Some(15), "1.5 times 10 bytes of files");
        if let Some(s) = w.status.as_mut() {
            s.available[0].measured_bytes = 3 << 30;
        }
        assert_eq!(footprint(&d, &w), Some(3 << 30));
        assert!(!fits(&d, &w), "3 GiB measured, 2 GiB free");
        let status = with_status(&d, &[], &[w]);
        assert!(
            status
                .message
                .contains("needs about 3.0 GiB of RAM (as measured when a worker loaded it)"),
            "{}",
            status.message
        );
    }

    #[test]
    fn variants_go_where_they_suit_fp16_on_a_gpu_int8_where_ram_is_short() {
        let d = deployment(1);
        let with_variants = |free: u64, gpu: bool| {
            let mut w = worker("a", 0, true, true);
            if let Some(s) = w.status.as_mut() {
                s.ram_free_bytes = free;
                s.available[0].file_bytes = 1000; // needs 1500
                s.available[0].variants = vec![
                    localml_proto::localml::v1::AvailableVariant {
                        name: "int8".into(),
                        file_bytes: 300, // needs 450
                        measured_bytes: 0,
                    },
                    localml_proto::localml::v1::AvailableVariant {
                        name: "fp16".into(),
                        file_bytes: 500, // needs 750
                        measured_bytes: 0,
                    },
                ];
                if gpu {
                    s.execution_providers = vec![
                        "CUDAExecutionProvider".into(),
                        "CPUExecutionProvider".into(),
                    ];
                }
            }
            w
        };
        assert_eq!(choose_variant(&d, &with_variants(10_000, false)), "");
        assert_eq!(choose_variant(&d, &with_variants(10_000, true)), "fp16");
        assert_eq!(
            choose_variant(&d, &with_variants(1000, false)),
            "int8",
            "fp32 needs 1500"
        );
        assert_eq!(
            choose_variant(&d, &with_variants(600, true)),
            "int8",
            "fp16 needs 750"
        );
        // What is promised is the chosen variant's need.
        assert_eq!(footprint(&d, &with_variants(1000, false)), Some(450));
        assert!(fits(&d, &with_variants(450, false)));
        // Nothing fits: Pending names the smallest need.
        let tight = with_variants(100, false);
        assert!(!fits(&d, &tight));
        assert_eq!(footprint(&d, &tight), Some(450));
    }

    #[test]
    fn a_replica_keeps_its_variant_for_a_version() {
        let d = to_v2(None, None);
        // Roomy worker: placement alone would pick the version's own files.
        let workers = vec![serving_versions("a", &["2"])];
        let int8 = |version: &str| Assignment {
            variant: "int8".into(),
            ..on(version)
        };
        // The surge ends (keep dropped): the variant it loaded stays.
        let stored = Assignment {
            keep: Some(ModelRef {
                name: "m".into(),
                version: "1".into(),
                variant: "fp32".into(),
            }),
            ..int8("2")
        };
        let a = with_variant(&d, &workers, "a", Some(&stored), on("2"));
        assert_eq!(a.variant, "int8");
        // A rollback to the version it keeps: that version's variant.
        let d1 = Deployment {
            version: "1".into(),
            ..d.clone()
        };
        let a = with_variant(&d1, &workers, "a", Some(&stored), on("1"));
        assert_eq!(a.variant, "fp32");
        // A new version: chosen afresh. Following the newest version: its own files.
        let a = with_variant(&d, &workers, "a", Some(&int8("1")), on("2"));
        assert_eq!(a.variant, "");
        let newest = Deployment {
            version: String::new(),
            ..d.clone()
        };
        let a = with_variant(&newest, &workers, "a", Some(&int8("")), on(""));
        assert_eq!(a.variant, "");
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
        reserve(&mut workers, &first, "a", None, |_, _| true);
        let (add, _) = plan(&second, &[], &workers);
        assert!(add.is_empty(), "{add:?}");
        assert!(with_status(&second, &[], &workers)
            .message
            .starts_with("Pending: "));
    }

    /// Worker `name` (8 GiB free, `m` versions 1 and 2 of 10 bytes available) serving
    /// `versions` of `m`.
    fn serving_versions(name: &str, versions: &[&str]) -> WorkerInfo {
        let mut w = worker(name, 8, true, true);
        if let Some(s) = w.status.as_mut() {
            s.available.push(AvailableModel {
                name: "m".into(),
                version: "2".into(),
                file_bytes: 10,
                measured_bytes: 0,
                variants: Vec::new(),
            });
            s.models = versions
                .iter()
                .map(|v| localml_proto::localml::v1::LoadedModel {
                    name: "m".into(),
                    version: v.to_string(),
                    ..Default::default()
                })
                .collect();
        }
        w
    }

    fn to_v2(max_surge: Option<u32>, max_unavailable: Option<u32>) -> Deployment {
        Deployment {
            version: "2".into(),
            max_surge,
            max_unavailable,
            ..deployment(2)
        }
    }

    fn on(version: &str) -> Assignment {
        Assignment {
            name: "m".into(),
            version: version.into(),
            keep: None,
            variant: String::new(),
        }
    }

    fn surging(from: &str) -> Assignment {
        Assignment {
            keep: Some(ModelRef {
                name: "m".into(),
                version: from.into(),
                variant: String::new(),
            }),
            ..on("2")
        }
    }

    fn kept(a: Assignment, b: Assignment) -> Assigned {
        vec![("a".to_string(), a), ("b".to_string(), b)]
    }

    #[test]
    fn a_rolling_change_loads_the_new_version_beside_the_old_one_replica_at_a_time() {
        let d = to_v2(None, None);
        let both_on_v1 = vec![serving_versions("a", &["1"]), serving_versions("b", &["1"])];
        // Both on v1: a loads v2 beside v1 (surge 1); b waits, serving v1.
        let step = roll(&d, &kept(on("1"), on("1")), &both_on_v1, &[]);
        assert_eq!(step.writes, vec![("a".to_string(), surging("1"))]);
        assert_eq!(step.blocked, None);
        // a loads v2 (and keeps v1): nothing more.
        let step = roll(&d, &kept(surging("1"), on("1")), &both_on_v1, &[]);
        assert_eq!(step, Roll::default());
        // a serves v2: it drops v1, and b starts.
        let workers = vec![
            serving_versions("a", &["1", "2"]),
            serving_versions("b", &["1"]),
        ];
        let step = roll(&d, &kept(surging("1"), on("1")), &workers, &[]);
        assert_eq!(
            step.writes,
            vec![("a".to_string(), on("2")), ("b".to_string(), surging("1"))]
        );
        // Both on v2: done.
        let workers = vec![serving_versions("a", &["2"]), serving_versions("b", &["2"])];
        assert_eq!(
            roll(&d, &kept(on("2"), on("2")), &workers, &[]),
            Roll::default()
        );
        // A surge of 2 moves both at once.
        let step = roll(
            &to_v2(Some(2), None),
            &kept(on("1"), on("1")),
            &both_on_v1,
            &[],
        );
        assert_eq!(
            step.writes,
            vec![
                ("a".to_string(), surging("1")),
                ("b".to_string(), surging("1"))
            ]
        );
        // Changed again to v3 while a was loading v2 beside v1: a keeps serving v1 and
        // loads v3 beside it (not dropping v1 for a v2 that never served).
        let v3 = Deployment {
            version: "3".into(),
            ..d.clone()
        };
        let mut workers = both_on_v1.clone();
        for w in &mut workers {
            if let Some(s) = w.status.as_mut() {
                s.available.push(AvailableModel {
                    name: "m".into(),
                    version: "3".into(),
                    file_bytes: 10,
                    measured_bytes: 0,
                    variants: Vec::new(),
                });
            }
        }
        let step = roll(&v3, &kept(surging("1"), on("1")), &workers, &[]);
        let v3_keeping_v1 = Assignment {
            version: "3".into(),
            ..surging("1")
        };
        assert_eq!(step.writes, vec![("a".to_string(), v3_keeping_v1)]);
        // Rolled back to v1 while a holds v2 beside v1: a serves v1 already; v2 goes.
        let d1 = Deployment {
            version: "1".into(),
            ..d.clone()
        };
        let workers = vec![
            serving_versions("a", &["1", "2"]),
            serving_versions("b", &["1"]),
        ];
        let step = roll(&d1, &kept(surging("1"), on("1")), &workers, &[]);
        assert_eq!(step.writes, vec![("a".to_string(), on("1"))]);
        // A replica that serves nothing anyway (still loading v1) moves at once.
        let workers = vec![serving_versions("a", &[]), serving_versions("b", &["1"])];
        let step = roll(&d, &kept(on("1"), on("1")), &workers, &[]);
        assert_eq!(
            step.writes,
            vec![("a".to_string(), on("2")), ("b".to_string(), surging("1"))]
        );
    }

    #[test]
    fn a_rolling_change_surges_onto_a_spare_worker_and_drops_an_old_replica_once_it_serves() {
        let d = to_v2(None, None);
        let serving = |a: &[&str], b: &[&str], c: &[&str]| {
            vec![
                serving_versions("a", a),
                serving_versions("b", b),
                serving_versions("c", c),
            ]
        };
        let with = |c: Assignment| {
            let mut k = kept(on("1"), on("1"));
            k.push(("c".to_string(), c));
            k
        };
        // a and b serve v1, c is spare with room: c loads v2 and neither a nor b loads
        // a second version.
        let workers = serving(&["1"], &["1"], &[]);
        let step = roll(&d, &kept(on("1"), on("1")), &workers, &[]);
        assert_eq!(
            step,
            Roll {
                surges: vec![("c".to_string(), on("2"))],
                ..Roll::default()
            }
        );
        // While c loads, the old replicas are what serves: none goes, nothing more moves.
        assert_eq!(plan(&d, &with(on("2")), &workers), (vec![], vec![]));
        assert_eq!(roll(&d, &with(on("2")), &workers, &[]), Roll::default());
        // c serves v2: an old replica goes (a, by name), and the next surge goes onto the
        // worker it frees.
        let workers = serving(&["1"], &["1"], &["2"]);
        assert_eq!(
            plan(&d, &with(on("2")), &workers),
            (vec![], vec!["a".to_string()])
        );
        let left = vec![("b".to_string(), on("1")), ("c".to_string(), on("2"))];
        let freed = ["a".to_string()];
        // In the pass that frees it, a is not written again (one store transaction cannot
        // delete and write a key) and b waits for it rather than loading beside v1.
        assert_eq!(roll(&d, &left, &workers, &freed), Roll::default());
        let step = roll(&d, &left, &workers, &[]);
        assert_eq!(step.surges, vec![("a".to_string(), on("2"))]);
        assert!(step.writes.is_empty(), "{step:?}");
        // An old replica that serves nothing goes first, whatever its name.
        let workers = serving(&[], &["1"], &["2"]);
        assert_eq!(
            plan(&d, &with(on("2")), &workers),
            (vec![], vec!["a".to_string()])
        );
        // max_unavailable 1: one old replica may go before the surge serves.
        let loose = to_v2(None, Some(1));
        let workers = serving(&["1"], &["1"], &[]);
        assert_eq!(
            plan(&loose, &with(on("2")), &workers),
            (vec![], vec!["a".to_string()])
        );
        // Scaled down to 1 while rolling: beyond the surge, the rest goes too.
        let one = Deployment {
            replicas: 1,
            ..d.clone()
        };
        let (_, remove) = plan(&one, &with(on("2")), &workers);
        assert_eq!(remove.len(), 1, "{remove:?}");
        // Cut to one replica and max_surge 1 while two surges load: the old replica that
        // serves stays (whatever its name), a loading surge goes.
        let workers = vec![
            serving_versions("c", &[]),
            serving_versions("d", &[]),
            serving_versions("z", &["1"]),
        ];
        let three = vec![
            ("c".to_string(), on("2")),
            ("d".to_string(), on("2")),
            ("z".to_string(), on("1")),
        ];
        assert_eq!(
            plan(&one, &three, &workers),
            (vec![], vec!["d".to_string()])
        );
        // A spare without room for the new version is no surge: beside the old one.
        let mut workers = serving(&["1"], &["1"], &[]);
        if let Some(s) = workers[2].status.as_mut() {
            s.ram_free_bytes = 5;
        }
        let step = roll(&d, &kept(on("1"), on("1")), &workers, &[]);
        assert_eq!(step.writes, vec![("a".to_string(), surging("1"))]);
        assert!(step.surges.is_empty(), "{step:?}");
    }

    #[test]
    fn without_ram_for_both_versions_a_replica_swaps_only_when_allowed_and_says_so() {
        let mut workers = vec![serving_versions("a", &["1"]), serving_versions("b", &["1"])];
        for w in &mut workers {
            if let Some(s) = w.status.as_mut() {
                s.ram_free_bytes = 5;
            }
        }
        // Surge only (the default): stuck, and the status says why and what to do.
        let d = to_v2(None, None);
        let step = roll(&d, &kept(on("1"), on("1")), &workers, &[]);
        assert!(step.writes.is_empty(), "{step:?}");
        let why = step.blocked.expect("blocked");
        assert_eq!(
            why,
            "a has no RAM for both versions (the new needs about 15 B, 5 B free), no spare worker has room for the new one, and max_unavailable is 0: raise it to let a replica swap in place, or add a worker"
        );
        let status = with_status(&d, &kept(on("1"), on("1")), &workers);
        assert_eq!(
            status.message,
            format!("Rolling to 'm' version 2: 0 of 2 replicas serve it; waiting: {why}")
        );
        // max_unavailable 1: one replica at a time drops v1 and loads v2.
        let d = to_v2(None, Some(1));
        let step = roll(&d, &kept(on("1"), on("1")), &workers, &[]);
        assert_eq!(step.writes, vec![("a".to_string(), on("2"))]);
        let step = roll(&d, &kept(on("2"), on("1")), &workers, &[]);
        assert_eq!(step, Roll::default(), "b waits until a serves v2");
        // Both 0 is refused.
        let e = validate(&to_v2(Some(0), Some(0))).expect_err("both 0");
        assert!(e.to_string().contains("max_surge"), "{e}");
        assert!(validate(&to_v2(Some(0), Some(1))).is_ok());
    }

    #[test]
    fn a_change_remembers_what_it_replaced_for_a_rollback() {
        let v1 = Deployment {
            version: "1".into(),
            ..deployment(1)
        };
        let first = revise(None, v1.clone());
        assert_eq!(rollback(&first), None, "nothing before the first spec");
        let v2 = revise(Some(&first), to_v2(None, None));
        assert_eq!(
            (v2.previous_model.as_str(), v2.previous_version.as_str()),
            ("m", "1")
        );
        // A change of replicas only keeps the memory.
        let scaled = revise(
            Some(&v2),
            Deployment {
                replicas: 5,
                ..to_v2(None, None)
            },
        );
        assert_eq!(scaled.previous_version, "1");
        let back = rollback(&scaled).expect("rollback");
        assert_eq!(
            (
                back.version.as_str(),
                back.replicas,
                back.previous_version.as_str()
            ),
            ("1", 5, "2")
        );
        // Rolling back twice goes forward again.
        assert_eq!(rollback(&back).expect("again").version, "2");
    }

    #[test]
    fn a_worker_keeps_the_old_version_its_assignment_keeps() {
        let assignments = Assignments::default();
        assignments.set("assignments/w1/d", Some(surging("1")));
        let status = WorkerStatus {
            name: "w1".into(),
            on_demand: true,
            models: vec![localml_proto::localml::v1::LoadedModel {
                name: "m".into(),
                version: "1".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let (load, unload) = assignments.instructions(&status);
        assert_eq!(
            (load, unload),
            (
                vec![ModelRef {
                    name: "m".into(),
                    version: "2".into(),
                    variant: String::new(),
                }],
                vec![]
            )
        );
        // Once the keep is gone, v1 unloads.
        assignments.set("assignments/w1/d", Some(on("2")));
        let (_, unload) = assignments.instructions(&status);
        assert_eq!(unload.len(), 1);
        assert_eq!(unload[0].version, "1");
    }
}
