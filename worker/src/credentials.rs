//! The worker's credentials, k3s-style: the cluster CA, the worker's certificate and its
//! key, kept in the data directory (mode 0600). The first start needs a join token: the
//! worker fetches the CA from the cluster port without trusting it, compares its sha256
//! with the token's, and only then joins over TLS verified by that CA, sending the token
//! and a certificate signing request (the key never leaves the worker). Later starts use
//! the certificate and need no token; it is renewed when a third of its validity is left.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use localml_proto::localml::v1::cluster_client::ClusterClient;
use localml_proto::localml::v1::{
    GetCaRequest, JoinRequest, RenewCertificateRequest, WorkerStatus,
};
use localml_trust::token::JoinToken;
use localml_trust::TrustError;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "worker.pem";
const KEY_FILE: &str = "worker.key";
/// A worker whose clock differs from the scheduler's by more than this is warned.
const CLOCK_SKEW_WARNING: Duration = Duration::from_secs(300);
/// Pause between attempts while the scheduler cannot be reached or the name is taken.
const RETRY: Duration = Duration::from_secs(1);
/// Pause before trying a failed renewal again.
const RENEWAL_RETRY: Duration = Duration::from_secs(60);

/// Why the worker has no credentials. Messages never contain the token or a key.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// No certificate yet and no token to get one.
    #[error("no worker certificate in {0} and no join token: pass --token (or LOCALML_TOKEN, or token_file in the config) with a token from `localml token create`")]
    NoToken(PathBuf),
    /// The token does not parse.
    #[error(transparent)]
    Token(TrustError),
    /// The scheduler serves another CA than the token pins.
    #[error("the cluster CA served by {address} has sha256 {served}, but the join token pins {pinned}: not joining (wrong scheduler address, a CA rotated after the token was made, or someone in between)")]
    CaMismatch {
        address: String,
        served: String,
        pinned: String,
    },
    /// The scheduler refused the join for good (bad token, name not allowed).
    #[error("the scheduler at {address} refused the join ({code:?}): {message}")]
    Refused {
        address: String,
        code: tonic::Code,
        message: String,
    },
    /// Reading or writing the data directory failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Building a key, a request or reading a certificate failed.
    #[error(transparent)]
    Trust(TrustError),
}

/// The cluster CA, the worker's certificate and key (PEM). `Debug` leaves the key out.
#[derive(Clone)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").finish_non_exhaustive()
    }
}

impl Credentials {
    /// Client TLS for the cluster port: the server must hold a certificate from the CA;
    /// this worker presents its own.
    pub fn cluster_tls(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
    }

    /// Server TLS for the inference port: only clients with a certificate from the CA
    /// (scheduler replicas, peer workers, operators' tools).
    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }

    fn read(dir: &Path) -> Option<Credentials> {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        Some(Credentials {
            ca_pem: read(CA_FILE)?,
            cert_pem: read(CERT_FILE)?,
            key_pem: read(KEY_FILE)?,
        })
    }

    fn write(&self, dir: &Path) -> Result<(), CredentialError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CredentialError::Io { path, source }
        };
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        for (file, text) in [
            (KEY_FILE, &self.key_pem),
            (CERT_FILE, &self.cert_pem),
            (CA_FILE, &self.ca_pem),
        ] {
            let path = dir.join(file);
            let tmp = dir.join(format!(".{file}.tmp"));
            write_private(&tmp, text).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
        }
        Ok(())
    }
}

/// Writes `text` to a new file readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

fn endpoint(address: &str) -> Result<Endpoint, CredentialError> {
    let host = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    Endpoint::from_shared(format!("https://{host}"))
        .map(|e| {
            e.connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
        })
        .map_err(|e| CredentialError::Refused {
            address: address.to_string(),
            code: tonic::Code::InvalidArgument,
            message: e.to_string(),
        })
}

/// A transient failure (retried) or a final one.
enum Attempt {
    Retry(String),
    Fail(CredentialError),
}

fn classify(address: &str, status: tonic::Status) -> Attempt {
    use tonic::Code;
    match status.code() {
        Code::Unavailable | Code::AlreadyExists | Code::DeadlineExceeded | Code::Unknown => {
            Attempt::Retry(format!("{:?}: {}", status.code(), status.message()))
        }
        code => Attempt::Fail(CredentialError::Refused {
            address: address.to_string(),
            code,
            message: status.message().to_string(),
        }),
    }
}

/// Fetches the CA's PEM from the cluster port without verifying the server (nothing
/// secret is sent; the caller compares the hash with the token's), like k3s's
/// `GET /cacerts`.
async fn fetch_ca(address: &str) -> Result<String, Attempt> {
    let endpoint = unverified_endpoint(endpoint(address).map_err(Attempt::Fail)?)
        .map_err(|e| Attempt::Retry(e.to_string()))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Attempt::Retry(format!("cannot connect: {e}")))?;
    let response = ClusterClient::new(channel)
        .get_ca(GetCaRequest {})
        .await
        .map_err(|s| classify(address, s))?;
    Ok(response.into_inner().ca_pem)
}

/// TLS to `endpoint` without verifying the server: only for fetching the cluster CA's
/// certificate (public), whose sha256 the caller compares with one it trusts (the join
/// token's, or the one `localml ca --sha256` is given).
pub fn unverified_endpoint(endpoint: Endpoint) -> Result<Endpoint, tonic::transport::Error> {
    endpoint.tls_config_with_verifier(
        ClientTlsConfig::new(),
        Arc::new(unverified::AnyServer::new()),
    )
}

fn warn_on_skew(server_time_unix_ms: i64) {
    if server_time_unix_ms <= 0 {
        return;
    }
    let ours = localml_proto::time::unix_ms() as i64;
    let skew = Duration::from_millis(ours.abs_diff(server_time_unix_ms));
    if skew > CLOCK_SKEW_WARNING {
        tracing::warn!(
            skew_s = skew.as_secs(),
            "this PC's clock differs from the scheduler's by {}s: certificates are backdated a day, but set the clock (NTP) before it drifts further",
            skew.as_secs()
        );
    }
}

/// Joins with the token: fetch and pin the CA, send a CSR, receive the certificate.
async fn join_with_token(
    address: &str,
    token: &JoinToken,
    token_text: &str,
    status: &WorkerStatus,
    request: &localml_trust::ca::Issued,
) -> Result<Credentials, Attempt> {
    let ca_pem = fetch_ca(address).await?;
    let served = localml_trust::sha256_hex(ca_pem.as_bytes());
    if served != token.ca_hash {
        return Err(Attempt::Fail(CredentialError::CaMismatch {
            address: address.to_string(),
            served,
            pinned: token.ca_hash.clone(),
        }));
    }
    let endpoint = endpoint(address)
        .map_err(Attempt::Fail)?
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem)))
        .map_err(|e| Attempt::Retry(e.to_string()))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| Attempt::Retry(format!("cannot connect over TLS: {e}")))?;
    // The agents register the worker once it serves (they join with this certificate).
    let mut join = tonic::Request::new(JoinRequest {
        status: Some(status.clone()),
        csr_pem: request.cert_pem.clone(),
        credentials_only: true,
    });
    let bearer = format!("Bearer {token_text}")
        .parse()
        .map_err(|_| Attempt::Fail(CredentialError::Token(TrustError::Token("not ASCII"))))?;
    join.metadata_mut().insert("authorization", bearer);
    let response = ClusterClient::new(channel)
        .join(join)
        .await
        .map_err(|s| classify(address, s))?
        .into_inner();
    warn_on_skew(response.server_time_unix_ms);
    Ok(Credentials {
        ca_pem,
        cert_pem: response.certificate_pem,
        key_pem: request.key_pem.clone(),
    })
}

/// Renews the certificate with the current one (mutual TLS) and a new key.
async fn renew(address: &str, current: &Credentials, name: &str) -> Result<Credentials, String> {
    let request = localml_trust::ca::certificate_request(name).map_err(|e| e.to_string())?;
    let endpoint = endpoint(address)
        .map_err(|e| e.to_string())?
        .tls_config(current.cluster_tls())
        .map_err(|e| e.to_string())?;
    let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
    let response = ClusterClient::new(channel)
        .renew_certificate(RenewCertificateRequest {
            csr_pem: request.cert_pem,
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    warn_on_skew(response.server_time_unix_ms);
    let renewed = Credentials {
        ca_pem: current.ca_pem.clone(),
        cert_pem: response.certificate_pem,
        key_pem: request.key_pem,
    };
    // What the scheduler sent must be a certificate for this worker.
    match localml_trust::ca::holder_pem(&renewed.cert_pem) {
        Ok(holder) if holder.name == name => Ok(renewed),
        Ok(holder) => Err(format!(
            "the scheduler sent a certificate for '{}'",
            holder.name
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Renews with the first of `addresses` that answers; writes the new files.
async fn renew_any(
    dir: &Path,
    addresses: &[String],
    current: &Credentials,
    name: &str,
) -> Option<Credentials> {
    for address in addresses {
        match renew(address, current, name).await {
            Ok(renewed) => match renewed.write(dir) {
                Ok(()) => {
                    tracing::info!(scheduler = %address, "worker certificate renewed");
                    return Some(renewed);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot save the renewed worker certificate");
                    return None;
                }
            },
            Err(e) => {
                tracing::warn!(scheduler = %address, error = %e, "cannot renew the worker certificate")
            }
        }
    }
    None
}

/// Longest sleep before looking at the clock again (a PC's clock may jump, e.g. when a
/// time server becomes reachable).
const RENEWAL_CHECK: Duration = Duration::from_secs(3600);

/// Renews the worker's certificate two thirds into its validity, for as long as the
/// worker runs, and publishes each new one on `updates` (the agents and the inference
/// port switch to it). A failed renewal is retried every few minutes until it works.
pub async fn keep_renewed(
    dir: PathBuf,
    addresses: Vec<String>,
    name: String,
    updates: tokio::sync::watch::Sender<Credentials>,
) {
    loop {
        let current = updates.borrow().clone();
        let due = match localml_trust::ca::holder_pem(&current.cert_pem) {
            Ok(holder) => holder.renewal_due(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the worker certificate; not renewing it");
                return;
            }
        };
        let wait = due
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .min(RENEWAL_CHECK);
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => continue,
                _ = updates.closed() => return,
            }
        }
        match renew_any(&dir, &addresses, &current, &name).await {
            Some(renewed) => {
                let due_again = localml_trust::ca::holder_pem(&renewed.cert_pem)
                    .is_ok_and(|h| h.needs_renewal(SystemTime::now()));
                if updates.send(renewed).is_err() {
                    return;
                }
                if due_again {
                    // This PC's clock runs ahead of the scheduler's by more than a third
                    // of the validity: renew once a minute, not in a loop.
                    tracing::warn!("the renewed certificate is already due for renewal: this PC's clock is ahead of the scheduler's; set the clock");
                    tokio::time::sleep(RENEWAL_RETRY).await;
                }
            }
            None => {
                // Until the old certificate expires the worker keeps working with it.
                tokio::select! {
                    _ = tokio::time::sleep(RENEWAL_RETRY) => {}
                    _ = updates.closed() => return,
                }
            }
        }
    }
}

/// The worker's credentials: from `dir` (renewed when due), else obtained with `token`
/// from the first of `addresses` that answers. Retries while schedulers are unreachable
/// or the name is held by a connected worker; fails at once on a refusal.
pub async fn obtain(
    dir: &Path,
    token: Option<&localml_trust::Secret>,
    addresses: &[String],
    status: &WorkerStatus,
) -> Result<Credentials, CredentialError> {
    // The key a token join asks a certificate for: the one already here when its
    // certificate ran out (the scheduler binds names to keys), else a new one; the same
    // for every attempt, so a join whose answer was lost can be made again.
    let mut key_pem = None;
    if let Some(current) = Credentials::read(dir) {
        match localml_trust::ca::holder_pem(&current.cert_pem) {
            Ok(holder)
                if holder.name == status.name
                    && holder.not_after <= SystemTime::now()
                    && token.is_some() =>
            {
                tracing::warn!("the worker certificate in the data directory expired (the worker was off too long to renew it); joining with the token and the same key");
                key_pem = Some(current.key_pem.clone());
            }
            Ok(holder) if holder.name == status.name => {
                if holder.needs_renewal(SystemTime::now()) {
                    if let Some(renewed) = renew_any(dir, addresses, &current, &status.name).await {
                        return Ok(renewed);
                    }
                }
                return Ok(current);
            }
            Ok(holder) => tracing::warn!(
                certificate = %holder.name,
                "the certificate in the data directory names another worker; joining with the token"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable certificate in the data directory; joining with the token")
            }
        }
    }
    let token = token.ok_or_else(|| CredentialError::NoToken(dir.to_path_buf()))?;
    let text = token.expose();
    let parsed = JoinToken::parse(text).map_err(CredentialError::Token)?;
    let request = localml_trust::ca::certificate_request_with_key(&status.name, key_pem.as_deref())
        .map_err(CredentialError::Trust)?;
    let mut attempts: u64 = 0;
    loop {
        for address in addresses {
            match join_with_token(address, &parsed, text, status, &request).await {
                Ok(credentials) => {
                    credentials.write(dir)?;
                    tracing::info!(scheduler = %address, ca_sha256 = %parsed.ca_hash, "joined with the token; certificate saved");
                    return Ok(credentials);
                }
                Err(Attempt::Fail(e)) => return Err(e),
                Err(Attempt::Retry(reason)) => {
                    if attempts.is_multiple_of(10) {
                        tracing::warn!(scheduler = %address, %reason, "cannot join yet; retrying");
                    }
                }
            }
        }
        attempts += 1;
        tokio::time::sleep(RETRY).await;
    }
}

/// The one place that trusts a server without verifying it: fetching the CA, whose hash
/// the caller then checks against the join token.
mod unverified {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, Error, SignatureScheme};

    #[derive(Debug)]
    pub struct AnyServer(CryptoProvider);

    impl AnyServer {
        pub fn new() -> AnyServer {
            AnyServer(rustls::crypto::ring::default_provider())
        }
    }

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, Error> {
            Ok(ServerCertVerified::assertion())
        }

        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_written_owner_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("localml-cred-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let c = Credentials {
            ca_pem: "ca".into(),
            cert_pem: "cert".into(),
            key_pem: "key".into(),
        };
        c.write(&dir).expect("write");
        for f in [CA_FILE, CERT_FILE, KEY_FILE] {
            let mode = std::fs::metadata(dir.join(f))
                .expect("file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let back = Credentials::read(&dir).expect("read");
        assert_eq!(back.key_pem, "key");
        assert!(!format!("{back:?}").contains("key"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
