//! The web page the scheduler serves at `/` on its REST listener (docs/ui.md), and the
//! small JSON API under `/api/v1/` it calls. The page is plain HTML, CSS and an ES module
//! embedded in the binary: no build step, no CDN, it works with no internet. Each API
//! route is the admin gRPC method of the same name behind the same key check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::StreamExt;
use localml_proto::localml::v1::admin_server::Admin;
use localml_proto::localml::v1::catalog_server::Catalog as _;
use localml_proto::localml::v1::jobs_server::Jobs as _;
use localml_proto::localml::v1::*;
use localml_serving::metrics::quantile;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error, json_ok, read_body, Answer, Caller, JsonPath, Rest};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
const NPY_JS: &str = include_str!("ui/npy.js");
const IMAGE_JS: &str = include_str!("ui/image.js");
const STYLE_CSS: &str = include_str!("ui/style.css");

/// Only the page's own files: no inline script, nothing from elsewhere.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub(super) fn routes() -> axum::Router<Arc<Rest>> {
    axum::Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/ui/npy.js",
            get(|| async { asset("text/javascript; charset=utf-8", NPY_JS) }),
        )
        .route(
            "/ui/image.js",
            get(|| async { asset("text/javascript; charset=utf-8", IMAGE_JS) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/v1/access", get(access))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/models", get(models))
        .route("/api/v1/workers/{name}/cordon", post(cordon))
        .route("/api/v1/workers/{name}/uncordon", post(uncordon))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/deployments", get(deployments))
        .route("/api/v1/deployments/{name}", post(apply_deployment))
        .route(
            "/api/v1/deployments/{name}/rollback",
            post(rollback_deployment),
        )
        .route("/api/v1/blobs/{sha256}", get(blob_status).put(upload_blob))
        .route("/api/v1/catalog", get(list_catalog).post(put_catalog_model))
        .route("/api/v1/events/ticket", post(events_ticket))
        .route("/api/v1/events", get(events))
}

/// How long a ticket for the event stream is valid, and how many may be open at once.
const TICKET_TTL: Duration = Duration::from_secs(30);
const MAX_TICKETS: usize = 256;
/// How often the event stream sends the cluster's state.
const EVENT_INTERVAL: Duration = Duration::from_secs(2);

/// Short-lived, single-use tickets for the page's live updates (server-sent events). A
/// browser's EventSource cannot send an `Authorization` header and keys never go in a
/// URL, so the page asks for a ticket with its key and opens the stream with the ticket.
/// The stream then acts as that key: every update checks it again, so revoking the key
/// ends the stream.
#[derive(Default)]
pub struct Tickets {
    open: Mutex<HashMap<String, (Caller, Instant)>>,
}

impl Tickets {
    fn issue(&self, caller: Caller, now: Instant) -> Result<String, Response> {
        let ticket = localml_trust::random_hex(32)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("no ticket: {e}")))?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        open.retain(|_, (_, at)| now.duration_since(*at) < TICKET_TTL);
        if open.len() >= MAX_TICKETS {
            return Err(error(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "{MAX_TICKETS} event tickets are waiting to be used; try again in {} s",
                    TICKET_TTL.as_secs()
                ),
            ));
        }
        open.insert(ticket.clone(), (caller, now));
        Ok(ticket)
    }

    /// The caller a ticket was issued to, once; None when unknown, used or expired.
    fn redeem(&self, ticket: &str, now: Instant) -> Option<Caller> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (caller, at) = open.remove(ticket)?;
        (now.duration_since(at) < TICKET_TTL).then_some(caller)
    }
}

/// `POST /api/v1/events/ticket`: a ticket for one event stream, for a key that may see the
/// cluster (admin).
async fn events_ticket(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    rest.authorize("/localml.v1.Admin/ListWorkers", &caller)
        .await?;
    let ticket = rest.tickets.issue(caller, Instant::now())?;
    Ok(json_ok(
        json!({"ticket": ticket, "expires_in_s": TICKET_TTL.as_secs()}),
    ))
}

/// `GET /api/v1/events?ticket=T`: server-sent events, one `cluster` event (workers,
/// models, deployments, jobs) at once and every two seconds; an `error` event ends it when
/// the key no longer may see the cluster.
async fn events(State(rest): State<Arc<Rest>>, uri: Uri) -> Answer {
    let ticket = query_value(&uri, "ticket").unwrap_or("");
    let Some(caller) = rest.tickets.redeem(ticket, Instant::now()) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "unknown, used or expired event ticket: get one with POST /api/v1/events/ticket (with the key in the Authorization header); each opens one stream",
        ));
    };
    let rest_stopping = rest.stopping.clone();
    enum Step {
        First,
        Next,
        Done,
    }
    let stream = futures::stream::unfold(
        (rest, caller, Step::First),
        |(rest, caller, step)| async move {
            match step {
                Step::Done => return None,
                Step::Next => tokio::time::sleep(EVENT_INTERVAL).await,
                Step::First => {}
            }
            let (event, next) = match cluster(&rest, &caller).await {
                Ok(state) => (
                    Event::default().event("cluster").data(state.to_string()),
                    Step::Next,
                ),
                Err(refused) => {
                    let status = refused.status().as_u16();
                    let body = axum::body::to_bytes(refused.into_body(), 64 * 1024)
                        .await
                        .unwrap_or_default();
                    let message = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_string))
                        .unwrap_or_default();
                    let data = json!({"status": status, "error": message});
                    (
                        Event::default().event("error").data(data.to_string()),
                        Step::Done,
                    )
                }
            };
            Some((
                Ok::<_, std::convert::Infallible>(event),
                (rest, caller, next),
            ))
        },
    );
    // The stream ends when the scheduler stops (the page then opens one on another
    // replica, or waits for this one).
    let mut stopping = rest_stopping;
    let stream = stream.take_until(async move {
        let _ = stopping.wait_for(|s| *s).await;
    });
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// What the page shows, in one: the workers and models (a refusal ends it), deployments
/// and the latest jobs (null where this key may not see them).
async fn cluster(rest: &Arc<Rest>, caller: &Caller) -> Result<Value, Response> {
    let workers = workers_value(rest, caller).await?;
    let models = models_value(rest, caller).await?;
    let deployments = deployments_value(rest, caller).await.ok();
    let jobs = jobs_value(rest, caller).await.ok();
    Ok(json!({
        "workers": workers, "models": models, "deployments": deployments, "jobs": jobs,
        "at_unix_ms": localml_proto::time::unix_ms(),
    }))
}

/// What a caller without a key may do here (no key needed to ask): everything on an open
/// listener, else the models an anonymous key opens (none: sign in). The page shows it, so
/// everyone sees what is open to the whole network.
async fn access(State(rest): State<Arc<Rest>>) -> Answer {
    let anonymous = rest.auth.ring.anonymous(localml_proto::time::unix_ms());
    Ok(json_ok(json!({
        "keys_required": rest.auth.required,
        "anonymous": anonymous.map(|r| json!({"key": r.name, "models": r.models})),
    })))
}

fn power_json(p: Option<&PowerStatus>) -> Value {
    let Some(p) = p else {
        return json!({"source": "unknown"});
    };
    let source = localml_proto::names::power_source(p.source);
    json!({
        "source": source,
        "battery_percent": p.battery_percent,
        "runtime_seconds": p.battery_runtime_seconds,
        "low_battery": p.low_battery,
        "watts": p.power_watts,
    })
}

/// A worker as the page shows it.
fn worker_json(w: &WorkerInfo) -> Value {
    let status = w.status.clone().unwrap_or_default();
    let models: Vec<Value> = status
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "version": m.version, "provider": m.execution_provider,
                "queue": m.queue_depth, "in_flight": m.in_flight,
                "latency_ms": m.latency_ewma_ms, "inferences": m.inference_count,
            })
        })
        .collect();
    json!({
        "name": status.name,
        "state": localml_proto::names::worker_state(w.state),
        "reason": w.state_reason,
        "cordoned": w.cordoned,
        "draining": status.draining,
        "conditions": w.conditions,
        "power": power_json(status.power.as_ref()),
        "ram_total_bytes": status.ram_total_bytes,
        "ram_free_bytes": status.ram_free_bytes,
        "gpus": status.gpus.iter().map(|g| json!({
            "name": g.name, "memory_total_bytes": g.memory_total_bytes,
            "memory_free_bytes": g.memory_free_bytes,
        })).collect::<Vec<_>>(),
        "in_flight": w.dispatched_in_flight,
        "queue": status.models.iter().map(|m| m.queue_depth).sum::<u32>(),
        "models": models,
    })
}

async fn workers_value(rest: &Arc<Rest>, caller: &Caller) -> Result<Value, Response> {
    let r = rest
        .call(
            "/localml.v1.Admin/ListWorkers",
            caller,
            ListWorkersRequest {},
            |r, q| async move { r.admin.list_workers(q).await },
        )
        .await?;
    let mut workers: Vec<Value> = r.workers.iter().map(worker_json).collect();
    workers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(Value::Array(workers))
}

async fn workers(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    Ok(json_ok(
        json!({ "workers": workers_value(&rest, &caller).await? }),
    ))
}

async fn models(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    Ok(json_ok(
        json!({ "models": models_value(&rest, &caller).await? }),
    ))
}

/// A latency histogram's quantile in milliseconds (None without requests).
fn quantile_ms(bounds: &[f64], cumulative: &[u64], q: f64) -> Option<f64> {
    quantile(bounds, cumulative, q).map(|s| s * 1e3)
}

/// A version's last minutes: in all (rate, failures, p50/p99) and window by window (the
/// page's charts).
fn recent_json(m: &ModelInfo) -> (Value, Value) {
    let bounds = &m.latency_bounds_seconds;
    let mut total = vec![0u64; bounds.len() + 1];
    let (mut ok, mut failed, mut seconds) = (0u64, 0u64, 0f64);
    let history: Vec<Value> = m
        .recent
        .iter()
        .map(|w| {
            for (t, n) in total.iter_mut().zip(&w.latency_cumulative) {
                *t += n;
            }
            ok += w.requests_ok;
            failed += w.requests_failed;
            seconds += w.seconds;
            let rate =
                (w.seconds > 0.0).then(|| (w.requests_ok + w.requests_failed) as f64 / w.seconds);
            json!({
                "end_unix_ms": w.end_unix_ms, "seconds": w.seconds, "rate_per_s": rate,
                "requests_ok": w.requests_ok, "requests_failed": w.requests_failed,
                "p50_ms": quantile_ms(bounds, &w.latency_cumulative, 0.5),
                "p99_ms": quantile_ms(bounds, &w.latency_cumulative, 0.99),
            })
        })
        .collect();
    let recent = json!({
        "seconds": seconds, "requests_ok": ok, "requests_failed": failed,
        "rate_per_s": (seconds > 0.0).then(|| (ok + failed) as f64 / seconds),
        "p50_ms": quantile_ms(bounds, &total, 0.5),
        "p99_ms": quantile_ms(bounds, &total, 0.99),
    });
    (recent, Value::Array(history))
}

async fn models_value(rest: &Arc<Rest>, caller: &Caller) -> Result<Value, Response> {
    let r = rest
        .call(
            "/localml.v1.Admin/ListModels",
            caller,
            ListModelsRequest {},
            |r, q| async move { r.admin.list_models(q).await },
        )
        .await?;
    let models: Vec<Value> = r
        .models
        .iter()
        .map(|m| {
            let signature = m.signature.clone().unwrap_or_default();
            let tensors = |t: &[TensorSpec]| {
                t.iter()
                    .map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape}))
                    .collect::<Vec<_>>()
            };
            // Of the model's successful requests through this scheduler (all versions).
            let ms = |q: f64| {
                localml_serving::metrics::quantile(
                    &m.latency_bounds_seconds,
                    &m.latency_cumulative,
                    q,
                )
                .map(|s| s * 1e3)
            };
            let bounds = &m.latency_bounds_seconds;
            let (recent, history) = recent_json(m);
            json!({
                "name": m.name, "version": m.version, "ready_workers": m.ready_workers,
                "max_batch_size": m.max_batch_size,
                "requests_ok": m.requests_ok, "requests_failed": m.requests_failed,
                "p50_ms": ms(0.5), "p99_ms": ms(0.99),
                "version_stats": {
                    "requests_ok": m.version_requests_ok,
                    "requests_failed": m.version_requests_failed,
                    "p50_ms": quantile_ms(bounds, &m.version_latency_cumulative, 0.5),
                    "p99_ms": quantile_ms(bounds, &m.version_latency_cumulative, 0.99),
                },
                "recent": recent, "history": history,
                "task": m.task.as_ref().map(|t| t.kind.clone()),
                "inputs": tensors(&signature.inputs), "outputs": tensors(&signature.outputs),
            })
        })
        .collect();
    Ok(Value::Array(models))
}

fn job_json(j: &Job) -> Value {
    let state = JobState::try_from(j.state)
        .map(|s| s.as_str_name().trim_start_matches("JOB_STATE_").to_string())
        .unwrap_or_else(|_| "UNKNOWN".into());
    json!({
        "id": j.id, "state": state, "model": j.model_name, "version": j.model_version,
        "priority": j.priority, "attempts": j.attempts, "worker": j.worker,
        "message": j.message, "created_unix_ms": j.created_unix_ms,
        "started_unix_ms": j.started_unix_ms, "finished_unix_ms": j.finished_unix_ms,
        "deadline_unix_ms": j.deadline_unix_ms,
    })
}

/// The latest jobs, newest first (at most 50).
async fn jobs_value(rest: &Arc<Rest>, caller: &Caller) -> Result<Value, Response> {
    let r = rest
        .call(
            "/localml.v1.Jobs/List",
            caller,
            ListJobsRequest {
                page_size: 50,
                newest_first: true,
                ..Default::default()
            },
            |r, q| async move { r.jobs.list(q).await },
        )
        .await?;
    Ok(Value::Array(r.jobs.iter().map(job_json).collect()))
}

async fn jobs(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    Ok(json_ok(
        json!({ "jobs": jobs_value(&rest, &caller).await? }),
    ))
}

fn deployment_json(d: &Deployment) -> Value {
    json!({
        "name": d.name, "model": d.model, "version": d.version, "replicas": d.replicas,
        "ready_replicas": d.ready_replicas, "workers": d.workers, "message": d.message,
        "provider": d.provider, "selector": d.selector,
        "previous_model": d.previous_model, "previous_version": d.previous_version,
    })
}

async fn deployments_value(rest: &Arc<Rest>, caller: &Caller) -> Result<Value, Response> {
    let r = rest
        .call(
            "/localml.v1.Admin/ListDeployments",
            caller,
            ListDeploymentsRequest {},
            |r, q| async move { r.admin.list_deployments(q).await },
        )
        .await?;
    Ok(Value::Array(
        r.deployments.iter().map(deployment_json).collect(),
    ))
}

async fn deployments(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    Ok(json_ok(
        json!({ "deployments": deployments_value(&rest, &caller).await? }),
    ))
}

/// What the page changes in a deployment: any of model, version, replicas (a new one needs
/// a model).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentChange {
    model: Option<String>,
    version: Option<String>,
    replicas: Option<u32>,
}

/// `POST /api/v1/deployments/{name}` with `{"model", "version", "replicas"}` (each
/// optional): the deployment with those changed (or a new one), as `localml deployments
/// apply` does; a change of version rolls.
async fn apply_deployment(
    State(rest): State<Arc<Rest>>,
    JsonPath(name): JsonPath<String>,
    caller: Caller,
    body: Body,
) -> Answer {
    let principal = rest
        .authorize("/localml.v1.Admin/ApplyDeployment", &caller)
        .await?;
    let body = read_body(&caller.headers, body, 64 * 1024).await?;
    let change: DeploymentChange = serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid deployment change: {e}"),
        )
    })?;
    let existing = rest
        .call_as(
            principal.clone(),
            ListDeploymentsRequest {},
            |r, q| async move { r.admin.list_deployments(q).await },
        )
        .await?
        .deployments
        .into_iter()
        .find(|d| d.name == name);
    let mut d = existing.unwrap_or(Deployment {
        name: name.clone(),
        replicas: 1,
        ..Default::default()
    });
    if let Some(model) = change.model {
        d.model = model;
    }
    if let Some(version) = change.version {
        d.version = version;
    }
    if let Some(replicas) = change.replicas {
        d.replicas = replicas;
    }
    let applied = rest
        .call_as(principal, d, |r, q| async move {
            r.admin.apply_deployment(q).await
        })
        .await?;
    Ok(json_ok(deployment_json(&applied)))
}

async fn rollback_deployment(
    State(rest): State<Arc<Rest>>,
    JsonPath(name): JsonPath<String>,
    caller: Caller,
) -> Answer {
    let d = rest
        .call(
            "/localml.v1.Admin/RollbackDeployment",
            &caller,
            RollbackDeploymentRequest { name },
            |r, q| async move { r.admin.rollback_deployment(q).await },
        )
        .await?;
    Ok(json_ok(deployment_json(&d)))
}

fn blob_json(b: &BlobStatusResponse) -> Value {
    json!({"sha256": b.sha256, "complete": b.complete, "received": b.received})
}

/// `GET /api/v1/blobs/{sha256}`: how much of a file the scheduler holds (an upload
/// resumes from there).
async fn blob_status(
    State(rest): State<Arc<Rest>>,
    JsonPath(sha256): JsonPath<String>,
    caller: Caller,
) -> Answer {
    let b = rest
        .call(
            "/localml.v1.Catalog/BlobStatus",
            &caller,
            BlobStatusRequest { sha256 },
            |r, q| async move { r.catalog.blob_status(q).await },
        )
        .await?;
    Ok(json_ok(blob_json(&b)))
}

/// A query parameter's value, as sent (the page's parameters need no decoding: hex and
/// numbers).
fn query_value<'a>(uri: &'a Uri, name: &str) -> Option<&'a str> {
    uri.query()?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then_some(value)
    })
}

/// A query parameter's value as a number.
fn query_number(uri: &Uri, name: &str) -> Result<Option<u64>, Response> {
    match query_value(uri, name) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                format!("{name} '{v}' is not a number of bytes"),
            )
        }),
    }
}

/// `PUT /api/v1/blobs/{sha256}?size=N&offset=M`, the file's bytes from `offset` (what
/// `GET` said the scheduler holds) as the body: written to disk as they arrive, checked
/// against the hash when whole. The page's model upload; the CLI pushes over gRPC.
async fn upload_blob(
    State(rest): State<Arc<Rest>>,
    JsonPath(sha256): JsonPath<String>,
    caller: Caller,
    uri: Uri,
    body: Body,
) -> Answer {
    rest.authorize("/localml.v1.Catalog/UploadBlob", &caller)
        .await?;
    crate::catalog::blobs::check_sha256(&sha256).map_err(|e| super::status_response(&e.into()))?;
    let size = query_number(&uri, "size")?.ok_or_else(|| {
        error(
            StatusCode::BAD_REQUEST,
            "the file's size is missing: ?size=BYTES",
        )
    })?;
    let offset = query_number(&uri, "offset")?.unwrap_or(0);
    let data = body.into_data_stream().map(|chunk| {
        chunk.map_err(|e| tonic::Status::cancelled(format!("the upload stopped: {e}")))
    });
    let b = rest
        .catalog
        .upload_data(sha256, size, offset, data)
        .await
        .map_err(|s| super::status_response(&s))?;
    Ok(json_ok(blob_json(&b)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRef {
    path: String,
    sha256: String,
    size: u64,
}

/// A catalog version as the page sends it, its files already uploaded.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewVersion {
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    variant: String,
    #[serde(default)]
    config_yaml: String,
    files: Vec<FileRef>,
}

/// `GET /api/v1/catalog`: the catalog's versions (as `localml models list`).
async fn list_catalog(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let r = rest
        .call(
            "/localml.v1.Catalog/ListCatalog",
            &caller,
            ListCatalogRequest {},
            |r, q| async move { r.catalog.list_catalog(q).await },
        )
        .await?;
    let versions: Vec<Value> = r
        .models
        .iter()
        .map(|m| {
            json!({
                "name": m.name, "version": m.version,
                "files": m.files.len(), "bytes": m.files.iter().map(|f| f.size).sum::<u64>(),
                "variants": m.variants.iter().map(|v| v.name.clone()).collect::<Vec<_>>(),
                "created_unix_ms": m.created_unix_ms, "measured_bytes": m.measured_bytes,
            })
        })
        .collect();
    Ok(json_ok(json!({ "versions": versions })))
}

/// `POST /api/v1/catalog`: adds a version (or variant) made of uploaded files, as
/// `localml models push` does; the answer is the catalog's entry.
async fn put_catalog_model(State(rest): State<Arc<Rest>>, caller: Caller, body: Body) -> Answer {
    let principal = rest
        .authorize("/localml.v1.Catalog/PutModel", &caller)
        .await?;
    let body = read_body(&caller.headers, body, 1024 * 1024).await?;
    let v: NewVersion = serde_json::from_slice(&body).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            format!("invalid catalog version: {e}"),
        )
    })?;
    let model = CatalogModel {
        name: v.name,
        version: v.version,
        variant: v.variant,
        config_yaml: v.config_yaml,
        files: v
            .files
            .into_iter()
            .map(|f| CatalogFile {
                path: f.path,
                sha256: f.sha256,
                size: f.size,
            })
            .collect(),
        ..Default::default()
    };
    let m = rest
        .call_as(principal, model, |r, q| async move {
            r.catalog.put_model(q).await
        })
        .await?;
    let bytes: u64 = m.files.iter().map(|f| f.size).sum();
    Ok(json_ok(json!({
        "name": m.name, "version": m.version, "files": m.files.len(), "bytes": bytes,
        "inputs": m.inputs.iter().map(|t| json!({"name": t.name, "datatype": t.datatype, "shape": t.shape})).collect::<Vec<_>>(),
    })))
}

async fn set_cordon(rest: Arc<Rest>, caller: Caller, name: String, cordoned: bool) -> Answer {
    if name.is_empty() || name.len() > 253 {
        return Err(error(StatusCode::BAD_REQUEST, "invalid worker name"));
    }
    rest.call(
        "/localml.v1.Admin/SetCordon",
        &caller,
        SetCordonRequest {
            worker: name.clone(),
            cordoned,
        },
        |r, q| async move { r.admin.set_cordon(q).await },
    )
    .await?;
    Ok(json_ok(json!({ "worker": name, "cordoned": cordoned })))
}

async fn cordon(
    State(rest): State<Arc<Rest>>,
    JsonPath(name): JsonPath<String>,
    caller: Caller,
) -> Answer {
    set_cordon(rest, caller, name, true).await
}

async fn uncordon(
    State(rest): State<Arc<Rest>>,
    JsonPath(name): JsonPath<String>,
    caller: Caller,
) -> Answer {
    set_cordon(rest, caller, name, false).await
}
