//! Hardware discovery: CPU cores, RAM from /proc/meminfo, NVIDIA GPUs through NVML.
//!
//! NVML (`libnvidia-ml.so.1`, installed with the NVIDIA driver) is opened at run time by
//! `nvml-wrapper`, once per process, so a worker built here runs unchanged on a PC without
//! a driver: there the GPU list is simply empty. Before NVML the worker spawned
//! `nvidia-smi`, which cost tens of milliseconds per status report and per `/metrics`
//! scrape; an NVML query costs microseconds.

use std::sync::OnceLock;

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

/// RAM in bytes: (total, available).
pub fn memory() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kib| kib * 1024)
            .unwrap_or(0)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

pub fn cpu_cores() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1)
}

/// A GPU as NVML reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    /// NVML's index, the same as `nvidia-smi`'s.
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

/// The outcome of loading NVML, kept for the life of the process. Loaded once: a PC
/// without a driver does not get one while the worker runs, and retrying would repeat the
/// failed `dlopen` on every report.
static NVML: OnceLock<Option<Nvml>> = OnceLock::new();

/// The process's NVML handle, or `None` where NVML cannot start (no driver, no library,
/// no permission).
fn nvml() -> Option<&'static Nvml> {
    NVML.get_or_init(|| match Nvml::init() {
        Ok(nvml) => {
            let driver = nvml.sys_driver_version().unwrap_or_default();
            let count = nvml.device_count().unwrap_or(0);
            tracing::info!(driver = %driver, gpus = count, "NVML loaded");
            Some(nvml)
        }
        Err(e) => {
            // The usual case on a PC without an NVIDIA GPU: not worth more than info.
            tracing::info!(error = %e, "no NVIDIA GPU: NVML unavailable");
            None
        }
    })
    .as_ref()
}

/// Every GPU NVML can open, with its index. A GPU that fails to open (fallen off the bus)
/// is left out; the others are still reported.
fn devices(nvml: &Nvml) -> Vec<(u32, Device<'_>)> {
    let count = nvml.device_count().unwrap_or_else(|e| {
        tracing::debug!(error = %e, "NVML cannot count GPUs");
        0
    });
    (0..count)
        .filter_map(|index| match nvml.device_by_index(index) {
            Ok(device) => Some((index, device)),
            Err(e) => {
                tracing::debug!(gpu = index, error = %e, "NVML cannot open GPU");
                None
            }
        })
        .collect()
}

fn gpu_info(index: u32, device: &Device<'_>) -> Result<GpuInfo, NvmlError> {
    let memory = device.memory_info()?;
    Ok(GpuInfo {
        index,
        name: device.name()?,
        memory_total_bytes: memory.total,
        memory_free_bytes: memory.free,
    })
}

/// GPUs with total and free memory; empty where there is no NVIDIA driver or GPU.
pub fn gpus() -> Vec<GpuInfo> {
    let Some(nvml) = nvml() else {
        return Vec::new();
    };
    devices(nvml)
        .iter()
        .filter_map(|(index, device)| match gpu_info(*index, device) {
            Ok(gpu) => Some(gpu),
            Err(e) => {
                tracing::debug!(gpu = index, error = %e, "NVML cannot read GPU memory");
                None
            }
        })
        .collect()
}

/// Per GPU: energy used since the driver loaded, in joules (NVML's total energy
/// consumption is in millijoules); empty where the GPU or driver lacks it (before Volta).
pub fn gpu_energy_joules() -> Vec<(u32, f64)> {
    let Some(nvml) = nvml() else {
        return Vec::new();
    };
    devices(nvml)
        .iter()
        .filter_map(|(index, device)| {
            let millijoules = device.total_energy_consumption().ok()?;
            Some((*index, millijoules as f64 / 1e3))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo() {
        let text =
            "MemTotal:       24576000 kB\nMemFree:         1000 kB\nMemAvailable:   20480000 kB\n";
        assert_eq!(parse_meminfo(text), (24576000 * 1024, 20480000 * 1024));
        assert_eq!(parse_meminfo(""), (0, 0));
    }

    /// Without a driver (CI, this repository's build machines) NVML fails to load: that is
    /// an empty list, not an error, and the failure is remembered, so later calls (every
    /// tenth status report) do not try to load it again. With a driver, the readings must
    /// make sense.
    #[test]
    fn gpus_are_empty_without_a_driver_and_loaded_once() {
        let first = gpus();
        assert!(
            NVML.get().is_some(),
            "the first call settles whether NVML loads"
        );
        assert!(
            nvml().is_some() || first.is_empty(),
            "no NVML but GPUs: {first:?}"
        );
        for g in &first {
            assert!(g.memory_total_bytes > 0 && g.memory_free_bytes <= g.memory_total_bytes);
        }
        let second = gpus();
        assert_eq!(
            first.iter().map(|g| g.index).collect::<Vec<_>>(),
            second.iter().map(|g| g.index).collect::<Vec<_>>()
        );
        if nvml().is_none() {
            assert!(gpu_energy_joules().is_empty());
        }
    }

    #[test]
    fn reads_this_machine() {
        let (total, free) = memory();
        assert!(total > 0 && free <= total);
        assert!(cpu_cores() >= 1);
    }
}
