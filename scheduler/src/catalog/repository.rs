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

/// `max_batch_size` from Triton's JSON model config, as the worker's config.yaml.
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
    Ok(match json.get("max_batch_size").and_then(|v| v.as_u64()) {
        Some(n) => format!("max_batch_size: {n}\n"),
        None => String::new(),
    })
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
