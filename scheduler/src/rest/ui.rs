//! The web page the scheduler serves at `/` on its REST listener (docs/ui.md), and the
//! small JSON API under `/api/v1/` it calls. The page is plain HTML, CSS and an ES module
//! embedded in the binary: no build step, no CDN, it works with no internet. Each API
//! route is the admin gRPC method of the same name behind the same key check.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use localml_proto::localml::v1::admin_server::Admin;
use localml_proto::localml::v1::*;
use serde_json::{json, Value};

use super::{error, json_ok, Answer, Caller, JsonPath, Rest};

const INDEX_HTML: &str = include_str!("ui/index.html");
const APP_JS: &str = include_str!("ui/app.js");
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
            "/ui/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/v1/access", get(access))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/models", get(models))
        .route("/api/v1/workers/{name}/cordon", post(cordon))
        .route("/api/v1/workers/{name}/uncordon", post(uncordon))
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

async fn workers(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let r = rest
        .call(
            "/localml.v1.Admin/ListWorkers",
            &caller,
            ListWorkersRequest {},
            |r, q| async move { r.admin.list_workers(q).await },
        )
        .await?;
    let mut workers: Vec<Value> = r.workers.iter().map(worker_json).collect();
    workers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    Ok(json_ok(json!({ "workers": workers })))
}

async fn models(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let r = rest
        .call(
            "/localml.v1.Admin/ListModels",
            &caller,
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
            json!({
                "name": m.name, "version": m.version, "ready_workers": m.ready_workers,
                "max_batch_size": m.max_batch_size,
                "requests_ok": m.requests_ok, "requests_failed": m.requests_failed,
                "p50_ms": ms(0.5), "p99_ms": ms(0.99),
                "inputs": tensors(&signature.inputs), "outputs": tensors(&signature.outputs),
            })
        })
        .collect();
    Ok(json_ok(json!({ "models": models })))
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
