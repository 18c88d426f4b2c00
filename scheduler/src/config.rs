//! Scheduler configuration: a YAML file (`--config FILE`) with flags on top.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// Default client address: the gRPC port Triton clients expect.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8001";
/// Default address workers join on.
pub const DEFAULT_CLUSTER_LISTEN: &str = "127.0.0.1:8002";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SchedulerConfig {
    /// Address for inference clients and operators.
    pub listen: String,
    /// Address workers join and report on.
    pub cluster_listen: String,
    /// host:port at which the other scheduler replicas reach this one's cluster port (they
    /// copy catalog files from each other); default: the cluster listener's address, or for
    /// a wildcard such as 0.0.0.0 this PC's first address.
    pub cluster_advertise: Option<String>,
    /// Address for `/metrics`, `/healthz` and `/readyz`; none: not served.
    pub http_listen: Option<String>,
    /// Address for the Open Inference Protocol over HTTP/REST (docs/rest.md); none: not
    /// served. Keys and TLS as on the client port, decided by this address.
    pub rest_listen: Option<String>,
    /// Origins of browser apps allowed to call the REST listener (CORS), e.g.
    /// `http://lab-pc:3000`; exact matches; empty: none.
    pub rest_cors_origins: Vec<String>,
    /// How often workers report, in milliseconds (told to them when they join).
    pub report_interval_ms: u64,
    /// A worker whose last report is older than this becomes NotReady (Kubernetes'
    /// node-monitor grace period), in milliseconds.
    pub worker_grace_period_ms: u64,
    /// A NotReady worker that stays silent this long is forgotten, in milliseconds.
    pub worker_forget_after_ms: u64,
    /// Largest request or response message, in bytes; larger ones get RESOURCE_EXHAUSTED.
    pub max_message_bytes: usize,
    /// Workers tried for one request before giving up (failed or unreachable workers).
    pub dispatch_attempts: u32,
    /// Requests that may wait in the scheduler's queue for a free worker; more get
    /// RESOURCE_EXHAUSTED at once.
    pub max_queued_requests: usize,
    /// Bytes of request payloads the scheduler holds at once, queued or in flight to
    /// workers (default 512 MiB; at least `max_message_bytes`); a request beyond it gets
    /// RESOURCE_EXHAUSTED at once, so memory stays bounded whatever clients send.
    pub max_queued_bytes: usize,
    /// The longest expected wait in the scheduler's queue an online request is admitted to,
    /// in milliseconds (default 30000; 0: no bound); beyond it, RESOURCE_EXHAUSTED at once
    /// with a retry hint. Whatever this says, a request whose deadline the expected wait
    /// cannot meet gets DEADLINE_EXCEEDED at once. Jobs wait their turn.
    pub max_queue_wait_ms: u64,
    /// A queued request that no event woke looks at the workers again after this many
    /// milliseconds (default 1000; 0: never): a safety net for wake-ups the queue's
    /// events miss, not how it works (docs/scheduling.md).
    pub queue_safety_net_ms: u64,
    /// Scheduling profiles; default: `default` and `energy-saver` (see docs/scheduling.md).
    pub profiles: Vec<localml_framework::profile::ProfileConfig>,
    /// Where cluster state lives: `embedded` (a file in `data_dir`), `embedded:DIR`, or
    /// `etcd://host:port[,host:port...][/prefix]`.
    pub store: String,
    /// The scheduler's data directory (the embedded store's file).
    pub data_dir: std::path::PathBuf,
    /// The leader's lease: a replica that stops renewing it loses leadership this long
    /// after its last renewal, in milliseconds (etcd rounds up to whole seconds).
    pub leader_lease_ms: u64,
    /// With a shared store and several replicas: how often each replica looks for catalog
    /// files it lacks and copies them from another, in milliseconds (default 60000), so
    /// that in time every replica holds every file.
    pub replica_sync_interval_ms: u64,
    /// Durable async jobs.
    pub jobs: JobsConfig,
    /// `auto`: API keys required on a client listener reachable from the LAN, open on
    /// loopback; `required`: keys on every listener (docs/security.md).
    pub auth: crate::auth::AuthMode,
    /// Serve a client listener reachable from the LAN without keys and without TLS (a
    /// warning at start and in /readyz).
    pub insecure: bool,
    /// `auto`: TLS on a client listener reachable from the LAN, plain on loopback;
    /// `required`: TLS on every listener; `off`: never (needs `insecure` on the LAN).
    pub client_tls: crate::auth::ClientTls,
    /// The client port's certificate and key (PEM) when the operator supplies one;
    /// otherwise the cluster CA issues it for the listen address, loopback, the host name
    /// and `tls_sans`.
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// A file holding an admin key made elsewhere (the Helm chart's Secret), imported at
    /// start as `admin@file`.
    pub admin_key_file: Option<std::path::PathBuf>,
    /// More names and addresses for the scheduler's certificate (`--tls-san`), served on
    /// the cluster port and the client port, besides their listen addresses, loopback,
    /// `localhost` and the host name.
    pub tls_sans: Vec<String>,
    /// A cluster CA made elsewhere (the Helm chart's Secret): its certificate and key,
    /// PEM; installed in the store at start.
    pub ca_cert_file: Option<std::path::PathBuf>,
    pub ca_key_file: Option<std::path::PathBuf>,
    /// A join token made elsewhere (the Helm chart's Secret), imported at start.
    pub join_token_file: Option<std::path::PathBuf>,
    /// How long workers' certificates are valid, in seconds (default a year, as k3s);
    /// workers renew theirs two thirds into it, online.
    pub worker_certificate_validity_s: u64,
    /// HTTP/2 keepalive on the scheduler's connections to workers, in milliseconds: a ping
    /// every `worker_keepalive_ms`, and a connection whose ping goes unanswered for
    /// `worker_keepalive_timeout_ms` is dropped, its calls tried on another worker. 0 turns
    /// it off.
    pub worker_keepalive_ms: u64,
    pub worker_keepalive_timeout_ms: u64,
    /// Bind each worker name to the key of the worker that first joined under it, as
    /// k3s's node password does: a token join under a bound name with another key is
    /// refused until `localml workers remove NAME`. Off for workers that lose their data
    /// directory whenever they restart (the Helm chart's pods).
    pub bind_worker_names: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// Jobs the leader runs at once.
    pub concurrency: usize,
    /// Largest stored result in bytes; a job whose result is larger FAILS and says so.
    pub max_result_bytes: usize,
    /// How long a job that could not run waits before it is tried again, in milliseconds.
    pub retry_ms: u64,
    /// Times a job is sent to workers before it fails (a job that keeps crashing workers
    /// must not take them down forever). Waiting for a worker does not count.
    pub max_attempts: u32,
    /// Ended jobs (and their results) are deleted this long after they ended, in
    /// milliseconds.
    pub retention_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            concurrency: 8,
            max_result_bytes: 16 * 1024 * 1024,
            retry_ms: 1_000,
            max_attempts: 5,
            retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

/// This PC's host name, when the kernel says one.
pub fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

/// The default data directory: `$XDG_STATE_HOME/localml` or `~/.local/state/localml`
/// (`./localml-data` when neither is set).
pub fn default_data_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return std::path::PathBuf::from(dir).join("localml");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => std::path::PathBuf::from(home).join(".local/state/localml"),
        None => "localml-data".into(),
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            listen: DEFAULT_LISTEN.into(),
            cluster_listen: DEFAULT_CLUSTER_LISTEN.into(),
            cluster_advertise: None,
            http_listen: None,
            rest_listen: None,
            rest_cors_origins: Vec::new(),
            report_interval_ms: 500,
            worker_grace_period_ms: 2_500,
            worker_forget_after_ms: 10 * 60 * 1000,
            max_message_bytes: 64 * 1024 * 1024,
            dispatch_attempts: 3,
            max_queued_requests: 1024,
            max_queued_bytes: 512 * 1024 * 1024,
            max_queue_wait_ms: 30_000,
            queue_safety_net_ms: 1000,
            profiles: localml_framework::profile::builtin(),
            store: "embedded".into(),
            data_dir: default_data_dir(),
            leader_lease_ms: 3_000,
            replica_sync_interval_ms: 60_000,
            jobs: JobsConfig::default(),
            auth: crate::auth::AuthMode::Auto,
            insecure: false,
            client_tls: crate::auth::ClientTls::Auto,
            worker_certificate_validity_s: localml_trust::ca::LEAF_VALIDITY.as_secs(),
            bind_worker_names: true,
            worker_keepalive_ms: 1000,
            worker_keepalive_timeout_ms: 2000,
            tls_cert_file: None,
            tls_key_file: None,
            admin_key_file: None,
            tls_sans: Vec::new(),
            ca_cert_file: None,
            ca_key_file: None,
            join_token_file: None,
        }
    }
}

/// An origin as browsers send it: `scheme://host[:port]`, nothing more. `*` is refused:
/// every web page could then call the cluster with a key the browser holds.
fn check_origin(origin: &str) -> Result<(), &'static str> {
    if origin == "*" {
        return Err(
            "a wildcard lets every web site call the cluster; list the origins of your apps",
        );
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err("expected scheme://host[:port], e.g. http://kiosk.lan:3000");
    };
    if !matches!(scheme, "http" | "https") {
        return Err("the scheme must be http or https");
    }
    let valid = !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
    if !valid {
        return Err("expected scheme://host[:port] with no path, e.g. http://kiosk.lan:3000");
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config {0}: {1}")]
    Read(String, std::io::Error),
    /// The config file is not valid YAML for this config (the message names the key).
    #[error("invalid config {0}: {1}")]
    Parse(String, String),
    /// A scheduling profile is wrong.
    #[error("invalid config: {0}")]
    Profiles(#[from] localml_framework::profile::ProfileError),
    /// A value out of its range (the field is named).
    #[error("invalid config: {field} {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl SchedulerConfig {
    pub fn from_file(path: &Path) -> Result<SchedulerConfig, ConfigError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read(name.clone(), e))?;
        let config: SchedulerConfig =
            serde_yaml::from_str(&text).map_err(|e| ConfigError::Parse(name, e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, problem: &str| {
            Err(ConfigError::Invalid {
                field,
                problem: problem.to_string(),
            })
        };
        if self.report_interval_ms == 0 {
            return invalid("report_interval_ms", "must be at least 1");
        }
        for origin in &self.rest_cors_origins {
            if let Err(problem) = check_origin(origin) {
                return Err(ConfigError::Invalid {
                    field: "rest_cors_origins",
                    problem: format!("has '{origin}': {problem}"),
                });
            }
        }
        if self.worker_grace_period_ms <= self.report_interval_ms {
            return invalid(
                "worker_grace_period_ms",
                "must be longer than report_interval_ms",
            );
        }
        if self.ca_cert_file.is_some() != self.ca_key_file.is_some() {
            return invalid(
                "ca_cert_file",
                "and ca_key_file go together: give both or neither",
            );
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return invalid(
                "tls_cert_file",
                "and tls_key_file go together: give both or neither",
            );
        }
        if !(10..=10 * 365 * 24 * 3600).contains(&self.worker_certificate_validity_s) {
            return invalid(
                "worker_certificate_validity_s",
                "must be from 10 s to 10 years (315360000)",
            );
        }
        if self.max_queued_bytes < self.max_message_bytes {
            return invalid(
                "max_queued_bytes",
                "must be at least max_message_bytes (one request of the largest size)",
            );
        }
        if self.dispatch_attempts == 0 {
            return invalid("dispatch_attempts", "must be at least 1");
        }
        if self.max_message_bytes < 1024 {
            return invalid("max_message_bytes", "must be at least 1024");
        }
        localml_framework::profile::Profiles::build(&self.profiles)
            .map_err(ConfigError::Profiles)?;
        if let Err(e) = localml_store::StoreAddress::parse(&self.store, &self.data_dir) {
            return invalid("store", &e.to_string());
        }
        if !(1_000..=600_000).contains(&self.leader_lease_ms) {
            return invalid("leader_lease_ms", "must be between 1000 and 600000");
        }
        if !(1_000..=86_400_000).contains(&self.replica_sync_interval_ms) {
            return invalid(
                "replica_sync_interval_ms",
                "must be between 1000 and 86400000 (a day)",
            );
        }
        if self.jobs.concurrency == 0 {
            return invalid("jobs.concurrency", "must be at least 1");
        }
        if self.jobs.max_attempts == 0 {
            return invalid("jobs.max_attempts", "must be at least 1");
        }
        if !(1..=3_600_000).contains(&self.jobs.retry_ms) {
            return invalid("jobs.retry_ms", "must be between 1 and 3600000");
        }
        if self.jobs.retention_ms > 10 * 365 * 24 * 3_600_000 {
            return invalid("jobs.retention_ms", "must be at most ten years");
        }
        Ok(())
    }

    pub fn report_interval(&self) -> Duration {
        Duration::from_millis(self.report_interval_ms)
    }

    pub fn grace_period(&self) -> Duration {
        Duration::from_millis(self.worker_grace_period_ms)
    }

    pub fn forget_after(&self) -> Duration {
        Duration::from_millis(self.worker_forget_after_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cors_origins_are_exact_origins() {
        for good in [
            "http://kiosk.lan:3000",
            "https://10.0.0.5",
            "http://[::1]:8080",
        ] {
            assert_eq!(check_origin(good), Ok(()), "{good}");
        }
        for bad in ["*", "kiosk.lan", "ftp://x", "http://x/path", "http://"] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
        let config = SchedulerConfig {
            rest_cors_origins: vec!["*".into()],
            ..Default::default()
        };
        let err = config.validate().expect_err("wildcard refused").to_string();
        assert!(
            err.contains("rest_cors_origins") && err.contains("wildcard"),
            "{err}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                SchedulerConfig {
                    report_interval_ms: 0,
                    ..Default::default()
                },
                "report_interval_ms",
            ),
            (
                SchedulerConfig {
                    worker_grace_period_ms: 100,
                    ..Default::default()
                },
                "worker_grace_period_ms",
            ),
            (
                SchedulerConfig {
                    dispatch_attempts: 0,
                    ..Default::default()
                },
                "dispatch_attempts",
            ),
            (
                SchedulerConfig {
                    store: "redis://x:1".into(),
                    ..Default::default()
                },
                "store",
            ),
            (
                SchedulerConfig {
                    jobs: JobsConfig {
                        concurrency: 0,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "jobs.concurrency",
            ),
            (
                SchedulerConfig {
                    leader_lease_ms: u64::MAX,
                    ..Default::default()
                },
                "leader_lease_ms",
            ),
            (
                SchedulerConfig {
                    replica_sync_interval_ms: 0,
                    ..Default::default()
                },
                "replica_sync_interval_ms",
            ),
            (
                SchedulerConfig {
                    jobs: JobsConfig {
                        retry_ms: u64::MAX,
                        ..Default::default()
                    },
                    ..Default::default()
                },
                "jobs.retry_ms",
            ),
        ];
        for (config, field) in cases {
            let err = config.validate().expect_err("invalid").to_string();
            assert!(err.contains(field), "{err}");
        }
        assert!(SchedulerConfig::default().validate().is_ok());
    }

    #[test]
    fn unknown_yaml_key_is_named() {
        let path = std::env::temp_dir().join(format!("localml-scfg-{}.yaml", std::process::id()));
        std::fs::write(&path, "listen: 127.0.0.1:9000\nreport_intervall_ms: 5\n").expect("write");
        let err = SchedulerConfig::from_file(&path)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("report_intervall_ms"), "{err}");
        std::fs::write(&path, "listen: 127.0.0.1:9000\n").expect("write");
        assert_eq!(
            SchedulerConfig::from_file(&path).expect("valid").listen,
            "127.0.0.1:9000"
        );
        std::fs::remove_file(&path).ok();
    }
}
