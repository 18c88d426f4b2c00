//! `localml token ...`, `localml certs issue`, `localml workers remove`: the operator's
//! side of `localml.v1.Trust`, and TLS channels to workers with an operator certificate.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use localml_proto::localml::v1::trust_client::TrustClient;
use localml_proto::localml::v1::{
    CreateTokenRequest, IssueCertificateRequest, JoinTokenInfo, ListTokensRequest,
    RemoveWorkerRequest, RevokeTokenRequest,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::client;

/// Parses a duration like `24h`, `30m`, `7d`, `90s`; `0` means never.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration like 24h, 30m, 7d or 0"))?;
    let seconds = match unit {
        "" if n == 0 => 0,
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("'{text}' is not a duration like 24h, 30m, 7d or 0")),
    };
    Ok(Duration::from_secs(seconds))
}

/// The cluster CA's certificate as `server` serves it (`localml ca`), and whether it was
/// fetched over a connection already verified (plain on loopback, or TLS with a CA the
/// CLI had). Over `https://` without a CA, the certificate is fetched unverified and
/// `expect` (a sha256) must match, else the caller is told to compare the hash.
pub async fn fetch_ca(server: &str, expect: Option<&str>) -> anyhow::Result<(String, bool)> {
    use localml_proto::localml::v1::GetCaRequest;
    let unverified = server.starts_with("https://");
    let pem = match client::connect(server, Duration::from_secs(10)).await {
        Ok(channel) => {
            let ca = TrustClient::new(channel).get_ca(GetCaRequest {}).await;
            // Verified: TLS with a CA this CLI trusts, or this PC itself.
            let verified = unverified || client::is_local(server);
            return finish(ca.map_err(status)?.into_inner().ca_pem, expect, verified);
        }
        Err(client::ConnectError::NoCa { .. }) if unverified => {
            let endpoint = Endpoint::from_shared(server.to_string())
                .with_context(|| format!("invalid server address '{server}'"))?
                .connect_timeout(Duration::from_secs(10));
            let channel = localml_worker::credentials::unverified_endpoint(endpoint)?
                .connect()
                .await
                .with_context(|| format!("cannot connect to {server}"))?;
            TrustClient::new(channel)
                .get_ca(GetCaRequest {})
                .await
                .map_err(status)?
                .into_inner()
                .ca_pem
        }
        Err(e) => return Err(e.into()),
    };
    finish(pem, expect, false)
}

fn finish(pem: String, expect: Option<&str>, verified: bool) -> anyhow::Result<(String, bool)> {
    let hash = localml_trust::sha256_hex(pem.as_bytes());
    match expect {
        Some(want) if !want.trim().eq_ignore_ascii_case(&hash) => bail!(
            "the CA served has sha256 {hash}, but --sha256 says {}: not trusting it (wrong server, or someone in between)",
            want.trim()
        ),
        Some(_) => Ok((pem, true)),
        None => Ok((pem, verified)),
    }
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

async fn trust(server: &str) -> anyhow::Result<TrustClient<client::Connection>> {
    Ok(TrustClient::new(
        client::connect(server, Duration::from_secs(10)).await?,
    ))
}

/// Creates a join token; returns its text (print it once).
pub async fn create_token(
    server: &str,
    ttl: Duration,
    description: &str,
) -> anyhow::Result<String> {
    let response = trust(server)
        .await?
        .create_token(CreateTokenRequest {
            ttl_seconds: ttl.as_secs(),
            description: description.to_string(),
        })
        .await?
        .into_inner();
    Ok(response.token)
}

fn when(ms: i64) -> String {
    if ms == 0 {
        return "never".into();
    }
    let now = localml_proto::time::unix_ms() as i64;
    let delta = (ms - now) / 1000;
    if delta >= 0 {
        format!("in {}h{:02}m", delta / 3600, (delta % 3600) / 60)
    } else {
        format!("{}h{:02}m ago", -delta / 3600, (-delta % 3600) / 60)
    }
}

/// The tokens as a table: id, expiry, description (never the secret: the scheduler has
/// only its hash).
pub fn token_table(tokens: &[JoinTokenInfo]) -> String {
    let mut out = format!("{:<8} {:<14} DESCRIPTION\n", "ID", "EXPIRES");
    for t in tokens {
        out.push_str(&format!(
            "{:<8} {:<14} {}\n",
            t.id,
            when(t.expires_unix_ms),
            t.description
        ));
    }
    out
}

pub async fn list_tokens(server: &str) -> anyhow::Result<Vec<JoinTokenInfo>> {
    Ok(trust(server)
        .await?
        .list_tokens(ListTokensRequest {})
        .await?
        .into_inner()
        .tokens)
}

pub async fn revoke_token(server: &str, id: &str) -> anyhow::Result<()> {
    trust(server)
        .await?
        .revoke_token(RevokeTokenRequest { id: id.to_string() })
        .await?;
    Ok(())
}

pub async fn remove_worker(server: &str, name: &str) -> anyhow::Result<()> {
    trust(server)
        .await?
        .remove_worker(RemoveWorkerRequest {
            name: name.to_string(),
        })
        .await?;
    Ok(())
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// Files `localml certs issue` writes into `dir`: NAME.pem, NAME.key, ca.pem.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

impl CertFiles {
    pub fn in_dir(dir: &Path, name: &str) -> CertFiles {
        CertFiles {
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            ca: dir.join("ca.pem"),
        }
    }
}

/// Gets an operator certificate for `name` and writes it, its key (0600) and the CA
/// into `dir`.
pub async fn issue_certificate(server: &str, name: &str, dir: &Path) -> anyhow::Result<CertFiles> {
    let issued = trust(server)
        .await?
        .issue_certificate(IssueCertificateRequest {
            name: name.to_string(),
        })
        .await?
        .into_inner();
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let files = CertFiles::in_dir(dir, name);
    write_private(&files.key, &issued.private_key_pem)?;
    write_private(&files.cert, &issued.certificate_pem)?;
    std::fs::write(&files.ca, &issued.ca_pem)?;
    Ok(files)
}

/// A channel to the worker `worker` at `address` (its inference port) with the operator
/// certificate in `files`.
pub async fn connect_worker(
    address: &str,
    worker: &str,
    files: &CertFiles,
) -> anyhow::Result<client::Connection> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .identity(Identity::from_pem(read(&files.cert)?, read(&files.key)?))
        .domain_name(worker);
    let host = address
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let endpoint = Endpoint::from_shared(format!("https://{host}"))?.tls_config(tls)?;
    match endpoint
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
    {
        Ok(channel) => Ok(tonic::service::interceptor::InterceptedService::new(
            channel,
            client::KeyHeader::default(),
        )),
        Err(e) => bail!("cannot connect to worker {worker} at {address}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("0"), Ok(Duration::ZERO));
        for bad in ["", "h", "5y", "-1h", "1.5h"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
