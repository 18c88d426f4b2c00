//! The worker's `/metrics`, `/healthz` and `/readyz` (`--http-listen`), and energy
//! counters where the hardware has them: RAPL (`/sys/class/powercap`) for the CPU package
//! and NVML's total energy for NVIDIA GPUs.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use localml_serving::metrics::{code_label, Exposition, Histogram, Kind};

use crate::state::Worker;

/// Requests by model, version and code, and the latency of successful ones.
#[derive(Default)]
pub struct RequestMetrics {
    codes: Mutex<HashMap<(String, String, &'static str), u64>>,
    latency: Mutex<HashMap<(String, String), Arc<Histogram>>>,
}

impl RequestMetrics {
    pub fn record(&self, model: &str, version: &str, code: tonic::Code, seconds: f64) {
        let key = (model.to_string(), version.to_string());
        *self
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((key.0.clone(), key.1.clone(), code_label(code)))
            .or_default() += 1;
        if code == tonic::Code::Ok {
            let h = Arc::clone(
                self.latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(key)
                    .or_default(),
            );
            h.observe(seconds);
        }
    }
}

/// RAPL energy counters: (domain name, joules). Unreadable ones (RAPL needs root on
/// recent kernels) are skipped.
pub fn rapl_joules(root: &Path) -> Vec<(String, f64)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !name.starts_with("intel-rapl:") {
            continue;
        }
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
        let (Some(domain), Some(uj)) = (read("name"), read("energy_uj")) else {
            continue;
        };
        if let Ok(uj) = uj.trim().parse::<u64>() {
            out.push((format!("{}:{}", domain.trim(), name), uj as f64 / 1e6));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Serves from the start, before models are loaded: not ready until the worker exists.
pub struct WorkerProbe {
    pub worker: Arc<std::sync::OnceLock<Arc<Worker>>>,
    pub powercap_root: std::path::PathBuf,
}

impl localml_serving::http::Probe for WorkerProbe {
    fn not_ready(&self) -> Option<String> {
        match self.worker.get() {
            None => Some("loading models".into()),
            Some(w) if w.draining.load(Ordering::SeqCst) => Some("draining".into()),
            Some(_) => None,
        }
    }

    fn metrics(&self) -> String {
        let Some(w) = self.worker.get() else {
            return String::new();
        };
        let status = w.status();
        let mut e = Exposition::default();
        e.family(
            "localml_worker_requests_total",
            Kind::Counter,
            "Inference requests answered, by model, version and gRPC status code.",
        );
        let mut codes: Vec<_> = w
            .requests
            .codes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        codes.sort();
        for ((model, version, code), n) in codes {
            e.sample(
                &[("model", &model), ("version", &version), ("code", code)],
                n as f64,
            );
        }
        e.family(
            "localml_worker_request_duration_seconds",
            Kind::Histogram,
            "Latency of successful inference requests on this worker.",
        );
        let mut latency: Vec<_> = w
            .requests
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        latency.sort_by(|a, b| a.0.cmp(&b.0));
        for ((model, version), h) in latency {
            e.histogram(&[("model", &model), ("version", &version)], &h);
        }
        let per_model =
            |e: &mut Exposition,
             (name, kind): (&str, Kind),
             help: &str,
             f: &dyn Fn(&localml_proto::localml::v1::LoadedModel) -> f64| {
                e.family(name, kind, help);
                for m in &status.models {
                    e.sample(&[("model", &m.name), ("version", &m.version)], f(m));
                }
            };
        per_model(
            &mut e,
            ("localml_worker_queue_depth", Kind::Gauge),
            "Requests waiting for a session.",
            &|m| f64::from(m.queue_depth),
        );
        per_model(
            &mut e,
            ("localml_worker_in_flight_requests", Kind::Gauge),
            "Requests running in ONNX Runtime.",
            &|m| f64::from(m.in_flight),
        );
        per_model(
            &mut e,
            ("localml_worker_model_memory_bytes", Kind::Gauge),
            "Memory the model took when loaded.",
            &|m| m.memory_bytes as f64,
        );
        let power = status.power.clone().unwrap_or_default();
        if let Some(watts) = power.power_watts {
            per_model(
                &mut e,
                ("localml_worker_joules_per_inference", Kind::Gauge),
                "Energy one inference costs on this PC (above its idle draw; 0 until measured).",
                &|m| m.joules_per_inference,
            );
            per_model(
                &mut e,
                ("localml_worker_model_energy_joules_total", Kind::Counter),
                "Energy attributed to the model version since it loaded (docs/energy.md).",
                &|m| m.energy_joules,
            );
            let estimated = if power.energy_estimated {
                "true"
            } else {
                "false"
            };
            e.family(
                "localml_worker_power_watts",
                Kind::Gauge,
                "This PC's draw over the last energy window; estimated=true: from power_watts.",
            )
            .sample(&[("estimated", estimated)], watts);
        }
        {
            use std::sync::atomic::Ordering::Relaxed;
            e.family(
                "localml_worker_catalog_received_bytes_total",
                Kind::Counter,
                "Bytes of model files fetched from the catalog, by source (scheduler, peer).",
            );
            e.sample(
                &[("source", "scheduler")],
                w.cache.from_scheduler.load(Relaxed) as f64,
            );
            e.sample(
                &[("source", "peer")],
                w.cache.from_peers.load(Relaxed) as f64,
            );
            e.family(
                "localml_worker_catalog_sent_bytes_total",
                Kind::Counter,
                "Bytes of model files this worker sent to other workers.",
            )
            .sample(&[], w.cache.to_peers.load(Relaxed) as f64);
        }
        e.family(
            "localml_worker_memory_total_bytes",
            Kind::Gauge,
            "RAM of this PC.",
        )
        .sample(&[], status.ram_total_bytes as f64);
        e.family(
            "localml_worker_memory_free_bytes",
            Kind::Gauge,
            "Available RAM of this PC.",
        )
        .sample(&[], status.ram_free_bytes as f64);
        e.family(
            "localml_worker_gpu_memory_total_bytes",
            Kind::Gauge,
            "GPU memory, per GPU.",
        );
        for g in &status.gpus {
            e.sample(
                &[("gpu", &g.index.to_string())],
                g.memory_total_bytes as f64,
            );
        }
        e.family(
            "localml_worker_gpu_memory_free_bytes",
            Kind::Gauge,
            "Free GPU memory, per GPU.",
        );
        for g in &status.gpus {
            e.sample(&[("gpu", &g.index.to_string())], g.memory_free_bytes as f64);
        }
        let source = match localml_proto::localml::v1::PowerSource::try_from(power.source) {
            Ok(localml_proto::localml::v1::PowerSource::Mains) => "mains",
            Ok(localml_proto::localml::v1::PowerSource::Battery) => "battery",
            Ok(localml_proto::localml::v1::PowerSource::Ups) => "ups",
            _ => "unknown",
        };
        e.family(
            "localml_worker_power_source",
            Kind::Gauge,
            "1 for the power source this PC runs on.",
        );
        for s in ["mains", "battery", "ups", "unknown"] {
            e.sample(&[("source", s)], if s == source { 1.0 } else { 0.0 });
        }
        if let Some(p) = power.battery_percent {
            e.family(
                "localml_worker_battery_percent",
                Kind::Gauge,
                "Battery charge.",
            )
            .sample(&[], f64::from(p));
        }
        let rapl = rapl_joules(&self.powercap_root);
        if !rapl.is_empty() {
            e.family(
                "localml_worker_cpu_energy_joules_total",
                Kind::Counter,
                "Energy used by RAPL domain (CPU package, DRAM), from /sys/class/powercap.",
            );
            for (domain, joules) in &rapl {
                e.sample(&[("domain", domain)], *joules);
            }
        }
        let gpu_energy = w.gpu_energy();
        if !gpu_energy.is_empty() {
            e.family(
                "localml_worker_gpu_energy_joules_total",
                Kind::Counter,
                "Energy used by each GPU since its driver loaded (NVML).",
            );
            for (gpu, joules) in &gpu_energy {
                e.sample(&[("gpu", &gpu.to_string())], *joules);
            }
        }
        e.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rapl_reads_domains_and_skips_the_rest() {
        let root = std::env::temp_dir().join(format!("localml-rapl-{}", std::process::id()));
        let pkg = root.join("intel-rapl:0");
        std::fs::create_dir_all(&pkg).expect("mkdir");
        std::fs::write(pkg.join("name"), "package-0\n").expect("write");
        std::fs::write(pkg.join("energy_uj"), "2500000\n").expect("write");
        std::fs::create_dir_all(root.join("intel-rapl:1")).expect("mkdir"); // unreadable: no files
        std::fs::create_dir_all(root.join("other")).expect("mkdir");
        assert_eq!(
            rapl_joules(&root),
            vec![("package-0:intel-rapl:0".to_string(), 2.5)]
        );
        assert!(rapl_joules(&root.join("missing")).is_empty());
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn requests_by_code_and_latency() {
        let m = RequestMetrics::default();
        m.record("m", "1", tonic::Code::Ok, 0.002);
        m.record("m", "1", tonic::Code::InvalidArgument, 0.0);
        let codes = m.codes.lock().expect("lock");
        assert_eq!(codes.get(&("m".into(), "1".into(), "OK")), Some(&1));
        assert_eq!(
            codes.get(&("m".into(), "1".into(), "INVALID_ARGUMENT")),
            Some(&1)
        );
        let latency = m.latency.lock().expect("lock");
        assert_eq!(latency[&("m".to_string(), "1".to_string())].count(), 1);
    }
}
