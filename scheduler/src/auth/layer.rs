//! The tower layer that guards the client port: every gRPC method needs a scope (health
//! needs none); a request either carries a valid key with that scope, or — on an open
//! listener only — no key at all. The caller's [`Principal`] goes into the request's
//! extensions for the services. Refusals are gRPC statuses: UNAUTHENTICATED with the
//! reason (missing, malformed, unknown, revoked, expired), PERMISSION_DENIED naming the
//! scope. Repeated failures from one address are answered more and more slowly (up to
//! 2 s), so guessing costs time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tonic::codegen::http;
use tonic::Status;

use super::keys::{KeyError, KeyRing};
use super::{Principal, Scope};

/// The scope a gRPC method needs; `None`: public (health).
pub fn required_scope(path: &str) -> Option<Scope> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "inference.GRPCInferenceService" => match method {
            "ServerLive" | "ServerReady" => None,
            "ModelInfer" | "ModelStreamInfer" | "ModelReady" | "ModelMetadata" | "ModelConfig"
            | "ModelStatistics" | "ServerMetadata" => Some(Scope::Infer),
            // Repository, shared memory, trace and log settings change the server.
            _ => Some(Scope::Admin),
        },
        "grpc.health.v1.Health" => None,
        "localml.v1.Jobs" => Some(Scope::Jobs),
        // The cluster CA's certificate is public: clients fetch it to verify TLS.
        "localml.v1.Trust" if method == "GetCa" => None,
        // Admin, Keys, Trust, Backup and anything added later: admin until said otherwise.
        _ => Some(Scope::Admin),
    }
}

/// The caller's address, over plain TCP or TLS.
fn remote_ip(extensions: &http::Extensions) -> Option<IpAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    extensions
        .get::<TcpConnectInfo>()
        .and_then(|info| info.remote_addr())
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
        .map(|a| a.ip())
}

/// Failures counted per address within this window.
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Extra delay per recent failure, and its ceiling.
const FAILURE_STEP: Duration = Duration::from_millis(100);
const FAILURE_CAP: Duration = Duration::from_secs(2);
/// Addresses remembered at most (a flood of addresses cannot grow memory).
const FAILURE_ADDRESSES: usize = 10_000;

/// What the layer decides with.
pub struct AuthState {
    pub ring: Arc<KeyRing>,
    /// Keys required even without a key presented (else a request without one passes).
    pub required: bool,
    /// Recent failures per address, shared by the listeners made [`AuthState::with_required`].
    failures: Arc<Mutex<HashMap<IpAddr, (u32, Instant)>>>,
}

impl AuthState {
    pub fn new(ring: Arc<KeyRing>, required: bool) -> AuthState {
        AuthState {
            ring,
            required,
            failures: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The same keys and the same count of failures per address, for another listener
    /// with its own `required` (a guess costs as much time on either listener).
    pub fn with_required(&self, required: bool) -> AuthState {
        AuthState {
            ring: Arc::clone(&self.ring),
            required,
            failures: Arc::clone(&self.failures),
        }
    }

    /// The delay before answering a failure from `ip`, counting this one.
    fn failed(&self, ip: Option<IpAddr>) -> Duration {
        let Some(ip) = ip else {
            return FAILURE_STEP;
        };
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() >= FAILURE_ADDRESSES {
            failures.retain(|_, (_, at)| at.elapsed() < FAILURE_WINDOW);
            if failures.len() >= FAILURE_ADDRESSES {
                failures.clear();
            }
        }
        let entry = failures.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= FAILURE_WINDOW {
            *entry = (0, Instant::now());
        }
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
        (FAILURE_STEP * entry.0.saturating_sub(1)).min(FAILURE_CAP)
    }

    /// How long to wait before answering a refusal from `ip`: failed keys (UNAUTHENTICATED)
    /// cost more and more time per address; a missing scope costs none.
    pub fn refusal_delay(&self, status: &Status, ip: Option<IpAddr>) -> Duration {
        if status.code() == tonic::Code::Unauthenticated {
            self.failed(ip)
        } else {
            Duration::ZERO
        }
    }

    /// The caller of a request to `path` with these headers, or the status refusing it.
    pub fn decide(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        now_ms: u64,
    ) -> Result<Option<Principal>, Status> {
        let Some(scope) = required_scope(path) else {
            return Ok(None);
        };
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            if !self.required {
                return Ok(None);
            }
            // An operator opened some models to callers without a key (a kiosk).
            return match self.ring.anonymous(now_ms) {
                Some(record) if record.scopes.contains(&scope) => Ok(Some(principal(record))),
                _ => Err(Status::unauthenticated(KeyError::Missing.to_string())),
            };
        };
        let key = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| Status::unauthenticated(KeyError::Malformed.to_string()))?;
        let record = self
            .ring
            .check(key, now_ms)
            .map_err(|e| Status::unauthenticated(e.to_string()))?;
        if !record.scopes.contains(&scope) {
            return Err(Status::permission_denied(format!(
                "API key '{}' lacks the '{}' scope that {path} needs (it has: {})",
                record.name,
                scope.as_str(),
                record
                    .scopes
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(Some(principal(record)))
    }
}

fn principal(record: super::keys::KeyRecord) -> Principal {
    Principal {
        key_id: record.id,
        key: record.name,
        scopes: record.scopes,
        tenant: record.tenant,
        models: record.models,
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    pub state: Arc<AuthState>,
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Auth<S>;
    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    state: Arc<AuthState>,
}

impl<S, B> tower_service::Service<http::Request<B>> for Auth<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let now_ms = localml_proto::time::unix_ms();
        match self
            .state
            .decide(request.uri().path(), request.headers(), now_ms)
        {
            Ok(principal) => {
                if let Some(p) = principal {
                    request.extensions_mut().insert(super::KeyWatch {
                        ring: Arc::clone(&self.state.ring),
                        id: p.key_id.clone(),
                    });
                    request.extensions_mut().insert(p);
                }
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                let ip = remote_ip(request.extensions());
                let delay = self.state.refusal_delay(&status, ip);
                tracing::debug!(path = request.uri().path(), code = ?status.code(), reason = status.message(), ?ip, "request refused");
                Box::pin(async move {
                    tokio::time::sleep(delay).await;
                    Ok(status.into_http())
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::{generate, KeyRecord};

    #[test]
    fn every_method_maps_to_a_scope() {
        let cases = [
            ("/inference.GRPCInferenceService/ServerLive", None),
            ("/inference.GRPCInferenceService/ServerReady", None),
            (
                "/inference.GRPCInferenceService/ModelInfer",
                Some(Scope::Infer),
            ),
            (
                "/inference.GRPCInferenceService/ModelStatistics",
                Some(Scope::Infer),
            ),
            (
                "/inference.GRPCInferenceService/RepositoryModelLoad",
                Some(Scope::Admin),
            ),
            ("/localml.v1.Jobs/Submit", Some(Scope::Jobs)),
            ("/localml.v1.Admin/SetCordon", Some(Scope::Admin)),
            ("/localml.v1.Keys/CreateKey", Some(Scope::Admin)),
            // A backup holds the cluster CA's private key and every key's hash.
            ("/localml.v1.Backup/Backup", Some(Scope::Admin)),
            ("/something.New/Call", Some(Scope::Admin)),
            ("garbage", Some(Scope::Admin)),
        ];
        for (path, scope) in cases {
            assert_eq!(required_scope(path), scope, "{path}");
        }
    }

    #[test]
    fn callers_without_a_key_get_what_an_anonymous_key_opens() {
        let ring = Arc::new(KeyRing::default());
        let kiosk = |name: &str, models: &[&str], revoked: bool, expires_unix_ms: u64| KeyRecord {
            name: name.into(),
            id: format!("id-{name}"),
            secret_sha256: String::new(),
            scopes: vec![Scope::Infer],
            tenant: "kiosk".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
            created_unix_ms: 0,
            expires_unix_ms,
            revoked,
            description: String::new(),
            anonymous: true,
        };
        ring.insert_for_test(kiosk("b-kiosk", &["b", "a"], false, 0));
        ring.insert_for_test(kiosk("a-kiosk", &["a"], false, 0));
        ring.insert_for_test(kiosk("gone", &["c"], true, 0));
        ring.insert_for_test(kiosk("old", &["d"], false, 5));
        let state = AuthState::new(ring, true);
        let infer = "/inference.GRPCInferenceService/ModelInfer";
        let p = state
            .decide(infer, &http::HeaderMap::new(), 10)
            .expect("served without a key")
            .expect("as the anonymous keys");
        assert_eq!(p.models, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(p.key, "a-kiosk,b-kiosk");
        assert!(p.check_model("c").is_err() && p.check_model("d").is_err());
        // Nothing but inference.
        let admin = state.decide("/localml.v1.Admin/ListWorkers", &http::HeaderMap::new(), 10);
        assert_eq!(
            admin.expect_err("admin").code(),
            tonic::Code::Unauthenticated
        );
        // A wrong key is still refused, not served anonymously.
        let bad = state.decide(infer, &headers("Bearer lmk_nope"), 10);
        assert_eq!(
            bad.expect_err("bad key").code(),
            tonic::Code::Unauthenticated
        );
    }

    fn state_with(scopes: Vec<Scope>, required: bool) -> (AuthState, String) {
        let ring = Arc::new(KeyRing::default());
        let new = generate().expect("random");
        ring.insert_for_test(KeyRecord {
            name: "app".into(),
            id: new.id.clone(),
            secret_sha256: new.secret_sha256.clone(),
            scopes,
            tenant: "school".into(),
            models: Vec::new(),
            created_unix_ms: 0,
            expires_unix_ms: 0,
            revoked: false,
            description: String::new(),
            anonymous: false,
        });
        (AuthState::new(ring, required), new.text)
    }

    fn headers(value: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(value).expect("header"),
        );
        h
    }

    #[test]
    fn decisions() {
        let infer = "/inference.GRPCInferenceService/ModelInfer";
        let cordon = "/localml.v1.Admin/SetCordon";
        let live = "/inference.GRPCInferenceService/ServerLive";
        let (open, key) = state_with(vec![Scope::Infer], false);
        let none = http::HeaderMap::new();
        assert!(
            matches!(open.decide(infer, &none, 0), Ok(None)),
            "open: no key passes"
        );
        let p = open
            .decide(infer, &headers(&format!("Bearer {key}")), 0)
            .expect("valid")
            .expect("principal");
        assert_eq!((p.key.as_str(), p.tenant.as_str()), ("app", "school"));
        let denied = open
            .decide(cordon, &headers(&format!("Bearer {key}")), 0)
            .expect_err("no admin scope");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(
            denied.message().contains("'admin' scope"),
            "{}",
            denied.message()
        );
        let bad = open
            .decide(infer, &headers("Bearer lmk_nope"), 0)
            .expect_err("a presented key is checked even when open");
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
        assert!(bad.message().contains("malformed"));

        let (required, key) = state_with(vec![Scope::Infer], true);
        let missing = required.decide(infer, &none, 0).expect_err("required");
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("no API key"));
        assert!(
            matches!(required.decide(live, &none, 0), Ok(None)),
            "health is public"
        );
        let basic = required
            .decide(infer, &headers("Basic abc"), 0)
            .expect_err("not bearer");
        assert!(basic.message().contains("malformed"));
        assert!(required
            .decide(infer, &headers(&format!("bearer {key}")), 0)
            .is_ok());
        assert!(!missing.message().contains(&key) && !denied.message().contains(&key));
    }

    #[test]
    fn failures_slow_down_one_address_up_to_a_cap() {
        let (state, _) = state_with(vec![Scope::Infer], true);
        let ip: IpAddr = [10, 0, 0, 9].into();
        let delays: Vec<Duration> = (0..30).map(|_| state.failed(Some(ip))).collect();
        assert_eq!(delays[0], Duration::ZERO);
        assert_eq!(delays[1], FAILURE_STEP);
        assert_eq!(delays[29], FAILURE_CAP);
        assert_eq!(
            state.failed(Some([10, 0, 0, 8].into())),
            Duration::ZERO,
            "per address"
        );
    }
}
