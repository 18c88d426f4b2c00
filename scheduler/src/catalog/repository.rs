//! Triton's model repository extension at cluster level, so standard clients manage
//! models (`tritonclient`'s `get_model_repository_index`, `load_model`, `unload_model`):
//!
//! - RepositoryIndex: every catalog version and every model a worker serves, READY when a
//!   Ready worker serves it, else UNAVAILABLE with the reason.
//! - RepositoryModelLoad: with `file:<version>/<path>` parameters, adds that version to the
//!   catalog (its `config` parameter, Triton's JSON model config, gives `max_batch_size`);
//!   then makes sure a deployment named after the model exists (1 replica) and waits,
//!   within the client's deadline and at most a minute, until a worker serves it.
//! - RepositoryModelUnload: deletes the deployments of the model; its workers unload it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use localml_proto::inference::model_repository_parameter::ParameterChoice;
use localml_proto::inference::repository_index_response::ModelIndex;
use localml_proto::inference::*;
use localml_proto::localml::v1::{CatalogFile, CatalogModel, Deployment, WorkerState};
use prost::Message;
use tonic::Status;

use super::{check_name, Catalog, CatalogError};
use crate::deployments::DEPLOYMENTS;
use crate::workers::Workers;

/// The longest a load waits for a worker to serve the model.
const LOAD_WAIT: Duration = Duration::from_secs(60);

/// (name, version) served by a Ready worker now.
fn served(workers: &Workers) -> HashSet<(String, String)> {
    workers
        .list(tokio::time::Instant::now())
        .into_iter()
        .filter(|w| w.state == WorkerState::Ready as i32)
        .filter_map(|w| w.status)
        .flat_map(|s| s.models.into_iter().map(|m| (m.name, m.version)))
        .collect()
}

pub async fn index(
    catalog: &Catalog,
    workers: &Workers,
    r: RepositoryIndexRequest,
) -> Result<RepositoryIndexResponse, Status> {
    let served = served(workers);
    let mut models: BTreeMap<(String, u64), ModelIndex> = BTreeMap::new();
    let number = |v: &str| v.parse::<u64>().unwrap_or(0);
    for m in catalog.list().await? {
        let ready = served.contains(&(m.name.clone(), m.version.clone()));
        let entry = ModelIndex {
            name: m.name.clone(),
            version: m.version.clone(),
            state: if ready { "READY" } else { "UNAVAILABLE" }.into(),
            reason: if ready {
                String::new()
            } else {
                "in the catalog; no Ready worker serves it (deploy it, or load it)".into()
            },
        };
        models.insert((m.name, number(&m.version)), entry);
    }
    for (name, version) in served {
        let key = (name.clone(), number(&version));
        models.entry(key).or_insert(ModelIndex {
            name,
            version,
            state: "READY".into(),
            reason: String::new(),
        });
    }
    let models = models
        .into_values()
        .filter(|m| !r.ready || m.state == "READY")
        .collect();
    Ok(RepositoryIndexResponse { models })
}

/// One `file:<version>/<path>` parameter.
struct SentFile<'a> {
    version: String,
    path: String,
    bytes: &'a [u8],
}

/// The `file:` parameters; all in one version.
fn files(
    parameters: &std::collections::HashMap<String, ModelRepositoryParameter>,
) -> Result<Vec<SentFile<'_>>, Status> {
    let mut out = Vec::new();
    for (key, value) in parameters {
        let Some(path) = key.strip_prefix("file:") else {
            continue;
        };
        let Some(ParameterChoice::BytesParam(bytes)) = &value.parameter_choice else {
            return Err(Status::invalid_argument(format!(
                "parameter '{key}' must hold the file's bytes"
            )));
        };
        let Some((version, inside)) = path.split_once('/') else {
            return Err(Status::invalid_argument(format!(
                "parameter '{key}': expected file:<version>/<path>, e.g. file:1/model.onnx"
            )));
        };
        out.push(SentFile {
            version: version.to_string(),
            path: inside.to_string(),
            bytes: bytes.as_slice(),
        });
    }
    let versions: HashSet<&str> = out.iter().map(|f| f.version.as_str()).collect();
    if versions.len() > 1 {
        return Err(Status::invalid_argument(
            "the file: parameters name more than one version directory; load one version at a time",
        ));
    }
    Ok(out)
}

/// Triton's JSON model config (the `config` parameter of a load) as the worker's
/// config.yaml: the fields localml has (docs/models.md, "Triton's repository API").
fn config_yaml(
    parameters: &std::collections::HashMap<String, ModelRepositoryParameter>,
) -> Result<String, Status> {
    let Some(value) = parameters.get("config") else {
        return Ok(String::new());
    };
    let Some(ParameterChoice::StringParam(text)) = &value.parameter_choice else {
        return Err(Status::invalid_argument(
            "parameter 'config' must be a string (the model config as JSON)",
        ));
    };
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Status::invalid_argument(format!("parameter 'config' is not JSON: {e}")))?;
    triton_config_yaml(&json)
        .map_err(|e| Status::invalid_argument(format!("parameter 'config': {e}")))
}

/// The fields of Triton's model config localml takes; any other is refused by name, so a
/// setting is never silently dropped.
const TRITON_FIELDS: &[&str] = &[
    "name",
    "platform",
    "backend",
    "default_model_filename",
    "max_batch_size",
    "version_policy",
    "input",
    "output",
    "instance_group",
    "dynamic_batching",
    "parameters",
];

/// Triton's model config JSON as config.yaml: max_batch_size; instance_group's counts (as
/// `instances`) and kinds (KIND_GPU: `[cuda, cpu]`, KIND_CPU: `[cpu]`); version_policy
/// latest (one version) or all; input and output dims; dynamic_batching; and the
/// `localml.task` parameter (the task as JSON, as localml's own config gives it).
fn triton_config_yaml(json: &serde_json::Value) -> Result<String, String> {
    use serde_json::{json, Map, Value};
    let config = json.as_object().ok_or("must be a JSON object")?;
    if let Some(other) = config.keys().find(|k| !TRITON_FIELDS.contains(&k.as_str())) {
        return Err(format!(
            "field '{other}' is not supported by localml (supported: {})",
            TRITON_FIELDS.join(", ")
        ));
    }
    for (field, wanted) in [("platform", "onnxruntime_onnx"), ("backend", "onnxruntime")] {
        match config.get(field).and_then(Value::as_str) {
            None | Some("") => {}
            Some(v) if v == wanted => {}
            Some(v) => {
                return Err(format!(
                    "{field} '{v}': localml runs ONNX models ({wanted})"
                ))
            }
        }
    }
    let mut out = Map::new();
    if let Some(n) = config.get("max_batch_size") {
        let n = n
            .as_u64()
            .filter(|n| u32::try_from(*n).is_ok())
            .ok_or("max_batch_size must be a whole number up to 4294967295")?;
        out.insert("max_batch_size".into(), json!(n));
    }
    if let Some(policy) = config.get("version_policy").and_then(Value::as_object) {
        let choice = match (policy.get("latest"), policy.get("all")) {
            (Some(latest), None) => {
                let n = latest
                    .get("num_versions")
                    .and_then(Value::as_u64)
                    .unwrap_or(1);
                if n != 1 {
                    return Err(format!(
                        "version_policy latest with num_versions {n}: localml serves the latest one or all"
                    ));
                }
                "latest"
            }
            (None, Some(_)) => "all",
            _ => return Err("version_policy must be {\"latest\": {...}} or {\"all\": {}}".into()),
        };
        out.insert("version_policy".into(), json!(choice));
    }
    for (field, key) in [("input", "inputs"), ("output", "outputs")] {
        let Some(list) = config.get(field) else {
            continue;
        };
        let list = list.as_array().ok_or(format!("{field} must be a list"))?;
        let mut overrides = Vec::new();
        for t in list {
            let name = t
                .get("name")
                .and_then(Value::as_str)
                .ok_or(format!("every {field} needs a name"))?;
            if let Some(dims) = t.get("dims") {
                let dims: Vec<i64> = dims
                    .as_array()
                    .and_then(|d| {
                        d.iter()
                            .map(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
                            .collect()
                    })
                    .ok_or(format!("{field} '{name}': dims must be a list of numbers"))?;
                overrides.push(json!({"name": name, "dims": dims}));
            }
        }
        if !overrides.is_empty() {
            out.insert(key.into(), Value::Array(overrides));
        }
    }
    if let Some(groups) = config.get("instance_group") {
        let groups = groups.as_array().ok_or("instance_group must be a list")?;
        let mut count = 0u64;
        let mut kinds = Vec::new();
        for g in groups {
            count += g
                .get("count")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .min(1024);
            match g.get("kind").and_then(Value::as_str).unwrap_or("KIND_AUTO") {
                "KIND_AUTO" => {}
                "KIND_GPU" => kinds.push("gpu"),
                "KIND_CPU" => kinds.push("cpu"),
                other => {
                    return Err(format!(
                    "instance_group kind '{other}': localml knows KIND_AUTO, KIND_GPU and KIND_CPU"
                ))
                }
            }
        }
        if count > 0 {
            out.insert("instances".into(), json!(count));
        }
        // One kind for the model: GPU first (with the CPU as its fallback), or CPU only.
        if kinds.contains(&"gpu") {
            out.insert("execution_providers".into(), json!(["cuda", "cpu"]));
        } else if kinds.contains(&"cpu") {
            out.insert("execution_providers".into(), json!(["cpu"]));
        }
    }
    if let Some(batching) = config.get("dynamic_batching") {
        let b = batching
            .as_object()
            .ok_or("dynamic_batching must be an object")?;
        let mut d = Map::new();
        if let Some(delay) = b.get("max_queue_delay_microseconds") {
            let delay = delay
                .as_u64()
                .or_else(|| delay.as_str()?.parse().ok())
                .ok_or("dynamic_batching.max_queue_delay_microseconds must be a number")?;
            d.insert("max_queue_delay_microseconds".into(), json!(delay));
        }
        if let Some(sizes) = b.get("preferred_batch_size") {
            let sizes: Vec<u32> = sizes
                .as_array()
                .and_then(|s| s.iter().map(|v| u32::try_from(v.as_u64()?).ok()).collect())
                .ok_or("dynamic_batching.preferred_batch_size must be a list of batch sizes")?;
            d.insert("preferred_batch_size".into(), json!(sizes));
        }
        out.insert("dynamic_batching".into(), Value::Object(d));
    }
    if let Some(parameters) = config.get("parameters").and_then(Value::as_object) {
        for (key, value) in parameters {
            if key != "localml.task" {
                return Err(format!(
                    "parameter '{key}' is not one localml has (localml.task is)"
                ));
            }
            let text = value
                .get("string_value")
                .and_then(Value::as_str)
                .ok_or("parameter localml.task needs a string_value (the task as JSON)")?;
            let mut task: Value = serde_json::from_str(text)
                .map_err(|e| format!("parameter localml.task is not JSON: {e}"))?;
            // Labels travel as a file (labels.txt among the files), not inline.
            if let Some(t) = task.as_object_mut() {
                if t.get("labels").is_some_and(Value::is_array) {
                    t.remove("labels");
                }
            }
            out.insert("task".into(), task);
        }
    }
    if out.is_empty() {
        return Ok(String::new());
    }
    serde_yaml::to_string(&Value::Object(out)).map_err(|e| e.to_string())
}

/// Stores bytes sent in a request as a blob (nothing if it is there already).
async fn store_blob(catalog: &Catalog, bytes: &[u8]) -> Result<CatalogFile, CatalogError> {
    let sha256 = localml_trust::sha256_hex(bytes);
    let size = bytes.len() as u64;
    let blobs = Arc::clone(&catalog.blobs);
    let (hex, data) = (sha256.clone(), bytes.to_vec());
    catalog.uploaded(&sha256);
    let upload = super::blocking(move || {
        if blobs.held(&hex)?.complete {
            return Ok(None);
        }
        // Whatever an earlier upload left is replaced: the whole file is here.
        let mut upload = blobs.begin_again(&hex, size)?;
        upload.write(&data)?;
        Ok(Some(upload))
    })
    .await?;
    if let Some(upload) = upload {
        catalog.finish_upload(upload).await?;
    }
    Ok(CatalogFile {
        path: String::new(),
        sha256,
        size,
    })
}

pub async fn load(
    catalog: &Catalog,
    workers: &Workers,
    r: RepositoryModelLoadRequest,
    deadline: Option<Duration>,
) -> Result<(), Status> {
    let name = r.model_name;
    check_name(&name)?;
    let files = files(&r.parameters)?;
    let mut version = String::new();
    if !files.is_empty() {
        let mut entry = CatalogModel {
            name: name.clone(),
            version: files[0].version.clone(),
            config_yaml: config_yaml(&r.parameters)?,
            ..Default::default()
        };
        for sent in &files {
            let mut file = store_blob(catalog, sent.bytes).await?;
            file.path = sent.path.clone();
            entry.files.push(file);
        }
        let added = catalog.put(entry).await?;
        version = added.version;
    } else {
        let in_catalog = catalog.get(&name, "").await.is_ok();
        let in_repository = workers
            .list(tokio::time::Instant::now())
            .iter()
            .filter_map(|w| w.status.as_ref())
            .any(|s| s.available.iter().any(|a| a.name == name));
        if !in_catalog && !in_repository {
            return Err(Status::not_found(format!(
                "no model '{name}' in the catalog or in any worker's repository; send its files (file:<version>/model.onnx) or push it with `localml models push`"
            )));
        }
    }
    let key = format!("{DEPLOYMENTS}{name}");
    let existing = catalog.store.get(&key).await.map_err(CatalogError::from)?;
    let spec = existing
        .as_ref()
        .and_then(|kv| Deployment::decode(kv.value.as_slice()).ok());
    if let Some(old) = spec.filter(|d| d.model == name && !version.is_empty()) {
        // Files for a version: the deployment of that model rolls to it (and remembers
        // the one before, for a rollback).
        if old.version != version {
            let d = crate::deployments::revise(
                Some(&old),
                Deployment {
                    version: version.clone(),
                    ..old.clone()
                },
            );
            let seen = existing.as_ref().map_or(0, |kv| kv.mod_revision);
            let txn = localml_store::Txn::new()
                .when(&key, seen)
                .put(&key, d.encode_to_vec(), 0);
            let written = catalog
                .store
                .commit(txn)
                .await
                .map_err(CatalogError::from)?;
            if written.is_none() {
                return Err(Status::aborted(format!(
                    "deployment '{name}' changed meanwhile; load again"
                )));
            }
            tracing::info!(deployment = %name, version = %version, "deployment moved to the loaded version");
        }
    } else if existing.is_none() {
        let d = Deployment {
            name: name.clone(),
            model: name.clone(),
            replicas: 1,
            ..Default::default()
        };
        crate::deployments::validate(&d).map_err(|e| Status::invalid_argument(e.to_string()))?;
        catalog
            .store
            .put(&key, d.encode_to_vec())
            .await
            .map_err(CatalogError::from)?;
        tracing::info!(deployment = %name, "deployment created by RepositoryModelLoad");
    }
    let wait = deadline.map_or(LOAD_WAIT, |d| d.min(LOAD_WAIT));
    let started = tokio::time::Instant::now();
    loop {
        let up = served(workers)
            .iter()
            .any(|(n, v)| *n == name && (version.is_empty() || *v == version));
        if up {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(Status::unavailable(format!(
                "deployment '{name}' applied, but no worker serves '{name}' after {} s: is an on-demand worker (--load on-demand) Ready? (localml deployments list)",
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn unload(catalog: &Catalog, r: RepositoryModelUnloadRequest) -> Result<(), Status> {
    let name = r.model_name;
    check_name(&name)?;
    let (kvs, _) = catalog
        .store
        .list(DEPLOYMENTS)
        .await
        .map_err(CatalogError::from)?;
    let mut deleted = 0;
    for kv in kvs {
        let Ok(d) = Deployment::decode(kv.value.as_slice()) else {
            continue;
        };
        if d.model == name {
            catalog
                .store
                .delete(&kv.key)
                .await
                .map_err(CatalogError::from)?;
            tracing::info!(deployment = %d.name, "deployment deleted by RepositoryModelUnload");
            deleted += 1;
        }
    }
    if deleted == 0 {
        return Err(Status::not_found(format!(
            "no deployment serves '{name}' (workers started without --load on-demand keep their models loaded)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(config: serde_json::Value) -> Result<serde_yaml::Value, String> {
        triton_config_yaml(&config).map(|y| serde_yaml::from_str(&y).expect("YAML"))
    }

    #[test]
    fn tritons_model_config_becomes_config_yaml() {
        let got = yaml(serde_json::json!({
            "name": "m", "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": 8,
            "version_policy": {"all": {}},
            "input": [{"name": "image", "data_type": "TYPE_FP32", "dims": ["12", 16, 3]}],
            "output": [{"name": "scores", "data_type": "TYPE_FP32"}],
            "instance_group": [{"count": 2, "kind": "KIND_GPU"}],
            "dynamic_batching": {"max_queue_delay_microseconds": "500", "preferred_batch_size": [4]},
            "parameters": {"localml.task": {"string_value": "{\"kind\": \"image-classification\", \"width\": 16, \"height\": 12, \"layout\": \"NHWC\", \"labels\": [\"a\"]}"}},
        }))
        .expect("valid");
        let want: serde_yaml::Value = serde_yaml::from_str(
            "max_batch_size: 8\nversion_policy: all\ninputs: [{name: image, dims: [12, 16, 3]}]\ninstances: 2\nexecution_providers: [cuda, cpu]\ndynamic_batching: {max_queue_delay_microseconds: 500, preferred_batch_size: [4]}\ntask: {kind: image-classification, width: 16, height: 12, layout: NHWC}\n",
        )
        .expect("YAML");
        assert_eq!(got, want);
        // The task is localml's own schema: the worker and the catalog read it.
        let text = triton_config_yaml(&serde_json::json!({
            "parameters": {"localml.task": {"string_value": "{\"kind\": \"image-classification\", \"width\": 4, \"height\": 4}"}}
        }))
        .expect("valid");
        assert!(localml_serving::task::from_config_yaml(&text)
            .expect("a task")
            .is_some());
        assert_eq!(
            triton_config_yaml(&serde_json::json!({})).expect("empty"),
            ""
        );
        assert_eq!(
            yaml(serde_json::json!({"instance_group": [{"count": 1, "kind": "KIND_CPU"}]}))
                .expect("cpu"),
            serde_yaml::from_str::<serde_yaml::Value>("instances: 1\nexecution_providers: [cpu]\n")
                .expect("YAML")
        );
    }

    #[test]
    fn what_localml_cannot_honour_is_refused_by_name() {
        for (config, says) in [
            (
                serde_json::json!({"optimization": {}}),
                "field 'optimization'",
            ),
            (
                serde_json::json!({"platform": "tensorrt_plan"}),
                "platform 'tensorrt_plan'",
            ),
            (
                serde_json::json!({"version_policy": {"latest": {"num_versions": 2}}}),
                "num_versions 2",
            ),
            (
                serde_json::json!({"instance_group": [{"kind": "KIND_MODEL"}]}),
                "KIND_MODEL",
            ),
            (
                serde_json::json!({"parameters": {"x": {"string_value": "1"}}}),
                "parameter 'x'",
            ),
            (serde_json::json!({"max_batch_size": -1}), "max_batch_size"),
            (
                serde_json::json!({"max_batch_size": 5_000_000_000u64}),
                "max_batch_size",
            ),
            (
                serde_json::json!({"dynamic_batching": {"preferred_batch_size": ["x"]}}),
                "preferred_batch_size must be a list",
            ),
            (
                serde_json::json!({"input": [{"dims": [1]}]}),
                "needs a name",
            ),
            (serde_json::json!([1]), "JSON object"),
        ] {
            let err = triton_config_yaml(&config).expect_err(&config.to_string());
            assert!(err.contains(says), "{config}: {err}");
        }
    }
}
