//! Command-line flags of the worker, shared by `localml-worker` and `localml worker`.

use std::path::PathBuf;

use tokio::net::TcpListener;

use crate::config::{parse_labels, WorkerConfig};
use crate::WorkerError;

/// Flags; each overrides the same key of `--config FILE`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct WorkerArgs {
    /// YAML config file (every key optional; flags win).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Scheduler cluster address(es): host:port, or several separated by commas (HA
    /// replicas; a name with several DNS records means each) [default: 127.0.0.1:8002].
    #[arg(long)]
    pub scheduler: Option<String>,
    /// Inference listen address [default: 0.0.0.0:8101]; port 0 picks a free port.
    #[arg(long)]
    pub listen: Option<String>,
    /// Address for /metrics, /healthz and /readyz (HTTP), e.g. 0.0.0.0:9091 [default: off].
    #[arg(long)]
    pub http_listen: Option<String>,
    /// Address the scheduler uses to reach this worker [default: derived from --listen].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Model repository: <dir>/<model>/<version>/model.onnx.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// Worker name [default: host name].
    #[arg(long)]
    pub name: Option<String>,
    /// Which models to load: all (the whole repository, at start) or on-demand (what
    /// the scheduler's deployments assign) [default: all].
    #[arg(long)]
    pub load: Option<crate::config::LoadMode>,
    /// The most RAM this worker offers, in bytes [default: the PC's].
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<u64>,
    /// Disk for models fetched from the catalog, in bytes [default: no limit].
    #[arg(long, value_name = "BYTES")]
    pub cache_bytes: Option<u64>,
    /// The most bytes per second to fetch catalog files at, on average (a slow link)
    /// [default: no limit].
    #[arg(long, value_name = "BYTES")]
    pub fetch_rate: Option<u64>,
    /// Labels, e.g. gpu=nvidia,site=library.
    #[arg(long)]
    pub labels: Option<String>,
    /// Root of the power_supply sysfs class [default: /sys/class/power_supply].
    #[arg(long)]
    pub power_supply_root: Option<PathBuf>,
    /// Root of the powercap sysfs class (RAPL energy counters) [default: /sys/class/powercap].
    #[arg(long)]
    pub powercap_root: Option<PathBuf>,
    /// The PC's draw in watts at rest and under full load, IDLE,BUSY (e.g. 12,45): an
    /// energy estimate where no counter is readable.
    #[arg(long, value_name = "IDLE,BUSY")]
    pub power_watts: Option<String>,
    /// A UPS to read through NUT's upsd: NAME@HOST[:PORT] (as upsc takes it).
    #[arg(long, value_name = "NAME@HOST[:PORT]")]
    pub ups: Option<String>,
    /// When the UPS reports low battery: drain (no new work) or stop (leave and exit).
    #[arg(long, value_enum)]
    pub on_low_battery: Option<crate::config::LowBatteryAction>,
    /// Threads of the ONNX Runtime pool all sessions share [default: one per core].
    #[arg(long)]
    pub intra_op_threads: Option<usize>,
    /// ONNX Runtime inter-op threads (parallel branches of a graph) [default: 1].
    #[arg(long)]
    pub inter_op_threads: Option<usize>,
    /// Let ONNX Runtime's idle threads spin (a dedicated server; off by default).
    #[arg(long)]
    pub thread_spinning: bool,
    /// Path of libonnxruntime.so, or `auto` [default: ORT_DYLIB_PATH, localml's cache, a
    /// copy fetched earlier, system paths, else fetched from the scheduler's catalog].
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
    /// Which build to fetch from the scheduler's catalog when this PC has no library
    /// [default: auto: the GPU build where NVIDIA's driver is loaded, else the CPU one].
    #[arg(long, value_enum)]
    pub runtime_flavor: Option<crate::config::RuntimeFlavor>,
    /// Testing/demo aid: behave like a PC F times slower (F >= 1).
    #[arg(long, value_name = "F")]
    pub throttle: Option<f64>,
    /// Testing aid: every run holds its session at least MS milliseconds, asleep (a
    /// steady service time for benchmarks; at most 60000).
    #[arg(long, value_name = "MS")]
    pub min_run_ms: Option<u64>,
    /// Join token from `localml token create` (K10...), needed for the first join only;
    /// afterwards the worker uses its certificate from --data-dir.
    #[arg(long, env = "LOCALML_TOKEN", hide_env_values = true)]
    pub token: Option<localml_trust::Secret>,
    /// File holding the join token (instead of --token).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Where the worker keeps its certificate and key [default: /var/lib/localml-worker].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Exit when standard input closes (used by `localml up` so no worker outlives it).
    #[arg(long, hide = true)]
    pub exit_with_stdin: bool,
}

impl WorkerArgs {
    /// The file config (if any) with the flags applied on top.
    pub fn into_config(self) -> Result<WorkerConfig, WorkerError> {
        let mut c = match &self.config {
            Some(path) => WorkerConfig::from_file(path)?,
            None => WorkerConfig::default(),
        };
        if let Some(v) = self.scheduler {
            c.scheduler = v;
        }
        if let Some(v) = self.listen {
            c.listen = v;
        }
        if let Some(v) = self.http_listen {
            c.http_listen = Some(v);
        }
        if let Some(v) = self.advertise {
            c.advertise = Some(v);
        }
        if let Some(v) = self.models {
            c.models = v;
        }
        if let Some(v) = self.load {
            c.load = v;
        }
        if let Some(v) = self.memory_limit {
            c.memory_limit = Some(v);
        }
        if let Some(v) = self.cache_bytes {
            c.cache_bytes = Some(v);
        }
        if let Some(v) = self.fetch_rate {
            c.fetch_rate = Some(v);
        }
        if let Some(v) = self.name {
            c.name = v;
        }
        if let Some(v) = self.labels {
            c.labels.extend(parse_labels(&v)?);
        }
        if let Some(v) = self.power_supply_root {
            c.power_supply_root = v;
        }
        if let Some(v) = self.powercap_root {
            c.powercap_root = v;
        }
        if let Some(v) = self.power_watts {
            c.power_watts = Some(parse_power_watts(&v)?);
        }
        if let Some(v) = self.ups {
            c.ups = Some(v);
        }
        if let Some(v) = self.on_low_battery {
            c.on_low_battery = v;
        }
        if let Some(v) = self.intra_op_threads {
            c.intra_op_threads = Some(v);
        }
        if let Some(v) = self.inter_op_threads {
            c.inter_op_threads = Some(v);
        }
        if self.thread_spinning {
            c.thread_spinning = true;
        }
        if let Some(v) = self.onnxruntime {
            c.onnxruntime = Some(v);
        }
        if let Some(v) = self.runtime_flavor {
            c.runtime_flavor = v;
        }
        if let Some(v) = self.throttle {
            c.throttle = v;
        }
        if let Some(v) = self.min_run_ms {
            c.min_run_ms = v;
        }
        if let Some(v) = self.token {
            c.token = Some(v);
        }
        if let Some(v) = self.token_file {
            c.token_file = Some(v);
        }
        if let Some(v) = self.data_dir {
            c.data_dir = v;
        }
        c.validate()?;
        Ok(c)
    }
}

/// Completes on Ctrl-C or SIGTERM (and, with `watch_stdin`, when standard input closes).
pub async fn shutdown_signal(watch_stdin: bool) {
    let stdin_closed = async move {
        if !watch_stdin {
            return std::future::pending::<()>().await;
        }
        let _ = tokio::task::spawn_blocking(|| {
            use std::io::Read;
            let mut sink = [0u8; 64];
            let mut stdin = std::io::stdin();
            while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        })
        .await;
    };
    tokio::select! {
        _ = localml_serving::process::shutdown_signal() => {}
        _ = stdin_closed => {}
    }
}

/// Binds, prints the address, and runs until a shutdown signal.
pub async fn run(args: WorkerArgs) -> Result<(), WorkerError> {
    let watch_stdin = args.exit_with_stdin;
    let config = args.into_config()?;
    let listener =
        TcpListener::bind(&config.listen)
            .await
            .map_err(|source| WorkerError::Listen {
                address: config.listen.clone(),
                source,
            })?;
    let addr = listener.local_addr()?;
    let http =
        match &config.http_listen {
            Some(address) => Some(TcpListener::bind(address).await.map_err(|source| {
                WorkerError::HttpListen {
                    address: address.clone(),
                    source,
                }
            })?),
            None => None,
        };
    let http_note = match &http {
        Some(l) => format!(" (http://{} metrics, health)", l.local_addr()?),
        None => String::new(),
    };
    println!(
        "localml-worker {} listening on {addr}{http_note}",
        config.name
    );
    crate::run(config, listener, http, shutdown_signal(watch_stdin)).await
}

/// Parses `--power-watts IDLE,BUSY`.
fn parse_power_watts(text: &str) -> Result<crate::energy::PowerWatts, WorkerError> {
    let invalid = || {
        crate::config::ConfigError::Invalid(format!(
            "--power-watts '{text}': expected IDLE,BUSY in watts, e.g. 12,45"
        ))
    };
    let (idle, busy) = text.split_once(',').ok_or_else(invalid)?;
    let watts = crate::energy::PowerWatts {
        idle: idle.trim().parse().map_err(|_| invalid())?,
        busy: busy.trim().parse().map_err(|_| invalid())?,
    };
    Ok(watts)
}
