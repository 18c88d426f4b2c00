//! The cluster's trust state in the store: the CA (created once, by the first replica),
//! join tokens (hashes only) and revoked workers; and the TLS settings derived from them
//! (the cluster listener's, and the channels that dial workers). The certificate and
//! token logic itself is `localml-trust`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use localml_proto::localml::v1::{JoinTokenInfo, RevokedWorker, StoredCa, StoredToken};
use localml_store::{Event, Store, StoreError, Txn};
use localml_trust::ca::{ClusterCa, Holder, Issued};
use localml_trust::token::JoinToken;
use localml_trust::TrustError;
use prost::Message;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

pub const CA_KEY: &str = "trust/ca";
pub const TOKENS: &str = "trust/tokens/";
pub const REVOKED: &str = "trust/revoked/";
/// Worker names a certificate was issued for with a join token (first use binds the
/// name, as k3s's node password does), until `localml workers remove`.
pub const NAMES: &str = "trust/names/";

/// Why the trust state cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum TrustStateError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Creating or reading certificates failed.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A record in the store does not decode (the key is named).
    #[error("corrupt record {0} in the store")]
    Corrupt(String),
    /// A CA or token file (`--ca-cert-file`, `--join-token-file`) cannot be used; the
    /// message names the file, never its secret content.
    #[error("{0}")]
    File(String),
}

/// Why a join token is refused. The reasons never say which part of a secret was wrong.
#[derive(Debug, thiserror::Error)]
pub enum TokenRejected {
    #[error(transparent)]
    Malformed(TrustError),
    /// The token pins another CA (it was created for another cluster, or before the CA
    /// was rotated).
    #[error("the join token is for another cluster CA")]
    OtherCa,
    #[error("unknown join token")]
    Unknown,
    #[error("the join token expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] TrustStateError),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The CA, this replica's certificate, and the revoked workers (followed from the store).
pub struct ClusterTrust {
    pub ca: ClusterCa,
    /// This replica's certificate: served on the cluster port, presented to workers.
    pub identity: Issued,
    store: Arc<dyn Store>,
    revoked: Mutex<HashMap<String, i64>>,
    /// Names and addresses the cluster certificate is valid for (lowercase): no worker
    /// may take one, or its certificate could pass for the scheduler's.
    reserved: Vec<String>,
}

impl ClusterTrust {
    /// Reads the CA from the store, creating it when there is none (a transaction that
    /// writes only if the key is absent, so concurrent replicas agree on the first), and
    /// issues this replica's certificate for `hosts`.
    pub async fn load_or_create(
        store: Arc<dyn Store>,
        hosts: &[String],
    ) -> Result<ClusterTrust, TrustStateError> {
        ClusterTrust::load(store, hosts, None).await
    }

    /// As [`ClusterTrust::load_or_create`], with a CA made elsewhere (the Helm chart's
    /// Secret: `--ca-cert-file`, `--ca-key-file`), which replaces the stored one when it
    /// differs: the files are the source of truth.
    pub async fn load(
        store: Arc<dyn Store>,
        hosts: &[String],
        files: Option<(&std::path::Path, &std::path::Path)>,
    ) -> Result<ClusterTrust, TrustStateError> {
        if let Some((cert, key)) = files {
            let (cert_pem, key_pem) = (read_file(cert)?, read_file(key)?);
            let ca = ClusterCa::from_pem(&cert_pem, &key_pem).map_err(|e| {
                TrustStateError::File(format!(
                    "the CA in {} and {} cannot be used: {e}",
                    cert.display(),
                    key.display()
                ))
            })?;
            let stored = read_ca(store.as_ref()).await?;
            if stored.as_ref().map(|s| s.hash()) != Some(ca.hash()) {
                let record = StoredCa {
                    cert_pem: cert_pem.clone(),
                    key_pem: key_pem.clone(),
                };
                store.put(CA_KEY, record.encode_to_vec()).await?;
                tracing::info!(ca_sha256 = %ca.hash(), file = %cert.display(), "cluster CA installed from files");
            }
        }
        let ca = match read_ca(store.as_ref()).await? {
            Some(ca) => ca,
            None => {
                let ca = ClusterCa::generate(SystemTime::now())?;
                let record = StoredCa {
                    cert_pem: ca.cert_pem().to_string(),
                    key_pem: ca.key_pem().to_string(),
                };
                let txn = Txn::new()
                    .when(CA_KEY, 0)
                    .put(CA_KEY, record.encode_to_vec(), 0);
                match store.commit(txn).await? {
                    Some(_) => {
                        tracing::info!(ca_sha256 = %ca.hash(), "created the cluster CA");
                        ca
                    }
                    // Another replica wrote one first: use it.
                    None => read_ca(store.as_ref())
                        .await?
                        .ok_or_else(|| TrustStateError::Corrupt(CA_KEY.into()))?,
                }
            }
        };
        let identity = ca.issue_scheduler(&crate::leader::identity(), hosts, SystemTime::now())?;
        Ok(ClusterTrust {
            ca,
            identity,
            store,
            revoked: Mutex::new(HashMap::new()),
            reserved: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
        })
    }

    /// TLS for the cluster listener: the replica's certificate; client certificates from
    /// the CA are asked for but optional at the TLS level (a first join has none), and
    /// the services decide what needs one.
    pub fn cluster_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(
                &self.identity.cert_pem,
                &self.identity.key_pem,
            ))
            .client_ca_root(Certificate::from_pem(self.ca.cert_pem()))
            .client_auth_optional(true)
    }

    /// The client port's (and the REST listener's) certificate and key, PEM: this
    /// replica's from the cluster CA; clients present keys, not certificates.
    pub fn client_identity(&self) -> ClientIdentity {
        ClientIdentity {
            cert_pem: self.identity.cert_pem.clone(),
            key_pem: self.identity.key_pem.clone(),
        }
    }

    /// What dialing workers needs: the CA, this replica's client certificate.
    pub fn dial(&self) -> WorkerDial {
        WorkerDial {
            ca: Certificate::from_pem(self.ca.cert_pem()),
            identity: Identity::from_pem(&self.identity.cert_pem, &self.identity.key_pem),
        }
    }

    /// Creates a join token valid for `ttl` (none: forever); returns its text once.
    pub async fn create_token(
        &self,
        ttl: Option<Duration>,
        description: &str,
    ) -> Result<(String, JoinTokenInfo), TrustStateError> {
        let token = JoinToken::generate(&self.ca.hash())?;
        let created = now_ms();
        let info = JoinTokenInfo {
            id: token.id.clone(),
            description: description.to_string(),
            created_unix_ms: created,
            expires_unix_ms: ttl.map_or(0, |t| created.saturating_add(t.as_millis() as i64)),
        };
        let record = StoredToken {
            info: Some(info.clone()),
            secret_sha256: token.secret_hash(),
        };
        self.store
            .put(&format!("{TOKENS}{}", token.id), record.encode_to_vec())
            .await?;
        tracing::info!(token_id = %token.id, "join token created");
        Ok((token.reveal(), info))
    }

    pub async fn list_tokens(&self) -> Result<Vec<JoinTokenInfo>, TrustStateError> {
        let (kvs, _) = self.store.list(TOKENS).await?;
        Ok(kvs
            .iter()
            .filter_map(|kv| StoredToken::decode(kv.value.as_slice()).ok())
            .filter_map(|t| t.info)
            .collect())
    }

    /// False when there is no such token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, TrustStateError> {
        let key = format!("{TOKENS}{}", localml_store::escape_segment(id));
        if self.store.get(&key).await?.is_none() {
            return Ok(false);
        }
        self.store.delete(&key).await?;
        tracing::info!(token_id = id, "join token revoked");
        Ok(true)
    }

    /// Checks a join token from a worker's metadata.
    pub async fn check_token(&self, text: &str) -> Result<(), TokenRejected> {
        let token = JoinToken::parse(text).map_err(TokenRejected::Malformed)?;
        if token.ca_hash != self.ca.hash() {
            return Err(TokenRejected::OtherCa);
        }
        let key = format!("{TOKENS}{}", token.id);
        let record = self
            .store
            .get(&key)
            .await
            .map_err(TrustStateError::from)?
            .ok_or(TokenRejected::Unknown)?;
        let stored = StoredToken::decode(record.value.as_slice())
            .map_err(|_| TrustStateError::Corrupt(key))?;
        if !localml_trust::constant_time_eq(
            stored.secret_sha256.as_bytes(),
            token.secret_hash().as_bytes(),
        ) {
            return Err(TokenRejected::Unknown);
        }
        let expires = stored.info.map_or(0, |i| i.expires_unix_ms);
        if expires != 0 && expires < now_ms() {
            return Err(TokenRejected::Expired);
        }
        Ok(())
    }

    /// Imports a join token made elsewhere (the Helm chart's Secret, `--join-token-file`):
    /// it must pin this cluster's CA; its secret's hash is stored (never expiring) unless
    /// the token is already known.
    pub async fn import_token(&self, path: &std::path::Path) -> Result<(), TrustStateError> {
        let text = read_file(path)?;
        let token = JoinToken::parse(&text).map_err(|e| {
            TrustStateError::File(format!(
                "{} does not hold a join token: {e}",
                path.display()
            ))
        })?;
        if token.ca_hash != self.ca.hash() {
            return Err(TrustStateError::File(format!(
                "the join token in {} pins CA {} but the cluster CA is {}",
                path.display(),
                token.ca_hash,
                self.ca.hash()
            )));
        }
        let key = format!("{TOKENS}{}", token.id);
        let record = StoredToken {
            info: Some(JoinTokenInfo {
                id: token.id.clone(),
                description: format!("imported from {}", path.display()),
                created_unix_ms: now_ms(),
                expires_unix_ms: 0,
            }),
            secret_sha256: token.secret_hash(),
        };
        let txn = Txn::new()
            .when(&key, 0)
            .put(&key, record.encode_to_vec(), 0);
        if self.store.commit(txn).await?.is_some() {
            tracing::info!(token_id = %token.id, file = %path.display(), "join token imported");
        }
        Ok(())
    }

    /// Why `name` may not be a worker's name, if it may not: a name or address the
    /// scheduler's certificate is valid for (a worker certificate with it could pose as
    /// the scheduler to other workers), or anything that reads as an IP address.
    pub fn reserved_name(&self, name: &str) -> Option<String> {
        let lower = name.to_ascii_lowercase();
        let ip_like = lower.parse::<std::net::IpAddr>().is_ok()
            || lower
                .split('.')
                .all(|l| l.bytes().all(|b| b.is_ascii_digit()));
        if ip_like || lower == "localhost" || self.reserved.contains(&lower) {
            return Some(format!(
                "worker name '{name}' is reserved: it is an address or a name of the scheduler"
            ));
        }
        None
    }

    /// Binds `name` to the key (`key_sha256`, of the CSR's public key) of the worker
    /// joining with a token now. False when a worker with another key joined under the
    /// name before and was not removed: a token lets a new PC join, not take the name, and
    /// so the work, of one that is off. The same key may claim again (a join whose answer
    /// was lost, a worker whose certificate ran out while it was off).
    pub async fn claim_name(&self, name: &str, key_sha256: &str) -> Result<bool, TrustStateError> {
        let key = format!("{NAMES}{}", localml_store::escape_segment(name));
        let txn = Txn::new()
            .when(&key, 0)
            .put(&key, key_sha256.as_bytes().to_vec(), 0);
        if self.store.commit(txn).await?.is_some() {
            return Ok(true);
        }
        let bound = self.store.get(&key).await?;
        Ok(bound.is_some_and(|kv| kv.value == key_sha256.as_bytes()))
    }

    /// Moves `name`'s binding to a renewed certificate's key (the caller proved it holds
    /// the name with its current certificate).
    pub async fn rebind_name(&self, name: &str, key_sha256: &str) -> Result<(), TrustStateError> {
        let key = format!("{NAMES}{}", localml_store::escape_segment(name));
        self.store.put(&key, key_sha256.as_bytes().to_vec()).await?;
        Ok(())
    }

    /// Refuses the worker `name`'s certificates issued until now, on every replica, and
    /// frees the name for a new worker.
    pub async fn revoke_worker(&self, name: &str) -> Result<(), TrustStateError> {
        let record = RevokedWorker {
            name: name.to_string(),
            revoked_unix_ms: now_ms(),
        };
        let key = format!("{REVOKED}{}", localml_store::escape_segment(name));
        self.store.put(&key, record.encode_to_vec()).await?;
        self.store
            .delete(&format!("{NAMES}{}", localml_store::escape_segment(name)))
            .await?;
        self.apply_revoked(&record);
        tracing::info!(worker = name, "worker certificates revoked");
        Ok(())
    }

    fn apply_revoked(&self, record: &RevokedWorker) {
        let mut revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        revoked.insert(record.name.clone(), record.revoked_unix_ms);
    }

    /// When to date a new certificate for `name` issued now: now, or just after the
    /// name's last revocation when that was under a second ago. Certificates carry whole
    /// seconds, so one issued in the same second as `localml workers remove` would read
    /// as issued before it, and be refused. The revocation is read from the store, not
    /// this replica's copy, which may not have it yet.
    pub async fn issue_time(&self, name: &str) -> Result<SystemTime, TrustStateError> {
        let now = SystemTime::now();
        let key = format!("{REVOKED}{}", localml_store::escape_segment(name));
        let Some(kv) = self.store.get(&key).await? else {
            return Ok(now);
        };
        let record = RevokedWorker::decode(kv.value.as_slice())
            .map_err(|_| TrustStateError::Corrupt(key))?;
        let after = u64::try_from(record.revoked_unix_ms)
            .ok()
            .and_then(|ms| {
                SystemTime::UNIX_EPOCH.checked_add(Duration::from_millis(ms.saturating_add(1000)))
            })
            .unwrap_or(now);
        Ok(now.max(after))
    }

    /// Whether `holder`'s certificate was issued before its name was revoked.
    pub fn is_revoked(&self, holder: &Holder) -> bool {
        let revoked = self.revoked.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = revoked.get(&holder.name) else {
            return false;
        };
        let issued = holder
            .issued_at()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        issued <= *at
    }

    /// Follows `trust/revoked/` until `stop`, so a removal on one replica holds on all.
    pub async fn follow_revocations(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        let store = Arc::clone(&self.store);
        let apply = |kv: &localml_store::KeyValue| {
            if let Ok(record) = RevokedWorker::decode(kv.value.as_slice()) {
                self.apply_revoked(&record);
            }
        };
        localml_store::follow(
            store,
            REVOKED,
            stop,
            |kvs| kvs.iter().for_each(apply),
            |event| {
                if let Event::Put(kv) = event {
                    apply(&kv)
                }
            },
        )
        .await
    }
}

/// TLS for channels to workers: the CA that signed them, and this replica's identity.
#[derive(Clone)]
pub struct WorkerDial {
    ca: Certificate,
    identity: Identity,
}

impl WorkerDial {
    /// Client TLS for another scheduler replica (its certificate names its addresses).
    pub fn for_replica(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
    }

    /// Client TLS for the worker `name`: its certificate must name it.
    pub fn for_worker(&self, name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(name)
    }
}

/// A file the operator named (a CA, a token, a certificate); the error names the file.
fn read_file(path: &std::path::Path) -> Result<String, TrustStateError> {
    std::fs::read_to_string(path)
        .map_err(|e| TrustStateError::File(format!("cannot read {}: {e}", path.display())))
}

/// A certificate and key, PEM, that clients see on the client port and the REST listener.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

impl ClientIdentity {
    /// TLS for the gRPC client port.
    pub fn grpc(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

/// The client port's certificate when the operator supplies one (`--tls-cert-file`,
/// `--tls-key-file`), checked at start so a wrong file fails there.
pub fn operator_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<ClientIdentity, TrustStateError> {
    let (cert_pem, key_pem) = (read_file(cert)?, read_file(key)?);
    if !cert_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err(TrustStateError::File(format!(
            "{} holds no PEM certificate",
            cert.display()
        )));
    }
    if !key_pem.contains("PRIVATE KEY-----") {
        return Err(TrustStateError::File(format!(
            "{} holds no PEM private key",
            key.display()
        )));
    }
    Ok(ClientIdentity { cert_pem, key_pem })
}

/// The file in the data directory with the cluster CA's certificate (public), so the
/// `localml` CLI on this PC verifies the client port's TLS without `--ca`.
pub const CA_FILE: &str = "ca.pem";

/// Writes [`CA_FILE`] (mode 0644) when it differs; a warning only when it cannot (the
/// data directory may be read-only with an etcd store).
pub fn write_ca_file(data_dir: &std::path::Path, pem: &str) {
    let path = data_dir.join(CA_FILE);
    if std::fs::read_to_string(&path).is_ok_and(|old| old == pem) {
        return;
    }
    let tmp = data_dir.join(format!(".{CA_FILE}.tmp"));
    let written = std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&tmp, pem))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "cannot write the cluster CA's certificate for local clients");
    }
}

async fn read_ca(store: &dyn Store) -> Result<Option<ClusterCa>, TrustStateError> {
    let Some(kv) = store.get(CA_KEY).await? else {
        return Ok(None);
    };
    let record = StoredCa::decode(kv.value.as_slice())
        .map_err(|_| TrustStateError::Corrupt(CA_KEY.into()))?;
    Ok(Some(ClusterCa::from_pem(
        &record.cert_pem,
        &record.key_pem,
    )?))
}

/// The names and addresses the scheduler's certificate is valid for: the listen
/// addresses (for a wildcard such as `0.0.0.0`, the addresses of this PC's interfaces
/// of that family, link-local ones aside), loopback, `localhost`, this PC's host name,
/// and `--tls-san` entries.
pub fn listener_hosts(bound: &[std::net::SocketAddr], extra: &[String]) -> Vec<String> {
    let mut ips = Vec::new();
    for address in bound {
        if address.ip().is_unspecified() {
            let interfaces = if_addrs::get_if_addrs().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list this PC's addresses for the scheduler's certificate; add them with --tls-san");
                Vec::new()
            });
            ips.extend(
                interfaces
                    .iter()
                    .filter(|i| !i.is_loopback() && !i.is_link_local())
                    .map(|i| i.ip())
                    .filter(|ip| ip.is_ipv4() == address.is_ipv4() || address.is_ipv6()),
            );
        } else {
            ips.push(address.ip());
        }
    }
    let mut hosts: Vec<String> = ips.iter().map(|ip| ip.to_string()).collect();
    hosts.extend(["127.0.0.1", "::1", "localhost"].map(String::from));
    if let Some(name) = crate::config::host_name() {
        if localml_trust::ca::validate_name(&name).is_ok() {
            hosts.push(name);
        }
    }
    hosts.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    hosts.retain(|h| seen.insert(h.to_ascii_lowercase()));
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Arc<dyn Store> {
        let dir = std::env::temp_dir().join(format!(
            "localml-trust-test-{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        Arc::new(localml_store::embedded::EmbeddedStore::open(&dir).expect("store"))
    }

    #[tokio::test]
    async fn replicas_share_the_first_ca_and_tokens_check_out() {
        let store = store();
        let hosts = ["127.0.0.1".to_string()];
        let a = ClusterTrust::load_or_create(Arc::clone(&store), &hosts)
            .await
            .expect("a");
        let b = ClusterTrust::load_or_create(Arc::clone(&store), &hosts)
            .await
            .expect("b");
        assert_eq!(a.ca.hash(), b.ca.hash());
        // Names a worker certificate could pose as the scheduler with.
        for reserved in ["127.0.0.1", "LOCALHOST", "10.0.0.5", "192.168.1"] {
            assert!(a.reserved_name(reserved).is_some(), "{reserved}");
        }
        for free in ["pc-3", "lab-pc.local", "node1-cpu"] {
            assert_eq!(a.reserved_name(free), None, "{free}");
        }
        let (text, info) = a.create_token(None, "test").await.expect("token");
        b.check_token(&text)
            .await
            .expect("valid on the other replica");
        assert!(!store
            .get(&format!("{TOKENS}{}", info.id))
            .await
            .expect("get")
            .expect("stored")
            .value
            .windows(8)
            .any(|w| text.contains(std::str::from_utf8(w).unwrap_or("\0"))));
        let wrong_secret = format!("{}0", &text[..text.len() - 1]);
        let wrong_secret = if wrong_secret == text {
            format!("{}1", &text[..text.len() - 1])
        } else {
            wrong_secret
        };
        assert!(matches!(
            b.check_token(&wrong_secret).await,
            Err(TokenRejected::Unknown)
        ));
        let other_ca = text.replacen(&a.ca.hash()[..4], "ffff", 1);
        if other_ca != text {
            assert!(matches!(
                b.check_token(&other_ca).await,
                Err(TokenRejected::OtherCa)
            ));
        }
        assert!(b.revoke_token(&info.id).await.expect("revoke"));
        assert!(matches!(
            a.check_token(&text).await,
            Err(TokenRejected::Unknown)
        ));
        let (expired, _) = a
            .create_token(Some(Duration::ZERO), "")
            .await
            .expect("token");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(matches!(
            a.check_token(&expired).await,
            Err(TokenRejected::Expired)
        ));
    }
}
