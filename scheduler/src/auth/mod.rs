//! Who may call the client port: API keys with scopes (docs/security.md).
//!
//! - [`keys`]: the key format, the store records and the [`keys::KeyRing`] every replica
//!   follows.
//! - [`layer`]: the tower layer in front of the client port's services. It maps each
//!   gRPC method to the scope it needs, checks `authorization: Bearer KEY`, and hands the
//!   caller's [`Principal`] to the services in the request's extensions. The services
//!   check what only they can see: the model a request names and the tenant of a job.

pub mod keys;
pub mod layer;

use serde::{Deserialize, Serialize};
use tonic::Status;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Inference, model metadata, config and statistics (of the allowed models).
    Infer,
    /// Submit, get, watch, cancel and list the key's tenant's jobs.
    Jobs,
    /// Cordon, drain, deployments, keys, workers; every tenant's jobs.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Infer => "infer",
            Scope::Jobs => "jobs",
            Scope::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Scope, String> {
        match s {
            "infer" => Ok(Scope::Infer),
            "jobs" => Ok(Scope::Jobs),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope '{other}': expected infer, jobs or admin"
            )),
        }
    }
}

/// Whether the client port serves TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ClientTls {
    /// TLS on a listener reachable from the LAN (unless `--insecure`); plain on loopback
    /// (the default).
    #[default]
    Auto,
    /// TLS on every listener, loopback included.
    Required,
    /// Never TLS; on a listener reachable from the LAN only with `--insecure`.
    Off,
}

/// Whether the client port demands keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// Keys on a listener reachable from the LAN; open on loopback (the default).
    #[default]
    Auto,
    /// Keys on every listener, loopback included.
    Required,
}

/// The caller of a request that presented a valid key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's id (the public part of `lmk_<id>.<secret>`).
    pub key_id: String,
    /// The key's name.
    pub key: String,
    pub scopes: Vec<Scope>,
    pub tenant: String,
    /// Empty: every model.
    pub models: Vec<String>,
}

impl Principal {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    /// PERMISSION_DENIED unless the key may use `model`.
    pub fn check_model(&self, model: &str) -> Result<(), Status> {
        if self.models.is_empty() || self.models.iter().any(|m| m == model) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "API key '{}' may not use model '{model}' (it may use: {})",
            self.key,
            self.models.join(", ")
        )))
    }

    /// The tenant a request runs as: the key's. A request naming another tenant is
    /// refused with PERMISSION_DENIED; an admin key may act for any tenant.
    pub fn tenant_for(&self, asked: &str) -> Result<String, Status> {
        if asked.is_empty() || asked == self.tenant || self.has(Scope::Admin) {
            return Ok(if asked.is_empty() {
                self.tenant.clone()
            } else {
                asked.to_string()
            });
        }
        Err(Status::permission_denied(format!(
            "API key '{}' belongs to tenant '{}' and may not act for tenant '{asked}'",
            self.key, self.tenant
        )))
    }
}

/// The caller of a request, if it presented a key (`None`: an open listener, no key).
pub fn principal<T>(request: &tonic::Request<T>) -> Option<&Principal> {
    request.extensions().get::<Principal>()
}

/// The key a request presented, as the ring knows it: a stream opened with it ends when
/// the key is revoked or expires ([`end_when_invalid`]).
#[derive(Clone)]
pub struct KeyWatch {
    pub ring: std::sync::Arc<keys::KeyRing>,
    pub id: String,
}

impl KeyWatch {
    /// Resolves, with the status to end a stream with, once the key is no longer valid
    /// (revoked on any replica, deleted, or expired).
    pub async fn invalidated(self) -> Status {
        let mut changes = self.ring.subscribe();
        loop {
            let now = localml_proto::time::unix_ms();
            let expires = match self.ring.still_valid(&self.id, now) {
                Ok(expires) => expires,
                Err(e) => return Status::unauthenticated(e.to_string()),
            };
            // Expiry is a time, not a change: wake at it (and at least hourly, should the
            // clock jump).
            let hour = std::time::Duration::from_secs(3600);
            let until_expiry = match expires {
                0 => hour,
                at => std::time::Duration::from_millis(at.saturating_sub(now)).min(hour),
            };
            tokio::select! {
                changed = changes.changed() => if changed.is_err() {
                    return std::future::pending().await;
                },
                _ = tokio::time::sleep(until_expiry) => {}
            }
        }
    }
}

pub fn key_watch<T>(request: &tonic::Request<T>) -> Option<KeyWatch> {
    request.extensions().get::<KeyWatch>().cloned()
}

/// `stream`, ended with UNAUTHENTICATED (the reason) as soon as the key it was opened
/// with (`watch`; none on an open listener) is revoked or expires, rather than serving
/// on until the client hangs up.
pub fn end_when_invalid<T: Send + 'static>(
    stream: std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>>,
    watch: Option<KeyWatch>,
) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send>> {
    use futures::StreamExt;
    let Some(watch) = watch else {
        return stream;
    };
    let stop = Box::pin(watch.invalidated());
    Box::pin(futures::stream::unfold(
        (stream, stop, false),
        |(mut stream, mut stop, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                biased;
                status = &mut stop => {
                    tracing::info!(reason = status.message(), "stream ended: its API key is no longer valid");
                    Some((Err(status), (stream, stop, true)))
                }
                item = stream.next() => item.map(|i| (i, (stream, stop, false))),
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scopes: Vec<Scope>, models: &[&str]) -> Principal {
        Principal {
            key_id: "0123456789abcdef".into(),
            key: "app".into(),
            scopes,
            tenant: "school".into(),
            models: models.iter().map(|m| m.to_string()).collect(),
        }
    }

    #[test]
    fn models_and_tenants_are_checked() {
        let any = key(vec![Scope::Infer], &[]);
        assert!(any.check_model("m").is_ok());
        let one = key(vec![Scope::Infer], &["text"]);
        assert!(one.check_model("text").is_ok());
        let denied = one.check_model("image").expect_err("not allowed");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("'image'"), "{}", denied.message());

        let jobs = key(vec![Scope::Jobs], &[]);
        assert_eq!(jobs.tenant_for("").expect("own"), "school");
        assert_eq!(jobs.tenant_for("school").expect("own"), "school");
        let other = jobs.tenant_for("clinic").expect_err("another tenant");
        assert_eq!(other.code(), tonic::Code::PermissionDenied);
        let admin = key(vec![Scope::Admin], &[]);
        assert_eq!(admin.tenant_for("clinic").expect("admin"), "clinic");
    }

    #[test]
    fn scopes_parse() {
        assert_eq!("jobs".parse::<Scope>(), Ok(Scope::Jobs));
        assert!("root"
            .parse::<Scope>()
            .expect_err("unknown")
            .contains("root"));
    }
}
