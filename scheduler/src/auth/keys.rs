//! API keys: `lmk_<id>.<secret>`, where the id (16 hex digits) finds the key and the
//! secret (64 hex digits, 256 random bits) proves it. The store keeps, per key name, the
//! id, the SHA-256 of the secret, scopes, tenant, models and expiry (`keys/<name>`); every
//! replica follows that prefix into a [`KeyRing`], so a revocation reaches all of them
//! through the store's watch, without a restart.
//!
//! The secret is hashed with plain SHA-256, not a password hash: it is 256 random bits,
//! so there is nothing to brute-force, and a check must cost microseconds on every request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use localml_store::{escape_segment, Store, Txn};
use serde::{Deserialize, Serialize};

use super::Scope;

/// Store prefix of the keys.
pub const KEYS: &str = "keys/";
/// Every key starts with this, so it is recognisable in a config file or a leaked paste.
pub const KEY_PREFIX: &str = "lmk_";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// A key as stored: never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub name: String,
    pub id: String,
    /// Lowercase hex SHA-256 of the secret.
    pub secret_sha256: String,
    pub scopes: Vec<Scope>,
    pub tenant: String,
    /// Models an `infer` or `jobs` key may use; empty: all.
    pub models: Vec<String>,
    pub created_unix_ms: u64,
    /// 0: never.
    pub expires_unix_ms: u64,
    pub revoked: bool,
    pub description: String,
    /// Callers that send no key are served as this key (a kiosk).
    #[serde(default)]
    pub anonymous: bool,
}

/// Why a presented key is refused (UNAUTHENTICATED); never says which part of a secret
/// was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("no API key: send the metadata 'authorization: Bearer <key>' (docs/security.md)")]
    Missing,
    #[error("malformed API key: expected 'authorization: Bearer lmk_<id>.<secret>'")]
    Malformed,
    #[error("unknown API key")]
    Unknown,
    #[error("API key '{0}' was revoked")]
    Revoked(String),
    #[error("API key '{0}' expired")]
    Expired(String),
}

/// The hex SHA-256 of a key's secret (the trust crate's, shared with join tokens).
fn sha256_hex(text: &str) -> String {
    localml_trust::sha256_hex(text.as_bytes())
}

/// A new key's text and its id, and the hash to store.
pub struct NewKey {
    pub text: String,
    pub id: String,
    pub secret_sha256: String,
}

/// Generates a key from the operating system's random source.
pub fn generate() -> Result<NewKey, localml_trust::TrustError> {
    let id = localml_trust::random_hex(ID_BYTES)?;
    let secret = localml_trust::random_hex(SECRET_BYTES)?;
    Ok(NewKey {
        text: format!("{KEY_PREFIX}{id}.{secret}"),
        secret_sha256: sha256_hex(&secret),
        id,
    })
}

/// Splits `lmk_<id>.<secret>` (after `Bearer `) into id and secret, checking the shape.
pub fn parse(text: &str) -> Result<(&str, &str), KeyError> {
    let rest = text.strip_prefix(KEY_PREFIX).ok_or(KeyError::Malformed)?;
    let (id, secret) = rest.split_once('.').ok_or(KeyError::Malformed)?;
    let is_hex = |s: &str, n: usize| s.len() == n * 2 && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_hex(id, ID_BYTES) || !is_hex(secret, SECRET_BYTES) {
        return Err(KeyError::Malformed);
    }
    Ok((id, secret))
}

/// Whether `name` may name a key: letters, digits, `-`, `_`, `.`, `@`, 1 to 64 characters.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
}

/// The keys by id, as every replica sees them.
pub struct KeyRing {
    by_id: RwLock<HashMap<String, KeyRecord>>,
    /// Bumped on every change, so open streams look at their key again.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for KeyRing {
    fn default() -> KeyRing {
        KeyRing {
            by_id: RwLock::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl KeyRing {
    /// Whether the key with `id` is still valid at `now_ms` (a stream opened with it is
    /// ended when not).
    /// Returns when the key expires (0: never).
    pub fn still_valid(&self, id: &str, now_ms: u64) -> Result<u64, KeyError> {
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let record = by_id.get(id).ok_or(KeyError::Unknown)?;
        if record.revoked {
            return Err(KeyError::Revoked(record.name.clone()));
        }
        if record.expires_unix_ms != 0 && now_ms >= record.expires_unix_ms {
            return Err(KeyError::Expired(record.name.clone()));
        }
        Ok(record.expires_unix_ms)
    }

    /// Changes to the ring (the value means nothing; wait for `changed`).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// What a caller that sends no key may do at `now_ms`: the valid anonymous keys
    /// (revoked and expired ones are not), as one record whose models are all of theirs.
    pub fn anonymous(&self, now_ms: u64) -> Option<KeyRecord> {
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let mut valid: Vec<&KeyRecord> = by_id
            .values()
            .filter(|r| r.anonymous && !r.revoked)
            .filter(|r| r.expires_unix_ms == 0 || now_ms < r.expires_unix_ms)
            .collect();
        valid.sort_by(|a, b| a.name.cmp(&b.name));
        let first = (*valid.first()?).clone();
        let mut models: Vec<String> = valid.iter().flat_map(|r| r.models.clone()).collect();
        models.sort();
        models.dedup();
        Some(KeyRecord {
            name: valid
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(","),
            models,
            ..first
        })
    }

    /// Checks a presented key at `now_ms`: the record it belongs to, or why not.
    pub fn check(&self, text: &str, now_ms: u64) -> Result<KeyRecord, KeyError> {
        let (id, secret) = parse(text)?;
        let by_id = self.by_id.read().unwrap_or_else(|e| e.into_inner());
        let record = by_id.get(id).ok_or(KeyError::Unknown)?;
        if !localml_trust::constant_time_eq(
            record.secret_sha256.as_bytes(),
            sha256_hex(secret).as_bytes(),
        ) {
            return Err(KeyError::Unknown);
        }
        if record.revoked {
            return Err(KeyError::Revoked(record.name.clone()));
        }
        if record.expires_unix_ms != 0 && now_ms >= record.expires_unix_ms {
            return Err(KeyError::Expired(record.name.clone()));
        }
        Ok(record.clone())
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(&self, record: KeyRecord) {
        self.upsert(record);
    }

    /// Reads every key from the store now (before the port serves, so a key that exists
    /// is known from the first request).
    pub async fn load(&self, store: &dyn Store) -> Result<(), KeyStoreError> {
        self.replace(list(store).await?);
        Ok(())
    }

    fn replace(&self, records: Vec<KeyRecord>) {
        *self.by_id.write().unwrap_or_else(|e| e.into_inner()) =
            records.into_iter().map(|r| (r.id.clone(), r)).collect();
        self.changed();
    }

    fn upsert(&self, record: KeyRecord) {
        {
            let mut by_id = self.by_id.write().unwrap_or_else(|e| e.into_inner());
            by_id.retain(|_, r| r.name != record.name);
            by_id.insert(record.id.clone(), record);
        }
        self.changed();
    }

    fn remove_name(&self, name: &str) {
        self.by_id
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, r| r.name != name);
        self.changed();
    }

    /// Keeps the ring equal to the store's `keys/` (every replica runs this).
    pub async fn follow(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let decode = |value: &[u8], key: &str| match serde_json::from_slice::<KeyRecord>(value) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!(key, error = %e, "unreadable key record ignored");
                None
            }
        };
        localml_store::follow(
            store,
            KEYS,
            stop,
            |kvs| {
                self.replace(
                    kvs.iter()
                        .filter_map(|kv| decode(&kv.value, &kv.key))
                        .collect(),
                )
            },
            |event| match event {
                localml_store::Event::Put(kv) => {
                    if let Some(r) = decode(&kv.value, &kv.key) {
                        self.upsert(r);
                    }
                }
                localml_store::Event::Delete { key, .. } => {
                    let name =
                        localml_store::unescape_segment(key.strip_prefix(KEYS).unwrap_or(&key));
                    self.remove_name(&name);
                }
            },
        )
        .await
    }
}

/// The store key of a key named `name`.
pub fn store_key(name: &str) -> String {
    format!("{KEYS}{}", escape_segment(name))
}

/// Why a key could not be created or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("a key named '{0}' exists")]
    Exists(String),
    #[error("no key named '{0}'")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] localml_store::StoreError),
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("key record '{0}' is unreadable: {1}")]
    Corrupt(String, String),
}

/// Stores a new key under `record`'s name unless one exists; returns the key's text.
pub async fn create(
    store: &dyn Store,
    mut record: KeyRecord,
) -> Result<(String, KeyRecord), KeyStoreError> {
    let new = generate().map_err(|e| KeyStoreError::Random(e.to_string()))?;
    record.id = new.id;
    record.secret_sha256 = new.secret_sha256;
    let key = store_key(&record.name);
    let value = serde_json::to_vec(&record)
        .map_err(|e| KeyStoreError::Corrupt(record.name.clone(), e.to_string()))?;
    match store
        .commit(Txn::new().when(&key, 0).put(&key, value, 0))
        .await?
    {
        Some(_) => Ok((new.text, record)),
        None => Err(KeyStoreError::Exists(record.name)),
    }
}

/// Every stored key, in name order.
pub async fn list(store: &dyn Store) -> Result<Vec<KeyRecord>, KeyStoreError> {
    let (kvs, _) = store.list(KEYS).await?;
    kvs.iter()
        .map(|kv| {
            serde_json::from_slice(&kv.value)
                .map_err(|e| KeyStoreError::Corrupt(kv.key.clone(), e.to_string()))
        })
        .collect()
}

/// Marks the key named `name` revoked (kept, so a client using it is told "revoked").
pub async fn revoke(store: &dyn Store, name: &str) -> Result<KeyRecord, KeyStoreError> {
    let key = store_key(name);
    loop {
        let kv = store
            .get(&key)
            .await?
            .ok_or_else(|| KeyStoreError::NotFound(name.to_string()))?;
        let mut record: KeyRecord = serde_json::from_slice(&kv.value)
            .map_err(|e| KeyStoreError::Corrupt(name.to_string(), e.to_string()))?;
        record.revoked = true;
        let value = serde_json::to_vec(&record)
            .map_err(|e| KeyStoreError::Corrupt(name.to_string(), e.to_string()))?;
        let txn = Txn::new().when(&key, kv.mod_revision).put(&key, value, 0);
        if store.commit(txn).await?.is_some() {
            return Ok(record);
        }
    }
}

/// The file in the scheduler's data directory holding the first admin key.
pub const ADMIN_KEY_FILE: &str = "admin.key";

/// The file next to [`ADMIN_KEY_FILE`] naming the client port of the scheduler that uses
/// this data directory: the CLI sends the admin key only to that port, so a key left by
/// one local cluster is not sent to another.
pub const CLIENT_PORT_FILE: &str = "client.port";

/// Writes [`CLIENT_PORT_FILE`]; a warning only when it cannot (the data directory may be
/// read-only with an etcd store).
pub fn write_client_port(data_dir: &std::path::Path, port: u16) {
    let path = data_dir.join(CLIENT_PORT_FILE);
    let tmp = data_dir.join(format!(".{CLIENT_PORT_FILE}.tmp"));
    let written = std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&tmp, format!("{port}\n")))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot record the client port for local clients");
    }
}

/// Why the first admin key could not be written.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Key(#[from] KeyStoreError),
    #[error("cannot write or read the admin key file {0}: {1}")]
    Write(std::path::PathBuf, std::io::Error),
    /// The `--admin-key-file` does not hold a key (its content is not repeated).
    #[error("{0} does not hold an API key (expected one line: lmk_<16 hex>.<64 hex>)")]
    Malformed(std::path::PathBuf),
}

fn hostname() -> String {
    crate::config::host_name()
        .filter(|h| valid_name(&format!("admin@{h}")))
        .unwrap_or_else(|| "scheduler".into())
}

/// An admin key's record (scopes admin, jobs, infer; tenant `admin`; never expires),
/// without id and hash.
fn admin_record(name: String, description: String) -> KeyRecord {
    KeyRecord {
        name,
        id: String::new(),
        secret_sha256: String::new(),
        scopes: vec![Scope::Infer, Scope::Jobs, Scope::Admin],
        tenant: "admin".into(),
        models: Vec::new(),
        created_unix_ms: localml_proto::time::unix_ms(),
        expires_unix_ms: 0,
        revoked: false,
        description,
        anonymous: false,
    }
}

/// At first start, as k3s writes its kubeconfig: creates an admin key (scopes admin,
/// jobs, infer) and writes it to `<data_dir>/admin.key` (mode 0600), so `localml` on this
/// PC works at once. Nothing happens when the file exists. Returns the file written.
pub async fn ensure_admin_key(
    store: &dyn Store,
    data_dir: &std::path::Path,
) -> Result<Option<std::path::PathBuf>, BootstrapError> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    if path.exists() {
        return Ok(None);
    }
    let base = format!("admin@{}", hostname());
    let mut created = None;
    for n in 1..=20 {
        let name = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let record = admin_record(
            name,
            format!("written to {} at first start", path.display()),
        );
        match create(store, record).await {
            Ok(made) => {
                created = Some(made);
                break;
            }
            Err(KeyStoreError::Exists(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let Some((text, record)) = created else {
        return Err(KeyStoreError::Exists(base).into());
    };
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::create_dir_all(data_dir)?;
        let tmp = data_dir.join(format!("{ADMIN_KEY_FILE}.tmp"));
        // A new file (never one that exists, nor through a link someone planted).
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(format!("{text}\n").as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| BootstrapError::Write(path.clone(), e))?;
    tracing::info!(key = %record.name, file = %path.display(), "first admin key written (mode 0600)");
    Ok(Some(path))
}

/// Imports the admin key an operator or the Helm chart made (`--admin-key-file`): its
/// hash is stored under the name `admin@file` with scopes admin, jobs and infer, replacing
/// an older import, so the file (e.g. a Kubernetes Secret) stays the one source of truth.
pub async fn import_admin_key(
    store: &dyn Store,
    path: &std::path::Path,
) -> Result<(), BootstrapError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| BootstrapError::Write(path.to_path_buf(), e))?;
    let (id, secret) =
        parse(text.trim()).map_err(|_| BootstrapError::Malformed(path.to_path_buf()))?;
    let name = "admin@file";
    let record = KeyRecord {
        id: id.to_string(),
        secret_sha256: sha256_hex(secret),
        ..admin_record(name.into(), format!("imported from {}", path.display()))
    };
    let key = store_key(name);
    if let Some(kv) = store.get(&key).await.map_err(KeyStoreError::from)? {
        let old: Option<KeyRecord> = serde_json::from_slice(&kv.value).ok();
        if let Some(old) =
            old.filter(|o| o.id == record.id && o.secret_sha256 == record.secret_sha256)
        {
            if old.revoked {
                // A revocation outlives restarts: the file must change to bring a key back.
                tracing::warn!(key = name, file = %path.display(), "the admin key in this file was revoked; it stays revoked (put a new key in the file to rotate it)");
            }
            return Ok(());
        }
    }
    let value = serde_json::to_vec(&record)
        .map_err(|e| KeyStoreError::Corrupt(name.into(), e.to_string()))?;
    store.put(&key, value).await.map_err(KeyStoreError::from)?;
    tracing::info!(key = name, file = %path.display(), "admin key imported");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> KeyRecord {
        KeyRecord {
            name: name.into(),
            id: String::new(),
            secret_sha256: String::new(),
            scopes: vec![Scope::Infer],
            tenant: name.into(),
            models: Vec::new(),
            created_unix_ms: 1,
            expires_unix_ms: 0,
            revoked: false,
            description: String::new(),
            anonymous: false,
        }
    }

    #[test]
    fn keys_parse_and_check() {
        let new = generate().expect("random");
        assert!(new.text.starts_with("lmk_"));
        let (id, secret) = parse(&new.text).expect("well formed");
        assert_eq!(id, new.id);
        assert_eq!(sha256_hex(secret), new.secret_sha256);
        let ring = KeyRing::default();
        let mut r = record("app");
        r.id = new.id.clone();
        r.secret_sha256 = new.secret_sha256.clone();
        ring.upsert(r.clone());
        assert_eq!(ring.check(&new.text, 5).expect("valid").name, "app");

        // Same id, another secret: unknown, never "wrong secret".
        let other = generate().expect("random");
        let forged = format!("lmk_{}.{}", new.id, parse(&other.text).expect("ok").1);
        assert_eq!(ring.check(&forged, 5), Err(KeyError::Unknown));
        assert_eq!(ring.check(&other.text, 5), Err(KeyError::Unknown));
        for bad in [
            "",
            "Bearer x",
            "lmk_",
            "lmk_zz.yy",
            "lmk_0011223344556677",
            "sk-123",
        ] {
            assert_eq!(ring.check(bad, 5), Err(KeyError::Malformed), "{bad:?}");
        }
        let message = KeyError::Malformed.to_string();
        assert!(!message.contains(&new.text), "errors never echo a key");

        r.expires_unix_ms = 10;
        ring.upsert(r.clone());
        assert!(ring.check(&new.text, 9).is_ok());
        assert_eq!(
            ring.check(&new.text, 10),
            Err(KeyError::Expired("app".into()))
        );
        r.revoked = true;
        ring.upsert(r);
        assert_eq!(
            ring.check(&new.text, 5),
            Err(KeyError::Revoked("app".into()))
        );
        ring.remove_name("app");
        assert_eq!(ring.check(&new.text, 5), Err(KeyError::Unknown));
    }

    #[test]
    fn names_are_checked() {
        for good in ["app", "school-app_2", "admin@pc1", "a.b"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
