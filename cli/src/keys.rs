//! API keys on the client side: which key the CLI sends (`--key`, `LOCALML_KEY`, the
//! credentials file, or the scheduler's first admin key on this PC), and the
//! `localml keys` commands.

use std::path::PathBuf;
use std::time::Duration;

use localml_proto::localml::v1::keys_client::KeysClient;
use localml_proto::localml::v1::{ApiKey, CreateKeyRequest, ListKeysRequest, RevokeKeyRequest};

use crate::client::{self, Connection};

/// Why the key to use could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("invalid credentials file {0}: {1} (expected e.g. 'key: lmk_...')")]
    Parse(PathBuf, String),
}

/// `~/.config/localml/credentials.yaml`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    key: Option<String>,
    /// The scheduler to talk to when a command's `--server` is not given.
    server: Option<String>,
    /// The cluster CA for `https://` schedulers: a PEM file's path, or the PEM itself.
    ca: Option<String>,
}

fn read_credentials() -> Result<Option<(PathBuf, Credentials)>, CredentialsError> {
    let Some(path) = credentials_path().filter(|p| p.exists()) else {
        return Ok(None);
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| CredentialsError::Read(path.clone(), e))?;
    let credentials: Credentials = serde_yaml::from_str(&text)
        .map_err(|e| CredentialsError::Parse(path.clone(), e.to_string()))?;
    Ok(Some((path, credentials)))
}

/// The credentials file's `server`, for commands whose `--server` was not given.
pub fn credentials_server() -> Result<Option<String>, CredentialsError> {
    Ok(read_credentials()?
        .and_then(|(_, c)| c.server)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty()))
}

/// The CA (PEM) that verifies an `https://` scheduler: `flag` (`--ca FILE` or
/// `LOCALML_CA`), else the credentials file's `ca` (a path, or the PEM inline), else —
/// for a scheduler on this PC — the `ca.pem` it writes into its data directory.
pub fn discover_ca(
    flag: Option<PathBuf>,
    server: &str,
) -> Result<Option<String>, CredentialsError> {
    let read =
        |path: PathBuf| std::fs::read_to_string(&path).map_err(|e| CredentialsError::Read(path, e));
    if let Some(path) = flag.filter(|p| !p.as_os_str().is_empty()) {
        return read(path).map(Some);
    }
    if let Some((file, credentials)) = read_credentials()? {
        if let Some(ca) = credentials.ca.filter(|c| !c.trim().is_empty()) {
            if ca.trim_start().starts_with("-----BEGIN") {
                return Ok(Some(ca));
            }
            // A relative path is relative to the credentials file.
            let path = file.parent().map_or(PathBuf::from(&ca), |d| d.join(&ca));
            return read(path).map(Some);
        }
    }
    if client::is_local(server) {
        let local =
            localml_scheduler::config::default_data_dir().join(localml_scheduler::trust::CA_FILE);
        if let Ok(pem) = std::fs::read_to_string(local) {
            return Ok(Some(pem));
        }
    }
    Ok(None)
}

/// `$XDG_CONFIG_HOME/localml/credentials.yaml`, else `~/.config/localml/credentials.yaml`.
pub fn credentials_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("localml/credentials.yaml"))
}

/// The key to send to `server`: `flag` (`--key` or `LOCALML_KEY`), else the credentials
/// file's, else — only for a server on this PC — the scheduler's first admin key
/// (`<data dir>/admin.key`, readable by the scheduler's user), else none. The admin key is
/// never sent to another host.
pub fn discover(flag: Option<String>, server: &str) -> Result<Option<String>, CredentialsError> {
    if let Some(key) = flag.filter(|k| !k.trim().is_empty()) {
        return Ok(Some(key.trim().to_string()));
    }
    if let Some((_, credentials)) = read_credentials()? {
        if let Some(key) = credentials.key.filter(|k| !k.trim().is_empty()) {
            return Ok(Some(key.trim().to_string()));
        }
    }
    if client::is_local(server) {
        let dir = localml_scheduler::config::default_data_dir();
        if owns_port(&dir, server) {
            let admin = dir.join(localml_scheduler::auth::keys::ADMIN_KEY_FILE);
            if let Ok(text) = std::fs::read_to_string(admin) {
                return Ok(Some(text.trim().to_string()).filter(|k| !k.is_empty()));
            }
        }
    }
    Ok(None)
}

/// Whether the scheduler that uses `data_dir` listens on `server`'s port (the port it
/// records at every start), so its admin key is not sent to another local cluster.
fn owns_port(data_dir: &std::path::Path, server: &str) -> bool {
    let Ok(recorded) =
        std::fs::read_to_string(data_dir.join(localml_scheduler::auth::keys::CLIENT_PORT_FILE))
    else {
        return false;
    };
    let rest = server.split("://").last().unwrap_or(server);
    let port = rest.trim_end_matches('/').rsplit_once(':').map(|(_, p)| p);
    port.is_some_and(|p| p == recorded.trim())
}

async fn keys_client(server: &str) -> anyhow::Result<KeysClient<Connection>> {
    Ok(KeysClient::new(
        client::connect(server, Duration::from_secs(5)).await?,
    ))
}

fn status(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", s.code(), s.message())
}

/// What `localml keys create` asks for.
#[derive(Debug, clap::Args)]
pub struct NewKey {
    #[arg(long)]
    pub name: String,
    /// infer, jobs or admin; repeat for several.
    #[arg(long = "scope", required = true)]
    pub scopes: Vec<String>,
    /// The tenant its requests and jobs belong to [default: the key's name].
    #[arg(long)]
    pub tenant: Option<String>,
    /// Models it may use, comma-separated [default: all].
    #[arg(long, value_delimiter = ',')]
    pub models: Vec<String>,
    /// Lifetime, e.g. 30d, 24h [default: never expires].
    #[arg(long, value_parser = parse_duration)]
    pub expires: Option<Duration>,
    #[arg(long)]
    pub description: Option<String>,
    /// Serve callers that send no key as this key: inference of --models open to everyone
    /// who reaches the scheduler (a kiosk). Needs --scope infer alone and --models.
    #[arg(long)]
    pub anonymous: bool,
}

/// Creates a key and prints it once (stdout: only the key, so scripts can capture it).
pub async fn create(server: &str, new: NewKey) -> anyhow::Result<()> {
    let response = keys_client(server)
        .await?
        .create_key(CreateKeyRequest {
            name: new.name,
            scopes: new.scopes,
            tenant: new.tenant.unwrap_or_default(),
            models: new.models,
            expires_in_seconds: new.expires.map_or(0, |d| d.as_secs().max(1)),
            description: new.description.unwrap_or_default(),
            anonymous: new.anonymous,
        })
        .await
        .map_err(status)?
        .into_inner();
    if let Some(info) = &response.info {
        eprintln!(
            "key '{}' created: scopes {}, tenant {}{}; it is shown once, keep it safe",
            info.name,
            info.scopes.join(","),
            info.tenant,
            expiry(info)
        );
        if info.anonymous {
            eprintln!(
                "anyone who reaches the scheduler may now run {} without a key; revoke it with 'localml keys revoke {}'",
                info.models.join(", "),
                info.name
            );
        }
    }
    println!("{}", response.key);
    Ok(())
}

fn expiry(info: &ApiKey) -> String {
    if info.expires_unix_ms == 0 {
        String::new()
    } else {
        let left = info
            .expires_unix_ms
            .saturating_sub(localml_proto::time::unix_ms())
            / 1000;
        format!(
            ", expires in {}",
            humantime::format_duration(Duration::from_secs(left))
        )
    }
}

/// `localml keys list`.
pub async fn list(server: &str) -> anyhow::Result<()> {
    let keys = keys_client(server)
        .await?
        .list_keys(ListKeysRequest {})
        .await
        .map_err(status)?
        .into_inner()
        .keys;
    let now = localml_proto::time::unix_ms();
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|k| {
            let state = if k.revoked {
                "revoked"
            } else if k.expires_unix_ms != 0 && now >= k.expires_unix_ms {
                "expired"
            } else {
                "active"
            };
            vec![
                k.name.clone(),
                format!("{}.…", k.id),
                k.scopes.join(","),
                k.tenant.clone(),
                if k.models.is_empty() {
                    "*".into()
                } else {
                    k.models.join(",")
                },
                state.into(),
                k.description.clone(),
            ]
        })
        .collect();
    println!(
        "{}",
        crate::table::render(
            &[
                "NAME",
                "ID",
                "SCOPES",
                "TENANT",
                "MODELS",
                "STATE",
                "DESCRIPTION"
            ],
            &rows
        )
    );
    Ok(())
}

/// `localml keys revoke NAME`.
pub async fn revoke(server: &str, name: String) -> anyhow::Result<()> {
    let info = keys_client(server)
        .await?
        .revoke_key(RevokeKeyRequest { name })
        .await
        .map_err(status)?
        .into_inner();
    println!("key '{}' revoked", info.name);
    Ok(())
}

/// Parses `--expires 30d` (humantime: `90m`, `24h`, `1week`, ...).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("'{text}': {e} (e.g. 30d, 24h, 90m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_admin_key_goes_only_to_the_port_its_scheduler_recorded() {
        let dir = std::env::temp_dir().join(format!("localml-owns-port-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // No record (a data directory another cluster left, or none): not sent.
        assert!(!owns_port(&dir, "127.0.0.1:8001"));
        localml_scheduler::auth::keys::write_client_port(&dir, 8001);
        assert!(owns_port(&dir, "127.0.0.1:8001"));
        assert!(owns_port(&dir, "https://localhost:8001"));
        assert!(owns_port(&dir, "http://[::1]:8001/"));
        assert!(!owns_port(&dir, "127.0.0.1:41234"));
        assert!(!owns_port(&dir, "localhost"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_local_servers_get_the_admin_key() {
        for local in [
            "127.0.0.1:8001",
            "localhost:8001",
            "[::1]:8001",
            "http://127.0.0.1:8001",
        ] {
            assert!(client::is_local(local), "{local}");
        }
        for remote in ["10.0.0.5:8001", "pc3.lan:8001", "http://192.168.1.2:8001"] {
            assert!(!client::is_local(remote), "{remote}");
        }
    }

    #[test]
    fn a_flag_wins_and_durations_parse() {
        assert_eq!(
            discover(Some(" lmk_x.y ".into()), "10.0.0.5:8001").expect("flag"),
            Some("lmk_x.y".into())
        );
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").expect_err("bad").contains("soon"));
    }
}
