//! `localml.v1.Keys`: operators create, list and revoke API keys (admin scope; the auth
//! layer checks it). A key's secret is returned once, by CreateKey, and never logged.

use std::sync::Arc;

use localml_proto::localml::v1::keys_server::Keys;
use localml_proto::localml::v1::*;
use localml_store::Store;
use tonic::{Request, Response, Status};

use crate::auth::keys::{self, KeyRecord, KeyStoreError};
use crate::auth::Scope;

impl From<KeyStoreError> for Status {
    fn from(e: KeyStoreError) -> Status {
        let message = e.to_string();
        match e {
            KeyStoreError::Exists(_) => Status::already_exists(message),
            KeyStoreError::NotFound(_) => Status::not_found(message),
            KeyStoreError::Store(_) => Status::unavailable(message),
            KeyStoreError::Random(_) | KeyStoreError::Corrupt(..) => Status::internal(message),
        }
    }
}

/// A key as the API lists it: never its hash.
pub fn info(r: &KeyRecord) -> ApiKey {
    ApiKey {
        name: r.name.clone(),
        id: format!("{}{}", keys::KEY_PREFIX, r.id),
        scopes: r.scopes.iter().map(|s| s.as_str().to_string()).collect(),
        tenant: r.tenant.clone(),
        models: r.models.clone(),
        created_unix_ms: r.created_unix_ms,
        expires_unix_ms: r.expires_unix_ms,
        revoked: r.revoked,
        description: r.description.clone(),
        anonymous: r.anonymous,
    }
}

/// Checks a CreateKey request and builds the record to store (without id and hash).
pub fn record(r: CreateKeyRequest, now_ms: u64) -> Result<KeyRecord, Status> {
    if !keys::valid_name(&r.name) {
        return Err(Status::invalid_argument(format!(
            "name '{}': use 1 to 64 letters, digits, '-', '_', '.' or '@'",
            r.name
        )));
    }
    if r.scopes.is_empty() {
        return Err(Status::invalid_argument(
            "scopes: at least one of infer, jobs, admin",
        ));
    }
    let mut scopes = r
        .scopes
        .iter()
        .map(|s| s.parse::<Scope>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Status::invalid_argument(format!("scopes: {e}")))?;
    scopes.sort();
    scopes.dedup();
    let tenant = if r.tenant.is_empty() {
        r.name.clone()
    } else {
        r.tenant.clone()
    };
    if tenant.len() > 128 || r.description.len() > 1024 || r.models.len() > 256 {
        return Err(Status::invalid_argument(
            "tenant (128 bytes), description (1024 bytes) or models (256) too long",
        ));
    }
    if r.anonymous && (scopes != [Scope::Infer] || r.models.is_empty()) {
        return Err(Status::invalid_argument(
            "an anonymous key serves callers without a key: it takes only the infer scope \
             and needs the models it opens (--models a,b)",
        ));
    }
    let expires_unix_ms = match r.expires_in_seconds {
        0 => 0,
        s => now_ms.saturating_add(s.saturating_mul(1000)),
    };
    Ok(KeyRecord {
        name: r.name,
        id: String::new(),
        secret_sha256: String::new(),
        scopes,
        tenant,
        models: r.models,
        created_unix_ms: now_ms,
        expires_unix_ms,
        revoked: false,
        description: r.description,
        anonymous: r.anonymous,
    })
}

pub struct KeysService {
    pub store: Arc<dyn Store>,
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Keys for KeysService {
    async fn create_key(&self, r: Request<CreateKeyRequest>) -> Answer<CreateKeyResponse> {
        let by = crate::auth::principal(&r).map(|p| p.key.clone());
        let record = record(r.into_inner(), localml_proto::time::unix_ms())?;
        let (key, record) = keys::create(self.store.as_ref(), record).await?;
        tracing::info!(name = %record.name, scopes = ?record.scopes, tenant = %record.tenant, by = ?by, "API key created");
        if record.anonymous {
            tracing::warn!(name = %record.name, models = ?record.models, by = ?by, "anonymous key: inference of these models is open to every caller that reaches the client port, without a key");
        }
        Ok(Response::new(CreateKeyResponse {
            key,
            info: Some(info(&record)),
        }))
    }

    async fn list_keys(&self, _: Request<ListKeysRequest>) -> Answer<ListKeysResponse> {
        let keys = keys::list(self.store.as_ref()).await?;
        Ok(Response::new(ListKeysResponse {
            keys: keys.iter().map(info).collect(),
        }))
    }

    async fn revoke_key(&self, r: Request<RevokeKeyRequest>) -> Answer<ApiKey> {
        let by = crate::auth::principal(&r).map(|p| p.key.clone());
        let name = r.into_inner().name;
        let record = keys::revoke(self.store.as_ref(), &name).await?;
        tracing::info!(name = %record.name, by = ?by, "API key revoked");
        Ok(Response::new(info(&record)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_requests_are_checked() {
        let ok = record(
            CreateKeyRequest {
                name: "app".into(),
                scopes: vec!["jobs".into(), "infer".into(), "jobs".into()],
                expires_in_seconds: 60,
                ..Default::default()
            },
            1_000,
        )
        .expect("valid");
        assert_eq!(ok.scopes, vec![Scope::Infer, Scope::Jobs]);
        assert_eq!(ok.tenant, "app", "tenant defaults to the name");
        assert_eq!(ok.expires_unix_ms, 61_000);
        let bad = |r: CreateKeyRequest| record(r, 0).expect_err("invalid").message().to_string();
        assert!(bad(CreateKeyRequest {
            name: "a b".into(),
            scopes: vec!["infer".into()],
            ..Default::default()
        })
        .contains("name"));
        assert!(bad(CreateKeyRequest {
            name: "a".into(),
            ..Default::default()
        })
        .contains("scopes"));
        assert!(bad(CreateKeyRequest {
            name: "a".into(),
            scopes: vec!["root".into()],
            ..Default::default()
        })
        .contains("root"));
    }
}
