//! Hardware discovery: CPU cores, RAM from /proc/meminfo, NVIDIA GPUs through nvidia-smi.

use std::process::Command;

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

/// A GPU as nvidia-smi reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuInfo {
    pub index: u32,
    pub name: String,
    pub memory_total_bytes: u64,
    pub memory_free_bytes: u64,
}

/// GPUs with total and free memory; empty where there is no NVIDIA driver.
pub fn gpus() -> Vec<GpuInfo> {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,name,memory.total,memory.free",
            "--format=csv,noheader,nounits",
        ])
        .output();
    match output {
        Ok(o) if o.status.success() => parse_nvidia_smi(&String::from_utf8_lossy(&o.stdout)),
        _ => Vec::new(),
    }
}

/// Per GPU: energy used since the driver loaded, in joules (NVML's total energy
/// consumption, in mJ, through nvidia-smi); empty where the GPU or driver lacks it.
pub fn gpu_energy_joules() -> Vec<(u32, f64)> {
    let output = Command::new("nvidia-smi")
        .args([
            "--query-gpu=index,total_energy_consumption",
            "--format=csv,noheader,nounits",
        ])
        .output();
    let Ok(o) = output else { return Vec::new() };
    if !o.status.success() {
        return Vec::new();
    }
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|line| {
            let (index, mj) = line.split_once(',')?;
            Some((
                index.trim().parse().ok()?,
                mj.trim().parse::<f64>().ok()? / 1e3,
            ))
        })
        .collect()
}

fn parse_nvidia_smi(text: &str) -> Vec<GpuInfo> {
    const MIB: u64 = 1024 * 1024;
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let [index, name, total, free] = f.as_slice() else {
                return None;
            };
            Some(GpuInfo {
                index: index.parse().ok()?,
                name: name.to_string(),
                memory_total_bytes: total.parse::<u64>().ok()? * MIB,
                memory_free_bytes: free.parse::<u64>().ok()? * MIB,
            })
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

    #[test]
    fn parses_nvidia_smi_csv() {
        let text =
            "0, NVIDIA H200, 143771, 143000\n1, NVIDIA GeForce RTX 3060, 12288, 11000\ngarbage\n";
        let gpus = parse_nvidia_smi(text);
        assert_eq!(gpus.len(), 2);
        assert_eq!(gpus[1].name, "NVIDIA GeForce RTX 3060");
        assert_eq!(gpus[1].memory_total_bytes, 12288 * 1024 * 1024);
        assert_eq!(gpus[0].memory_free_bytes, 143000 * 1024 * 1024);
    }

    #[test]
    fn reads_this_machine() {
        let (total, free) = memory();
        assert!(total > 0 && free <= total);
        assert!(cpu_cores() >= 1);
    }
}
