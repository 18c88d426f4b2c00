//! Energy per inference: every energy window the worker reads its energy counters (RAPL
//! for the CPU package, NVML for GPUs) or, where it has none, estimates its draw from the
//! configured `power_watts` and its CPU time; the energy drawn above the PC's idle draw is
//! attributed to the loaded models by their share of inference time (CPU energy to every
//! model, GPU energy to the models on a GPU), and divided by their inferences.
//!
//! The attribution is an estimate: ONNX Runtime's threads, the gRPC stack and other
//! processes share the CPU. Only the worker process's share of the machine's busy CPU time
//! counts towards inference (clock_gettime and /proc/stat), and the idle floor (the lowest
//! draw seen in a window without inference) is left out, so a PC that is on anyway is not charged
//! its idle draw per inference. docs/energy.md says the same for operators.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;

/// How often the worker closes an energy window.
pub const WINDOW: std::time::Duration = std::time::Duration::from_secs(2);
/// Weight of the newest window in a model's joules-per-inference average.
const EWMA_ALPHA: f64 = 0.3;
/// USER_HZ: the unit of /proc/stat's times on every Linux architecture localml runs on.
const USER_HZ: f64 = 100.0;

/// `power_watts: {idle: 12, busy: 45}`: the PC's draw at rest and under full CPU load,
/// from its specification or a plug-in meter. Used where no energy counter is readable
/// (not as RAPL's or NVML's idle floor, which is learned from windows without inference).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PowerWatts {
    pub idle: f64,
    pub busy: f64,
}

impl PowerWatts {
    /// Why the figures cannot be used, if they cannot.
    pub fn problem(&self) -> Option<String> {
        let ok = |w: f64| w.is_finite() && (0.0..=100_000.0).contains(&w);
        if !ok(self.idle) || !ok(self.busy) {
            return Some(format!(
                "power_watts: idle and busy must be watts in [0, 100000], got idle {} busy {}",
                self.idle, self.busy
            ));
        }
        if self.busy < self.idle {
            return Some(format!(
                "power_watts: busy ({}) must be at least idle ({})",
                self.busy, self.idle
            ));
        }
        None
    }
}

/// One RAPL package domain's counter.
#[derive(Debug, Clone, PartialEq)]
struct RaplCounter {
    domain: String,
    microjoules: u64,
    /// `max_energy_range_uj`: where the counter wraps; 0 when unreadable.
    range: u64,
}

/// The top-level RAPL package domains under `root` (`intel-rapl:N` named `package-N`;
/// AMD's are exposed under the same name). Sub-domains (core, uncore, dram) are parts of
/// a package and `psys` overlaps them, so they are left out.
fn rapl_packages(root: &Path) -> Vec<RaplCounter> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut out: Vec<RaplCounter> = entries
        .flatten()
        .filter_map(|entry| {
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("intel-rapl:") || name.matches(':').count() != 1 {
                return None;
            }
            let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
            if !read("name")?.trim().starts_with("package") {
                return None;
            }
            let microjoules = read("energy_uj")?.trim().parse::<u64>().ok()?;
            let range = read("max_energy_range_uj")
                .and_then(|r| r.trim().parse::<u64>().ok())
                .unwrap_or(0);
            Some(RaplCounter {
                domain: name,
                microjoules,
                range,
            })
        })
        .collect();
    out.sort_by(|a, b| a.domain.cmp(&b.domain));
    out
}

/// Joules between two readings of the same packages, across a wrap; `None` when the
/// domains changed or a counter went back without a known range.
fn rapl_delta(before: &[RaplCounter], now: &[RaplCounter]) -> Option<f64> {
    if before.len() != now.len() || now.is_empty() {
        return None;
    }
    let mut uj = 0u64;
    for (b, n) in before.iter().zip(now) {
        if b.domain != n.domain {
            return None;
        }
        let d = if n.microjoules >= b.microjoules {
            n.microjoules - b.microjoules
        } else if n.range > b.microjoules {
            n.range - b.microjoules + n.microjoules
        } else {
            return None;
        };
        uj = uj.saturating_add(d);
    }
    Some(uj as f64 / 1e6)
}

/// CPU seconds: (this process, the whole machine's busy time). The process's comes from
/// clock_gettime (nanoseconds, threads that ended included); the machine's from
/// /proc/stat (USER_HZ ticks, fine enough summed over every core).
fn cpu_seconds() -> Option<(f64, f64)> {
    let own = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    let own = own.tv_sec as f64 + own.tv_nsec as f64 / 1e9;
    let system = std::fs::read_to_string("/proc/stat").ok()?;
    Some((own, busy_ticks(&system)? as f64 / USER_HZ))
}

/// Busy time of all CPUs from /proc/stat's first line: everything but idle and iowait.
fn busy_ticks(stat: &str) -> Option<u64> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|f| f.parse::<u64>().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().take(8).sum();
    Some(total.saturating_sub(v.get(3)? + v.get(4).copied().unwrap_or(0)))
}

/// What a model did in a window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelWork {
    /// Seconds its requests spent running (successful or not).
    pub busy_s: f64,
    /// Inferences that completed.
    pub inferences: u64,
    pub on_gpu: bool,
}

/// The largest draw a window may show, in watts; more means a counter was reset or the
/// PC resumed from suspend, and the window is dropped.
const MAX_WATTS: f64 = 5_000.0;

/// The energy of one window, before attribution.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct WindowEnergy {
    /// False while an idle floor is unknown (no idle window seen yet) or the process's
    /// CPU share is: the draw is known, the energy per inference not yet.
    pub attributable: bool,
    pub seconds: f64,
    /// Energy drawn above idle by the CPU, attributable to this process.
    pub cpu_joules: f64,
    /// Energy drawn above idle by the GPUs.
    pub gpu_joules: f64,
    /// Average draw over the window, in watts.
    pub watts: f64,
    pub estimated: bool,
}

/// Splits a window's energy over the models by their share of busy time: CPU energy over
/// every model, GPU energy over the models on a GPU. Returns joules per model, in order.
pub fn attribute(energy: &WindowEnergy, work: &[ModelWork]) -> Vec<f64> {
    let busy: f64 = work.iter().map(|w| w.busy_s).sum();
    let gpu_busy: f64 = work.iter().filter(|w| w.on_gpu).map(|w| w.busy_s).sum();
    work.iter()
        .map(|w| {
            let cpu = if busy > 0.0 {
                energy.cpu_joules * w.busy_s / busy
            } else {
                0.0
            };
            let gpu = if w.on_gpu && gpu_busy > 0.0 {
                energy.gpu_joules * w.busy_s / gpu_busy
            } else {
                0.0
            };
            cpu + gpu
        })
        .collect()
}

/// Counters at the start of a window.
struct Reading {
    at: Instant,
    rapl: Vec<RaplCounter>,
    gpu_joules: Option<f64>,
    cpu: Option<(f64, f64)>,
    /// Per model (name, version): (busy nanoseconds, inferences) so far.
    models: HashMap<(String, u64), (u64, u64)>,
}

/// A model's energy so far.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ModelEnergy {
    /// Joules per inference, averaged over windows with inferences; 0 until measured.
    pub joules_per_inference: f64,
    /// Joules attributed since the model loaded.
    pub joules: f64,
}

#[derive(Default)]
struct MeterState {
    last: Option<Reading>,
    /// Lowest CPU and GPU draws seen in a window, in watts: the idle floors.
    cpu_floor: Option<f64>,
    gpu_floor: Option<f64>,
    watts: Option<f64>,
    estimated: bool,
    models: HashMap<(String, u64), ModelEnergy>,
    /// The worker logs once which source it uses.
    announced: bool,
}

/// A model's cumulative counters, as the meter reads them.
pub struct ModelCounters {
    pub name: String,
    pub version: u64,
    pub busy_ns: u64,
    pub inferences: u64,
    pub on_gpu: bool,
}

/// Closes energy windows and keeps the results for status reports and `/metrics`.
pub struct EnergyMeter {
    powercap_root: PathBuf,
    configured: Option<PowerWatts>,
    cores: f64,
    state: Mutex<MeterState>,
}

impl EnergyMeter {
    pub fn new(powercap_root: PathBuf, configured: Option<PowerWatts>, cores: u32) -> EnergyMeter {
        EnergyMeter {
            powercap_root,
            configured,
            cores: f64::from(cores.max(1)),
            state: Mutex::new(MeterState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MeterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The average draw over the last window and whether it is an estimate.
    pub fn power(&self) -> (Option<f64>, bool) {
        let s = self.lock();
        (s.watts, s.estimated)
    }

    /// A model version's energy so far.
    pub fn model(&self, name: &str, version: u64) -> ModelEnergy {
        self.lock()
            .models
            .get(&(name.to_string(), version))
            .copied()
            .unwrap_or_default()
    }

    /// Reads the counters and closes the window opened by the previous call.
    /// `gpu_joules` is NVML's total across GPUs, when it has one.
    pub fn sample(&self, models: &[ModelCounters], gpu_joules: Option<f64>) {
        let reading = Reading {
            at: Instant::now(),
            rapl: rapl_packages(&self.powercap_root),
            gpu_joules,
            cpu: cpu_seconds(),
            models: models
                .iter()
                .map(|m| ((m.name.clone(), m.version), (m.busy_ns, m.inferences)))
                .collect(),
        };
        let at = reading.at;
        let mut state = self.lock();
        let Some(last) = state.last.replace(reading) else {
            return;
        };
        let seconds = at.duration_since(last.at).as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let work: Vec<ModelWork> = models
            .iter()
            .map(|m| {
                let (busy, count) = last
                    .models
                    .get(&(m.name.clone(), m.version))
                    .copied()
                    .unwrap_or((m.busy_ns, m.inferences));
                ModelWork {
                    busy_s: m.busy_ns.saturating_sub(busy) as f64 / 1e9,
                    inferences: m.inferences.saturating_sub(count),
                    on_gpu: m.on_gpu,
                }
            })
            .collect();
        let busy = work.iter().any(|w| w.busy_s > 0.0 || w.inferences > 0);
        let Some(energy) = self.window(&mut state, &last, seconds, busy) else {
            return;
        };
        if !energy.attributable {
            return;
        }
        let joules = attribute(&energy, &work);
        let present: std::collections::HashSet<(String, u64)> =
            models.iter().map(|m| (m.name.clone(), m.version)).collect();
        state.models.retain(|k, _| present.contains(k));
        for ((m, w), j) in models.iter().zip(&work).zip(joules) {
            let entry = state.models.entry((m.name.clone(), m.version)).or_default();
            entry.joules += j;
            if w.inferences > 0 {
                let sample = j / w.inferences as f64;
                entry.joules_per_inference = if entry.joules_per_inference == 0.0 {
                    sample
                } else {
                    entry.joules_per_inference + EWMA_ALPHA * (sample - entry.joules_per_inference)
                };
            }
        }
    }

    /// The window's energy above idle, from counters where they are readable, else from
    /// the configured watts; `None` when the worker has neither, or the counters make no
    /// sense (a draw over [`MAX_WATTS`]: a counter reset, a resume from suspend).
    /// `busy`: inference ran in the window; only idle windows teach the idle floor, so a
    /// worker busy from its start does not learn its busy draw as idle.
    fn window(
        &self,
        state: &mut MeterState,
        last: &Reading,
        seconds: f64,
        busy: bool,
    ) -> Option<WindowEnergy> {
        let now = state.last.as_ref()?;
        let rapl = rapl_delta(&last.rapl, &now.rapl);
        let gpu = match (last.gpu_joules, now.gpu_joules) {
            (Some(a), Some(b)) if b >= a => Some(b - a),
            _ => None,
        };
        // This process's share of the machine's busy CPU time, and its CPU seconds.
        // This process's share of the machine's busy CPU time (unknown without /proc/stat).
        let (share, own_seconds) = match (last.cpu, now.cpu) {
            (Some((p0, s0)), Some((p1, s1))) => {
                let own = (p1 - p0).max(0.0);
                let machine = (s1 - s0).max(0.0);
                let share = if machine > 0.0 {
                    Some((own / machine).min(1.0))
                } else {
                    Some(0.0)
                };
                (share, own)
            }
            _ => (None, 0.0),
        };
        let sane = |joules: f64| joules / seconds <= MAX_WATTS;
        if !rapl.is_none_or(sane) || !gpu.is_none_or(sane) {
            tracing::debug!(
                ?rapl,
                ?gpu,
                seconds,
                "energy window dropped: an implausible draw"
            );
            return None;
        }
        // Energy above the learned idle floor, `None` until an idle window was seen.
        let above = |joules: f64, floor: &mut Option<f64>| {
            let watts = joules / seconds;
            if !busy {
                *floor = Some(floor.map_or(watts, |f| f.min(watts)));
            }
            floor.map(|f| (joules - f * seconds).max(0.0))
        };
        let mut energy = WindowEnergy {
            seconds,
            attributable: true,
            ..Default::default()
        };
        let mut watts = 0.0;
        if let Some(j) = gpu {
            match above(j, &mut state.gpu_floor) {
                Some(e) => energy.gpu_joules = e,
                None => energy.attributable = false,
            }
            watts += j / seconds;
        }
        match (rapl, self.configured) {
            (Some(j), _) => {
                // The configured watts are the whole PC's at the wall, not the CPU
                // package's: RAPL's floor is learned from its own idle windows.
                match (above(j, &mut state.cpu_floor), share) {
                    (Some(e), Some(share)) => energy.cpu_joules = e * share,
                    _ => energy.attributable = false,
                }
                watts += j / seconds;
            }
            (None, Some(p)) => {
                let utilisation = (own_seconds / (seconds * self.cores)).min(1.0);
                energy.cpu_joules = (p.busy - p.idle) * utilisation * seconds;
                watts += p.idle + (p.busy - p.idle) * utilisation;
                energy.estimated = true;
            }
            (None, None) if gpu.is_none() => {
                self.announce(state, "none");
                return None;
            }
            (None, None) => {}
        }
        energy.watts = watts;
        state.watts = Some(watts);
        state.estimated = energy.estimated;
        let source = match (rapl.is_some(), gpu.is_some(), energy.estimated) {
            (true, true, _) => "RAPL and NVML",
            (true, false, _) => "RAPL",
            (false, true, true) => "NVML and power_watts (estimate)",
            (false, true, false) => "NVML (GPU only)",
            (false, false, _) => "power_watts (estimate)",
        };
        self.announce(state, source);
        Some(energy)
    }

    fn announce(&self, state: &mut MeterState, source: &str) {
        if state.announced {
            return;
        }
        state.announced = true;
        if source == "none" {
            tracing::info!(
                powercap = %self.powercap_root.display(),
                "no energy counter readable and no power_watts configured: joules per inference not reported (docs/energy.md)"
            );
        } else {
            tracing::info!(source, "energy per inference measured");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One CPU model's cumulative counters.
    fn counters(busy_ns: u64, inferences: u64) -> Vec<ModelCounters> {
        vec![ModelCounters {
            name: "m".into(),
            version: 1,
            busy_ns,
            inferences,
            on_gpu: false,
        }]
    }

    fn burn_cpu(time: std::time::Duration) {
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < time {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
    }

    fn fake_package(root: &Path, dir: &str, name: &str, uj: u64, range: u64) {
        let d = root.join(dir);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("name"), format!("{name}\n")).expect("name");
        std::fs::write(d.join("energy_uj"), format!("{uj}\n")).expect("uj");
        std::fs::write(d.join("max_energy_range_uj"), format!("{range}\n")).expect("range");
    }

    #[test]
    fn packages_only_and_wraps_are_handled() {
        let root = std::env::temp_dir().join(format!("localml-energy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fake_package(&root, "intel-rapl:0", "package-0", 1_000_000, 10_000_000);
        fake_package(&root, "intel-rapl:0:0", "core", 500_000, 10_000_000);
        fake_package(&root, "intel-rapl:1", "psys", 7_000_000, 10_000_000);
        std::fs::create_dir_all(root.join("intel-rapl:2")).expect("mkdir"); // unreadable
        let before = rapl_packages(&root);
        assert_eq!(before.len(), 1, "{before:?}");
        fake_package(&root, "intel-rapl:0", "package-0", 3_500_000, 10_000_000);
        assert_eq!(rapl_delta(&before, &rapl_packages(&root)), Some(2.5));
        // Wrapped: 9.0 J -> 1.0 J over a 10 J range is 2 J.
        let high = vec![RaplCounter {
            domain: "intel-rapl:0".into(),
            microjoules: 9_000_000,
            range: 10_000_000,
        }];
        let low = vec![RaplCounter {
            microjoules: 1_000_000,
            ..high[0].clone()
        }];
        assert_eq!(rapl_delta(&high, &low), Some(2.0));
        let unknown_range = vec![RaplCounter {
            range: 0,
            ..low[0].clone()
        }];
        assert_eq!(
            rapl_delta(&high, &unknown_range),
            None,
            "back without a range"
        );
        assert_eq!(rapl_delta(&[], &[]), None);
        std::fs::write(root.join("intel-rapl:0/energy_uj"), "garbage").expect("write");
        assert!(
            rapl_packages(&root).is_empty(),
            "an unparsable counter is skipped"
        );
        assert!(rapl_packages(&root.join("missing")).is_empty());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn proc_times_parse() {
        let system = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(busy_ticks(system), Some(150));
        assert_eq!(busy_ticks("intr 5"), None);
    }

    #[test]
    fn energy_follows_busy_time() {
        let energy = WindowEnergy {
            attributable: true,
            seconds: 2.0,
            cpu_joules: 30.0,
            gpu_joules: 100.0,
            watts: 80.0,
            estimated: false,
        };
        let work = [
            ModelWork {
                busy_s: 1.0,
                inferences: 10,
                on_gpu: false,
            },
            ModelWork {
                busy_s: 2.0,
                inferences: 5,
                on_gpu: true,
            },
            ModelWork {
                busy_s: 0.0,
                inferences: 0,
                on_gpu: true,
            },
        ];
        // CPU 30 J split 1:2; GPU 100 J all to the busy GPU model.
        assert_eq!(attribute(&energy, &work), vec![10.0, 120.0, 0.0]);
        assert_eq!(attribute(&energy, &[]), Vec::<f64>::new());
    }

    #[test]
    fn configured_watts_are_checked() {
        let p = |idle, busy| PowerWatts { idle, busy }.problem();
        assert!(p(10.0, 40.0).is_none());
        assert!(p(40.0, 10.0)
            .expect("busy < idle")
            .contains("at least idle"));
        assert!(p(f64::NAN, 10.0).is_some());
        assert!(p(-1.0, 10.0).is_some());
    }

    #[test]
    fn a_meter_attributes_rapl_energy_above_the_idle_floor_it_learned() {
        let root = std::env::temp_dir().join(format!("localml-meter-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let counter = |uj: u64| fake_package(&root, "intel-rapl:0", "package-0", uj, 1 << 40);
        counter(0);
        // Configured wall watts do not set RAPL's floor: only idle windows do.
        let meter = EnergyMeter::new(
            root.clone(),
            Some(PowerWatts {
                idle: 500.0,
                busy: 900.0,
            }),
            2,
        );
        meter.sample(&counters(0, 0), None);
        assert_eq!(meter.power().0, None, "one reading is no window");
        // An idle window: about 1 J in 0.1 s, the floor.
        std::thread::sleep(std::time::Duration::from_millis(100));
        counter(1_000_000);
        meter.sample(&counters(0, 0), None);
        assert!(meter.power().0.is_some_and(|w| w > 0.0));
        assert_eq!(meter.model("m", 1), ModelEnergy::default());
        // A busy window: 50 J more; what lies above the floor is attributed.
        burn_cpu(std::time::Duration::from_millis(100));
        counter(51_000_000);
        meter.sample(&counters(1_000_000, 10), None);
        let (watts, estimated) = meter.power();
        assert!(watts.expect("a window closed") > 0.0);
        assert!(!estimated, "RAPL is a measurement");
        let m = meter.model("m", 1);
        assert!(m.joules > 0.0 && m.joules <= 50.0, "{m:?}");
        assert_eq!(m.joules_per_inference, m.joules / 10.0);
        assert_eq!(meter.model("other", 1), ModelEnergy::default());
        // A counter that leaps (a reset read as a wrap, a resume): the window is dropped.
        counter(u64::from(u32::MAX) * 1000);
        meter.sample(&counters(2_000_000, 20), None);
        assert_eq!(
            meter.model("m", 1),
            m,
            "an implausible window changes nothing"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn a_worker_busy_from_its_start_reports_no_energy_until_it_idles() {
        let root = std::env::temp_dir().join(format!("localml-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        fake_package(&root, "intel-rapl:0", "package-0", 0, 1 << 40);
        let meter = EnergyMeter::new(root.clone(), None, 2);
        meter.sample(&counters(0, 0), None);
        burn_cpu(std::time::Duration::from_millis(50));
        fake_package(&root, "intel-rapl:0", "package-0", 5_000_000, 1 << 40);
        meter.sample(&counters(1_000_000, 5), None);
        assert!(meter.power().0.is_some(), "its draw is known");
        assert_eq!(
            meter.model("m", 1),
            ModelEnergy::default(),
            "but not its idle floor, so not the energy its inferences add"
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn without_counters_the_configured_watts_give_an_estimate() {
        let meter = EnergyMeter::new(
            PathBuf::from("/nonexistent/powercap"),
            Some(PowerWatts {
                idle: 10.0,
                busy: 30.0,
            }),
            1,
        );
        meter.sample(&counters(0, 0), None);
        // Burn some CPU in this process so the estimate has utilisation to go on.
        burn_cpu(std::time::Duration::from_millis(100));
        meter.sample(&counters(100_000_000, 4), None);
        let (watts, estimated) = meter.power();
        assert!(estimated);
        let watts = watts.expect("estimated");
        assert!((10.0..=30.0).contains(&watts), "{watts}");
        let m = meter.model("m", 1);
        assert!(m.joules >= 0.0 && m.joules <= 20.0 * 0.2, "{m:?}");

        let silent = EnergyMeter::new(PathBuf::from("/nonexistent/powercap"), None, 1);
        silent.sample(&counters(0, 0), None);
        silent.sample(&counters(1, 1), None);
        assert_eq!(
            silent.power(),
            (None, false),
            "no counter, no watts: nothing"
        );
        assert_eq!(silent.model("m", 1), ModelEnergy::default());
    }
}
