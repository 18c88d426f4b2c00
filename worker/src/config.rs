//! Worker configuration: a YAML file (`--config FILE`) with command-line flags on top.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::power::PowerOverride;

/// Default inference listen address of a worker.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8101";
/// Default scheduler cluster address (the scheduler's `--cluster-listen`).
pub const DEFAULT_SCHEDULER: &str = "127.0.0.1:8002";

/// Default data directory (certificate and key).
pub const DEFAULT_DATA_DIR: &str = "/var/lib/localml-worker";

/// Everything a worker needs to start. Every key of the YAML file is optional.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Worker name; default: the host name.
    pub name: String,
    /// Scheduler cluster address (host:port).
    pub scheduler: String,
    /// Inference listen address.
    pub listen: String,
    /// Address for `/metrics`, `/healthz` and `/readyz`; none: not served.
    pub http_listen: Option<String>,
    /// Address the scheduler should use to reach this worker; default: the listen address,
    /// or, when that is 0.0.0.0, this PC's address on the route to the scheduler.
    pub advertise: Option<String>,
    /// Model repository (Triton layout).
    pub models: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Root of the power_supply class in sysfs (tests point it at a fake tree).
    pub power_supply_root: PathBuf,
    /// Fixed power state for a PC whose UPS or solar battery sysfs cannot see.
    pub power: Option<PowerOverride>,
    /// Root of the powercap class in sysfs, where RAPL energy counters live (tests point
    /// it at a fake tree).
    pub powercap_root: PathBuf,
    /// The PC's draw at rest and under full load (`{idle: 12, busy: 45}`), for an energy
    /// estimate where no counter is readable (docs/energy.md).
    pub power_watts: Option<crate::energy::PowerWatts>,
    /// A UPS to read through NUT's upsd, `NAME@HOST[:PORT]`; its state replaces sysfs.
    pub ups: Option<String>,
    /// What the worker does when the UPS reports low battery (LB): `drain` (no new work,
    /// finishes what it has; the default) or `stop` (also leaves the cluster and exits).
    pub on_low_battery: LowBatteryAction,
    /// Threads of the ONNX Runtime pool every session shares, splitting one operator's
    /// work; default: one per core the worker may use.
    pub intra_op_threads: Option<usize>,
    /// Threads that run a graph's independent operators side by side; default 1.
    pub inter_op_threads: Option<usize>,
    /// Let ONNX Runtime's idle threads spin waiting for work (default off): a little lower
    /// latency under constant load, for a core burnt while waiting. For a dedicated
    /// server, not a shared PC or a laptop.
    pub thread_spinning: bool,
    /// Path of the ONNX Runtime shared library (see the lookup order in the README).
    pub onnxruntime: Option<PathBuf>,
    /// Which build to fetch from the scheduler's catalog when this PC has no library:
    /// `auto` (the GPU build where NVIDIA's driver is loaded, else the CPU build), `gpu`
    /// or `cpu`.
    pub runtime_flavor: RuntimeFlavor,
    /// Testing and demo aid: behave like a PC this many times slower (>= 1).
    pub throttle: f64,
    /// Testing aid: every run holds its session at least this many milliseconds (a
    /// steady service time for benchmarks; 0: off).
    pub min_run_ms: u64,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// `all`: load every model of the repository at start; `on_demand`: load only what
    /// the scheduler's deployments assign.
    pub load: LoadMode,
    /// The most RAM this worker offers, in bytes (for a PC whose owner keeps memory for
    /// other work): reports say at most this much in total, and this less what its loaded
    /// models take as free. Default: the PC's own figures.
    pub memory_limit: Option<u64>,
    /// Disk the cache of catalog models may take, in bytes: beyond it, files no loaded
    /// model uses are deleted, least recently used first. Default: no limit.
    pub cache_bytes: Option<u64>,
    /// The most bytes per second the worker fetches catalog files (models, the ONNX
    /// Runtime build) at, on average, from the scheduler or peers: for a slow or shared
    /// link. Default: no limit.
    pub fetch_rate: Option<u64>,
    /// Where the worker keeps its certificate, key and the cluster CA (mode 0600).
    pub data_dir: PathBuf,
    /// A file holding the join token (a Kubernetes Secret, a systemd credential).
    pub token_file: Option<PathBuf>,
    /// The join token itself (`--token`, `LOCALML_TOKEN`); never read from YAML, so a
    /// config file holds no secret. Needed only until the worker has its certificate.
    #[serde(skip)]
    pub token: Option<localml_trust::Secret>,
}

/// `on_low_battery`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LowBatteryAction {
    #[default]
    Drain,
    Stop,
}

/// `runtime_flavor`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeFlavor {
    #[default]
    Auto,
    Gpu,
    Cpu,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadMode {
    #[default]
    All,
    OnDemand,
}

/// A `--load` value that is not a mode.
#[derive(Debug, thiserror::Error)]
#[error("'{0}': expected all or on-demand")]
pub struct UnknownLoadMode(String);

impl std::str::FromStr for LoadMode {
    type Err = UnknownLoadMode;
    fn from_str(s: &str) -> Result<LoadMode, UnknownLoadMode> {
        match s {
            "all" => Ok(LoadMode::All),
            "on-demand" | "on_demand" => Ok(LoadMode::OnDemand),
            other => Err(UnknownLoadMode(other.to_string())),
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: hostname(),
            scheduler: DEFAULT_SCHEDULER.into(),
            listen: DEFAULT_LISTEN.into(),
            http_listen: None,
            advertise: None,
            models: PathBuf::from("models"),
            labels: BTreeMap::new(),
            power_supply_root: PathBuf::from("/sys/class/power_supply"),
            power: None,
            powercap_root: PathBuf::from("/sys/class/powercap"),
            power_watts: None,
            ups: None,
            on_low_battery: LowBatteryAction::Drain,
            intra_op_threads: None,
            inter_op_threads: None,
            thread_spinning: false,
            onnxruntime: None,
            runtime_flavor: RuntimeFlavor::Auto,
            throttle: 1.0,
            min_run_ms: 0,
            max_message_bytes: 64 * 1024 * 1024,
            load: LoadMode::All,
            memory_limit: None,
            cache_bytes: None,
            fetch_rate: None,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            token_file: None,
            token: None,
        }
    }
}

/// Why the worker's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file cannot be read.
    #[error("cannot read config {0}: {1}")]
    Read(PathBuf, std::io::Error),
    /// The `--config` file is not valid YAML for [`WorkerConfig`] (serde's message, which
    /// names the line and an unknown key).
    #[error("invalid config {0}: {1}")]
    Parse(PathBuf, String),
    /// `--labels` is not `k=v,k2=v2`.
    #[error("invalid labels '{0}': expected key=value pairs separated by commas")]
    Labels(String),
    /// A value that parses but makes no sense (see [`WorkerConfig::validate`]).
    #[error("invalid setting: {0}")]
    Invalid(String),
}

impl WorkerConfig {
    /// What loading a model takes from the worker's settings.
    pub fn load_options(&self) -> crate::model::LoadOptions {
        crate::model::LoadOptions {
            throttle: self.throttle,
            min_run: std::time::Duration::from_millis(self.min_run_ms),
        }
    }

    /// ONNX Runtime's threads for this PC.
    pub fn threading(&self) -> crate::runtime::Threading {
        crate::runtime::Threading::for_this_pc(
            self.intra_op_threads,
            self.inter_op_threads,
            self.thread_spinning,
        )
    }

    pub fn from_file(path: &Path) -> Result<WorkerConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        serde_yaml::from_str(&text)
            .map_err(|e| ConfigError::Parse(path.to_path_buf(), e.to_string()))
    }

    /// The join token: `--token`/`LOCALML_TOKEN`, else the `token_file`'s content.
    pub fn join_token(&self) -> Result<Option<localml_trust::Secret>, ConfigError> {
        if let Some(t) = self.token.as_ref().filter(|t| !t.expose().is_empty()) {
            return Ok(Some(t.clone()));
        }
        match &self.token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                Ok(Some(localml_trust::Secret::new(text.trim())))
            }
            None => Ok(None),
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(self.throttle >= 1.0 && self.throttle.is_finite()) {
            return Err(ConfigError::Invalid(format!(
                "throttle must be a number >= 1, got {}",
                self.throttle
            )));
        }
        if self.min_run_ms > 60_000 {
            return Err(ConfigError::Invalid(format!(
                "min_run_ms must be at most 60000 (a minute), got {}",
                self.min_run_ms
            )));
        }
        if self.name.is_empty() {
            return Err(ConfigError::Invalid("name must not be empty".into()));
        }
        if let Some(ups) = &self.ups {
            ups.parse::<crate::ups::UpsTarget>()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
            if self.power.is_some() {
                return Err(ConfigError::Invalid(
                    "set either power (a fixed reading) or ups (read from upsd), not both".into(),
                ));
            }
        }
        if let Some(problem) = self.power_watts.as_ref().and_then(|p| p.problem()) {
            return Err(ConfigError::Invalid(problem));
        }
        if self.fetch_rate == Some(0) {
            return Err(ConfigError::Invalid(
                "fetch_rate must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        for (key, value) in [
            ("intra_op_threads", self.intra_op_threads),
            ("inter_op_threads", self.inter_op_threads),
        ] {
            match value {
                Some(0) => {
                    return Err(ConfigError::Invalid(format!("{key} must be at least 1")));
                }
                Some(n) if n > MAX_THREADS => {
                    return Err(ConfigError::Invalid(format!(
                        "{key} is {n}; at most {MAX_THREADS}"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The most ONNX Runtime threads a setting may ask for (a typo such as 10000000 is an
/// error here, not a worker that dies creating threads).
pub const MAX_THREADS: usize = 1024;

/// Parses `k=v,k2=v2`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::Labels(text.to_string()))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(ConfigError::Labels(text.to_string()));
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// The host name, lowercase (worker names are, as Kubernetes node names).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "worker".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse() {
        let labels = parse_labels("gpu=nvidia, site=library").expect("valid");
        assert_eq!(labels.get("gpu").map(String::as_str), Some("nvidia"));
        assert_eq!(labels.get("site").map(String::as_str), Some("library"));
        assert!(parse_labels("").expect("empty ok").is_empty());
        assert!(parse_labels("gpu").is_err());
        assert!(parse_labels("=x").is_err());
    }

    #[test]
    fn yaml_config_with_unknown_key_names_it() {
        let dir = std::env::temp_dir().join(format!("localml-wcfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let good = dir.join("good.yaml");
        std::fs::write(
            &good,
            "name: lab-pc\nlabels: {site: library}\npower: {source: ups, battery_percent: 80}\n",
        )
        .expect("write");
        let cfg = WorkerConfig::from_file(&good).expect("parses");
        assert_eq!(cfg.name, "lab-pc");
        assert_eq!(cfg.labels.get("site").map(String::as_str), Some("library"));
        assert_eq!(
            cfg.power.as_ref().map(|p| p.source),
            Some(crate::power::PowerSource::Ups)
        );
        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "nmae: x\n").expect("write");
        let err = WorkerConfig::from_file(&bad)
            .expect_err("unknown key")
            .to_string();
        assert!(err.contains("nmae"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn onnx_runtime_threads_default_and_bounds() {
        let defaults = WorkerConfig::default().threading();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(
            (defaults.intra_op, defaults.inter_op, defaults.spinning),
            (cores, 1, false),
            "one intra-op thread per core, one inter-op, no spinning"
        );
        let config: WorkerConfig = serde_yaml::from_str(
            "intra_op_threads: 3\ninter_op_threads: 2\nthread_spinning: true\n",
        )
        .expect("parse");
        let set = config.threading();
        assert_eq!((set.intra_op, set.inter_op, set.spinning), (3, 2, true));
        for (yaml, message) in [
            ("intra_op_threads: 0", "intra_op_threads must be at least 1"),
            ("inter_op_threads: 0", "inter_op_threads must be at least 1"),
            (
                "intra_op_threads: 10000000",
                "intra_op_threads is 10000000; at most 1024",
            ),
            ("min_run_ms: 60001", "min_run_ms must be at most 60000"),
        ] {
            let config: WorkerConfig = serde_yaml::from_str(yaml).expect("parse");
            let err = config.validate().expect_err(yaml).to_string();
            assert!(err.contains(message), "{yaml}: {err}");
        }
    }

    #[test]
    fn throttle_below_one_is_rejected() {
        let cfg = WorkerConfig {
            throttle: 0.5,
            ..WorkerConfig::default()
        };
        assert!(cfg.validate().is_err());
        assert!(WorkerConfig::default().validate().is_ok());
    }

    #[test]
    fn power_watts_parse_and_are_checked() {
        let cfg: WorkerConfig = serde_yaml::from_str(
            "power_watts: {idle: 12, busy: 45}
",
        )
        .expect("parses");
        assert_eq!(
            cfg.power_watts,
            Some(crate::energy::PowerWatts {
                idle: 12.0,
                busy: 45.0
            })
        );
        assert!(cfg.validate().is_ok());
        let cfg: WorkerConfig = serde_yaml::from_str(
            "power_watts: {idle: 50, busy: 45}
",
        )
        .expect("parses");
        let err = cfg.validate().expect_err("busy under idle").to_string();
        assert!(err.contains("power_watts"), "{err}");
        let err = serde_yaml::from_str::<WorkerConfig>(
            "power_watts: {idle: 5}
",
        )
        .expect_err("busy missing")
        .to_string();
        assert!(err.contains("busy"), "{err}");
    }
}
