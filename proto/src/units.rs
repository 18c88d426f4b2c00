//! Quantities as people read them, shared by the CLI's tables and the scheduler's
//! messages.

/// Bytes in binary units: "512 B", "6.8 KiB", "3.1 GiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn binary_units() {
        assert_eq!(super::human_bytes(512), "512 B");
        assert_eq!(super::human_bytes(6920), "6.8 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
