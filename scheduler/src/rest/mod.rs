//! The Open Inference Protocol over HTTP/REST (KServe v2, Triton-compatible) on its own
//! listener (`--rest-listen`). Each route is the gRPC method of the same name behind the
//! same key check: the body is converted ([`codec`]) and handed to the scheduler's
//! `GRPCInferenceService`, so validation, routing, statistics and messages are the gRPC
//! ones, and a gRPC status becomes the HTTP status the protocol names ([`http_status`]).

// Handlers answer errors with axum's `Response` (what `IntoResponse` produces); boxing it
// would add an allocation per error for nothing.
#![allow(clippy::result_large_err)]

pub mod codec;
mod listener;
mod ui;
pub use ui::Tickets;

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use localml_proto::inference::grpc_inference_service_server::GrpcInferenceService;
use localml_proto::inference::*;
use localml_serving::service::OipService;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::{Code, Status};

pub use listener::{tls_config, Remote, RestListener};

use crate::auth::layer::AuthState;
use crate::auth::Principal;
use crate::services::inference::SchedulerInference;

/// What the REST routes call: the scheduler's OIP service and the key check.
pub struct Rest {
    pub inference: OipService<SchedulerInference>,
    pub auth: Arc<AuthState>,
    /// The largest request body read (`max_message_bytes`); a larger one is 413.
    pub max_body_bytes: usize,
    /// A loopback listener without keys: only requests addressed to this PC by name
    /// (`Host`), and from no other web origin than listed, are answered, so a web page in
    /// the operator's browser cannot use it (DNS rebinding, cross-site requests).
    pub open_loopback: bool,
    /// Origins of browser apps allowed to call (CORS; `rest_cors_origins`).
    pub cors_origins: Vec<String>,
    /// The admin, jobs and catalog services, for the web page's `/api/v1/` calls.
    pub admin: crate::services::admin::AdminService,
    pub jobs: crate::services::jobs::JobsService,
    pub catalog: crate::services::catalog::CatalogService,
    /// Tickets for the page's live updates (server-sent events).
    pub tickets: ui::Tickets,
    /// Turns true when the scheduler stops: event streams end then, so they do not hold
    /// up the listener's graceful stop.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The HTTP status the Open Inference Protocol (and Triton) give a gRPC code.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        // nginx's "client closed request".
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Internal | Code::Unknown | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The protocol's error body, `{"error": "..."}`, with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let message: String = message.into();
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// A gRPC status as the HTTP answer: its HTTP status, its message, and for
/// RESOURCE_EXHAUSTED with a retry hint, `Retry-After` in whole seconds.
pub fn status_response(status: &Status) -> Response {
    let mut response = error(http_status(status.code()), status.message());
    let pushback = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(ms) = pushback {
        let seconds = ms.div_ceil(1000).max(1);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    response
}

/// What every route is given: the caller's headers and address.
#[derive(Clone)]
pub(crate) struct Caller {
    headers: HeaderMap,
    ip: Option<IpAddr>,
}

impl Rest {
    /// The caller of the gRPC `method` (its scope and key check), or the refusal, after
    /// the same growing delay the gRPC port gives repeated failures from one address.
    /// `method` is an OIP method's name, or a full path (`/localml.v1.Admin/ListWorkers`).
    pub(crate) async fn authorize(
        &self,
        method: &str,
        caller: &Caller,
    ) -> Result<Option<Principal>, Response> {
        let path = match method.starts_with('/') {
            true => method.to_string(),
            false => format!("/inference.GRPCInferenceService/{method}"),
        };
        match self
            .auth
            .decide(&path, &caller.headers, localml_proto::time::unix_ms())
        {
            Ok(principal) => Ok(principal),
            Err(status) => {
                tokio::time::sleep(self.auth.refusal_delay(&status, caller.ip)).await;
                tracing::debug!(route = method, code = ?status.code(), reason = status.message(), ip = ?caller.ip, "REST request refused");
                Err(status_response(&status))
            }
        }
    }

    /// Calls the gRPC `method` with `message` as the caller.
    pub(crate) async fn call<T, R, F, Fut>(
        self: &Arc<Self>,
        method: &str,
        caller: &Caller,
        message: T,
        f: F,
    ) -> Result<R, Response>
    where
        F: FnOnce(Arc<Self>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let principal = self.authorize(method, caller).await?;
        self.call_as(principal, message, f).await
    }

    /// Calls a gRPC method with `message` as `principal` (already authorized).
    pub(crate) async fn call_as<T, R, F, Fut>(
        self: &Arc<Self>,
        principal: Option<Principal>,
        message: T,
        f: F,
    ) -> Result<R, Response>
    where
        F: FnOnce(Arc<Self>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let mut request = tonic::Request::new(message);
        if let Some(p) = principal {
            request.extensions_mut().insert(p);
        }
        f(Arc::clone(self), request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| status_response(&s))
    }
}

#[derive(Deserialize)]
struct ModelPath {
    model: String,
    #[serde(default)]
    version: String,
}

pub(crate) type Answer = Result<Response, Response>;

pub(crate) fn json_ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Caller, Self::Rejection> {
        Ok(Caller {
            headers: parts.headers.clone(),
            ip: parts
                .extensions
                .get::<ConnectInfo<Remote>>()
                .map(|ConnectInfo(Remote(addr))| addr.ip()),
        })
    }
}

/// A route's path parameters; a path that does not decode is a JSON 400, as every error.
pub(crate) struct JsonPath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> axum::extract::FromRequestParts<S>
    for JsonPath<T>
{
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<JsonPath<T>, Response> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(p)| JsonPath(p))
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("invalid path: {e}")))
    }
}

/// A route's model and version.
type Model = JsonPath<ModelPath>;

async fn server_live(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let r = rest
        .call(
            "ServerLive",
            &caller,
            ServerLiveRequest {},
            |r, q| async move { r.inference.server_live(q).await },
        )
        .await?;
    Ok(readiness(r.live, "live"))
}

async fn server_ready(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let r = rest
        .call(
            "ServerReady",
            &caller,
            ServerReadyRequest {},
            |r, q| async move { r.inference.server_ready(q).await },
        )
        .await?;
    Ok(readiness(r.ready, "ready"))
}

/// 200 when true, 503 when not: clients read the status code.
fn readiness(yes: bool, what: &str) -> Response {
    let status = if yes {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ what: yes }))).into_response()
}

async fn server_metadata(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let r = rest
        .call(
            "ServerMetadata",
            &caller,
            ServerMetadataRequest {},
            |r, q| async move { r.inference.server_metadata(q).await },
        )
        .await?;
    let mut metadata = codec::server_metadata(&r);
    // Over HTTP the scheduler also takes and gives binary tensors.
    if let Some(extensions) = metadata["extensions"].as_array_mut() {
        extensions.push(json!("binary_tensor_data"));
    }
    Ok(json_ok(metadata))
}

async fn model_metadata(
    State(rest): State<Arc<Rest>>,
    JsonPath(p): Model,
    caller: Caller,
) -> Answer {
    let message = ModelMetadataRequest {
        name: p.model,
        version: p.version,
    };
    let r = rest
        .call("ModelMetadata", &caller, message, |r, q| async move {
            r.inference.model_metadata(q).await
        })
        .await?;
    Ok(json_ok(codec::model_metadata(&r)))
}

async fn model_ready(State(rest): State<Arc<Rest>>, JsonPath(p): Model, caller: Caller) -> Answer {
    let message = ModelReadyRequest {
        name: p.model,
        version: p.version,
    };
    let r = rest
        .call("ModelReady", &caller, message, |r, q| async move {
            r.inference.model_ready(q).await
        })
        .await?;
    Ok(readiness(r.ready, "ready"))
}

async fn model_config(State(rest): State<Arc<Rest>>, JsonPath(p): Model, caller: Caller) -> Answer {
    let message = ModelConfigRequest {
        name: p.model,
        version: p.version,
    };
    let r = rest
        .call("ModelConfig", &caller, message, |r, q| async move {
            r.inference.model_config(q).await
        })
        .await?;
    let config = r.config.unwrap_or_default();
    Ok(json_ok(codec::model_config(&config)))
}

async fn model_statistics(
    State(rest): State<Arc<Rest>>,
    JsonPath(p): Model,
    caller: Caller,
) -> Answer {
    statistics(rest, p, caller).await
}

async fn all_statistics(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let every = ModelPath {
        model: String::new(),
        version: String::new(),
    };
    statistics(rest, every, caller).await
}

async fn statistics(rest: Arc<Rest>, p: ModelPath, caller: Caller) -> Answer {
    let message = ModelStatisticsRequest {
        name: p.model,
        version: p.version,
    };
    let r = rest
        .call("ModelStatistics", &caller, message, |r, q| async move {
            r.inference.model_statistics(q).await
        })
        .await?;
    Ok(json_ok(codec::statistics(&r)))
}

async fn model_infer(
    State(rest): State<Arc<Rest>>,
    JsonPath(p): Model,
    caller: Caller,
    body: Body,
) -> Answer {
    // The key first: a caller without one does not get to send a large body.
    let principal = rest.authorize("ModelInfer", &caller).await?;
    let body = read_body(&caller.headers, body, rest.max_body_bytes).await?;
    let header_length = match caller.headers.get(codec::HEADER_LENGTH) {
        None => None,
        Some(v) => Some(v.to_str().map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "Inference-Header-Content-Length is not a byte count",
            )
        })?),
    };
    let parsed = codec::infer_request(&p.model, &p.version, body, header_length)
        .map_err(|e| error(StatusCode::BAD_REQUEST, e.0))?;
    let response = rest
        .call_as(principal, parsed.request, |r, q| async move {
            r.inference.model_infer(q).await
        })
        .await?;
    let encoded = codec::infer_response(&response, &parsed.binary_outputs).map_err(|e| {
        tracing::warn!(model = %response.model_name, "cannot encode a worker's answer: {e}");
        error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the worker's answer could not be encoded: {e}"),
        )
    })?;
    let mut answer = Response::new(Body::from(encoded.body));
    let headers = answer.headers_mut();
    match encoded.header_length {
        Some(length) => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(codec::HEADER_LENGTH, HeaderValue::from(length));
        }
        None => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    Ok(answer)
}

/// How long a client has to send its request body (64 MiB at 1 MB/s takes about a minute).
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The request body, at most `limit` bytes (413 beyond, before reading it when
/// Content-Length says so).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<bytes::Bytes, Response> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is over the limit of {limit} bytes (max_message_bytes)"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await;
    let Ok(read) = read else {
        return Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request body did not arrive within {} s",
                BODY_TIMEOUT.as_secs()
            ),
        ));
    };
    read.map_err(|e| {
        let length_limit = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if length_limit {
            too_large()
        } else {
            error(
                StatusCode::BAD_REQUEST,
                format!("could not read the request body: {e}"),
            )
        }
    })
}

async fn repository_index(State(rest): State<Arc<Rest>>, caller: Caller) -> Answer {
    let message = RepositoryIndexRequest::default();
    let r = rest
        .call("RepositoryIndex", &caller, message, |r, q| async move {
            r.inference.repository_index(q).await
        })
        .await?;
    let models: Vec<Value> = r
        .models
        .iter()
        .map(
            |m| json!({"name": m.name, "version": m.version, "state": m.state, "reason": m.reason}),
        )
        .collect();
    Ok(json_ok(Value::Array(models)))
}

async fn repository_load(
    State(rest): State<Arc<Rest>>,
    JsonPath(p): Model,
    caller: Caller,
    body: Body,
) -> Answer {
    // Triton's REST load: `{"parameters": {"config": "<JSON>", "file:1/model.onnx":
    // "<base64>"}}` (tritonclient.http's load_model(config=..., files=...)), bounded by the
    // body limit; larger models go with `localml models push`. The key is checked first.
    let principal = rest.authorize("RepositoryModelLoad", &caller).await?;
    let body = read_body(&caller.headers, body, rest.max_body_bytes).await?;
    let message = RepositoryModelLoadRequest {
        model_name: p.model,
        parameters: codec::repository_parameters(&body)?,
        ..Default::default()
    };
    rest.call_as(principal, message, |r, q| async move {
        r.inference.repository_model_load(q).await
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn repository_unload(
    State(rest): State<Arc<Rest>>,
    JsonPath(p): Model,
    caller: Caller,
) -> Answer {
    let message = RepositoryModelUnloadRequest {
        model_name: p.model,
        ..Default::default()
    };
    rest.call(
        "RepositoryModelUnload",
        &caller,
        message,
        |r, q| async move { r.inference.repository_model_unload(q).await },
    )
    .await?;
    Ok(StatusCode::OK.into_response())
}

async fn no_route(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no route {method} {}: the Open Inference Protocol's routes are under /v2 (docs/rest.md)",
            uri.path()
        ),
    )
}

async fn wrong_method(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Query parameter names that would carry a key in a URL.
const KEY_PARAMETERS: &[&str] = &[
    "key",
    "api_key",
    "apikey",
    "api-key",
    "token",
    "access_token",
    "authorization",
    "bearer",
];

/// Whether a query string carries a key: a key-like parameter name, or a value holding
/// `lmk_` (decoded first, so `%5F` does not hide it).
fn query_carries_key(query: &str) -> bool {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .to_ascii_lowercase()
    };
    query.split('&').any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        KEY_PARAMETERS.contains(&decode(name).as_str())
            || decode(value).contains("lmk_")
            || decode(name).contains("lmk_")
    })
}

/// Whether `host` (a Host header, or an origin's host) names this PC's loopback.
fn loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks made before any route: no key in the URL; no compressed body (refused, not
/// misread); on an open loopback listener, only requests addressed to localhost and
/// from no web origin but this PC's own and the listed ones.
async fn guard(
    State(rest): State<Arc<Rest>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    match refusal(&rest, &request) {
        Some(refused) => refused,
        None => next.run(request).await,
    }
}

/// Why [`guard`] refuses `request`, if it does.
fn refusal(rest: &Rest, request: &Request) -> Option<Response> {
    if request.uri().query().is_some_and(query_carries_key) {
        return Some(error(
            StatusCode::BAD_REQUEST,
            "an API key was sent in the URL: send it in the Authorization header ('Authorization: Bearer KEY'); URLs end up in logs and browser history",
        ));
    }
    let header = |name: header::HeaderName| {
        request
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap_or("(not text)").to_string())
    };
    if let Some(encoding) = header(header::CONTENT_ENCODING).filter(|e| e != "identity") {
        return Some(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("Content-Encoding '{encoding}' is not supported: send the body uncompressed"),
        ));
    }
    if rest.open_loopback {
        if let Some(host) = header(header::HOST).filter(|h| !loopback_host(h)) {
            return Some(error(
                StatusCode::FORBIDDEN,
                format!("this listener answers without keys for this PC only, so it takes requests addressed to localhost, not '{host}' (a web page could otherwise reach it by DNS rebinding)"),
            ));
        }
        let origin = header(header::ORIGIN);
        if let Some(origin) = origin.filter(|o| {
            !rest.cors_origins.contains(o)
                && !o
                    .split_once("://")
                    .is_some_and(|(_, host)| loopback_host(host))
        }) {
            return Some(error(
                StatusCode::FORBIDDEN,
                format!("requests from the web page '{origin}' are refused on this listener, which answers without keys; list the origin in rest_cors_origins to allow it"),
            ));
        }
    }
    None
}

/// The REST routes.
pub fn router(rest: Arc<Rest>) -> axum::Router {
    let cors_origins = rest.cors_origins.clone();
    let models = "/v2/models/{model}";
    let versions = "/v2/models/{model}/versions/{version}";
    let mut router = axum::Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(server_live))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/stats", get(all_statistics))
        .route(models, get(model_metadata))
        .route(versions, get(model_metadata))
        .route(&format!("{models}/ready"), get(model_ready))
        .route(&format!("{versions}/ready"), get(model_ready))
        .route(&format!("{models}/config"), get(model_config))
        .route(&format!("{versions}/config"), get(model_config))
        .route(&format!("{models}/stats"), get(model_statistics))
        .route(&format!("{versions}/stats"), get(model_statistics))
        .route(&format!("{models}/infer"), post(model_infer))
        .route(&format!("{versions}/infer"), post(model_infer))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .merge(ui::routes())
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&rest),
            guard,
        ))
        .with_state(rest);
    if !cors_origins.is_empty() {
        router = router.layer(cors(&cors_origins));
    }
    router
}

/// CORS for browser apps served from `origins` (exact matches).
fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    // Checked by the config (scheme://host[:port], no wildcard): each is a header value.
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    let length = header::HeaderName::from_static(codec::HEADER_LENGTH);
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE, length.clone()])
        .expose_headers([length, header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}

/// Serves the REST routes on `listener` until `shutdown` completes, then finishes the
/// requests in flight.
pub async fn serve(
    listener: RestListener,
    rest: Arc<Rest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(rest);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<Remote>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_in_urls_are_found_however_they_are_encoded() {
        for query in [
            "api_key=x",
            "KEY=x",
            "a=1&token=x",
            "x=lmk_abc",
            "x=Bearer+lmk_abc",
            "x=lmk%5Fabc",
            "k%65y=x",
        ] {
            assert!(query_carries_key(query), "{query}");
        }
        for query in ["a=1", "model=image_classifier&v=2", "lmk=1"] {
            assert!(!query_carries_key(query), "{query}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:8000",
            "127.0.0.1:8000",
            "127.1.2.3",
            "[::1]:8000",
            "LOCALHOST",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:8000",
            "10.0.0.5:8000",
            "localhost.evil.example",
            "[::2]:80",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }

    #[test]
    fn a_refusal_with_a_retry_hint_says_retry_after_in_whole_seconds() {
        let mut status = Status::resource_exhausted("the queue is full");
        status
            .metadata_mut()
            .insert("grpc-retry-pushback-ms", "1500".parse().expect("ascii"));
        let answer = status_response(&status);
        assert_eq!(answer.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            answer.headers().get(header::RETRY_AFTER),
            Some(&HeaderValue::from(2))
        );
        let plain = status_response(&Status::unavailable("no worker"));
        assert_eq!(plain.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(plain.headers().get(header::RETRY_AFTER).is_none());
    }
}
