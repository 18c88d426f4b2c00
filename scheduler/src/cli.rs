//! Command-line flags of the scheduler, shared by `localml-scheduler` and `localml scheduler`.

use std::path::PathBuf;

use localml_serving::process::bind;

use crate::config::SchedulerConfig;
use crate::{Listeners, SchedulerError};

#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchedulerArgs {
    /// YAML config file (every key optional; flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address for inference clients and operators [default: 127.0.0.1:8001].
    #[arg(long)]
    pub listen: Option<String>,
    /// Address workers join on [default: 127.0.0.1:8002].
    #[arg(long)]
    pub cluster_listen: Option<String>,
    /// host:port at which other scheduler replicas reach this one's cluster port
    /// [default: the cluster listener's address, or this PC's first address for 0.0.0.0].
    #[arg(long)]
    pub cluster_advertise: Option<String>,
    /// Address for /metrics, /healthz and /readyz (HTTP), e.g. 0.0.0.0:9090 [default: off].
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Address for the Open Inference Protocol over HTTP/REST, e.g. 127.0.0.1:8000
    /// (Triton's HTTP port) [default: off].
    #[arg(long)]
    pub rest_listen: Option<String>,
    /// Cluster state: `embedded` (a file in --data-dir), or
    /// `etcd://host:port[,host:port...][/prefix]` [default: embedded].
    #[arg(long)]
    pub store: Option<String>,
    /// Data directory for the embedded store and the first admin key
    /// [default: ~/.local/state/localml].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// API keys: auto (required on a listener reachable from the LAN, open on loopback)
    /// or required (on every listener) [default: auto].
    #[arg(long, value_enum)]
    pub auth: Option<crate::auth::AuthMode>,
    /// Serve a client listener reachable from the LAN without API keys and without TLS.
    #[arg(long)]
    pub insecure: bool,
    /// TLS on the client port: auto (on a listener reachable from the LAN, unless
    /// --insecure), required (on every listener) or off [default: auto].
    #[arg(long, value_enum)]
    pub client_tls: Option<crate::auth::ClientTls>,
    /// The client port's certificate, PEM, if not one from the cluster CA.
    #[arg(long, value_name = "FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// The key of --tls-cert-file, PEM.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// Import the admin key in FILE (e.g. a Kubernetes Secret) as `admin@file`.
    #[arg(long, value_name = "FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Another name or address clients and workers reach the scheduler by (repeatable);
    /// its certificate already covers the listen addresses, loopback, localhost and the
    /// host name.
    #[arg(long = "tls-san")]
    pub tls_san: Vec<String>,
    /// A cluster CA made elsewhere (e.g. the Helm chart's Secret): certificate, PEM.
    #[arg(long, value_name = "FILE", requires = "ca_key_file")]
    pub ca_cert_file: Option<PathBuf>,
    /// The CA's private key, PEM (PKCS#8).
    #[arg(long, value_name = "FILE", requires = "ca_cert_file")]
    pub ca_key_file: Option<PathBuf>,
    /// Import the join token in FILE (it must pin the cluster CA).
    #[arg(long, value_name = "FILE")]
    pub join_token_file: Option<PathBuf>,
}

impl SchedulerArgs {
    pub fn into_config(self) -> Result<SchedulerConfig, SchedulerError> {
        let mut c = match &self.config {
            Some(path) => SchedulerConfig::from_file(path)?,
            None => SchedulerConfig::default(),
        };
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.cluster_listen {
            c.cluster_listen = v;
        }
        if let Some(v) = self.cluster_advertise {
            c.cluster_advertise = Some(v);
        }
        if let Some(v) = self.http_listen {
            c.http_listen = Some(v);
        }
        if let Some(v) = self.rest_listen {
            c.rest_listen = Some(v);
        }
        if let Some(v) = self.store {
            c.store = v;
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        if let Some(v) = self.auth {
            c.auth = v;
        }
        if self.insecure {
            c.insecure = true;
        }
        if let Some(v) = self.client_tls {
            c.client_tls = v;
        }
        if let Some(v) = self.tls_cert_file {
            c.tls_cert_file = Some(v);
        }
        if let Some(v) = self.tls_key_file {
            c.tls_key_file = Some(v);
        }
        if let Some(v) = self.admin_key_file {
            c.admin_key_file = Some(v);
        }
        c.tls_sans.extend(self.tls_san);
        if let Some(v) = self.ca_cert_file {
            c.ca_cert_file = Some(v);
        }
        if let Some(v) = self.ca_key_file {
            c.ca_key_file = Some(v);
        }
        if let Some(v) = self.join_token_file {
            c.join_token_file = Some(v);
        }
        c.validate()?;
        Ok(c)
    }
}

/// Binds both listeners for `config`, returning them with their actual addresses.
pub async fn bind_listeners(config: &SchedulerConfig) -> Result<Listeners, SchedulerError> {
    let http = match &config.http_listen {
        Some(address) => Some(bind(address, "metrics and health checks").await?),
        None => None,
    };
    let rest = match &config.rest_listen {
        Some(address) => Some(bind(address, "REST clients").await?),
        None => None,
    };
    Ok(Listeners {
        clients: bind(&config.listen, "clients").await?,
        cluster: bind(&config.cluster_listen, "workers").await?,
        http,
        rest,
    })
}

pub use localml_serving::process::shutdown_signal;

/// Binds, prints the addresses, and runs until a shutdown signal.
pub async fn run(args: SchedulerArgs) -> Result<(), SchedulerError> {
    let config = args.into_config()?;
    let listeners = bind_listeners(&config).await?;
    let http = match &listeners.http {
        Some(l) => format!(", http://{} (metrics, health)", l.local_addr()?),
        None => String::new(),
    };
    let rest = match &listeners.rest {
        Some(l) => format!(", REST {} (inference over HTTP)", rest_url(&config, l)?),
        None => String::new(),
    };
    println!(
        "localml-scheduler listening on {} (clients) and {} (workers){http}{rest}",
        listeners.clients.local_addr()?,
        listeners.cluster.local_addr()?
    );
    crate::run(config, listeners, shutdown_signal()).await
}

/// The REST listener's URL: `https://` when it serves TLS ([`crate::server::serves_tls`]).
pub fn rest_url(
    config: &SchedulerConfig,
    listener: &tokio::net::TcpListener,
) -> std::io::Result<String> {
    let addr = listener.local_addr()?;
    let scheme = if crate::server::serves_tls(config, addr) {
        "https"
    } else {
        "http"
    };
    Ok(format!("{scheme}://{addr}"))
}
