//! Power state from Linux sysfs (`/sys/class/power_supply`), with a configuration override
//! for a PC on a UPS or solar battery that sysfs cannot see.

use std::path::Path;

use serde::Deserialize;

/// Where the PC draws its power from now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PowerSource {
    Mains,
    Battery,
    Ups,
    Unknown,
}

/// A power reading.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerReading {
    pub source: PowerSource,
    /// Charge of the battery (or UPS) in percent, when one reports it.
    pub battery_percent: Option<f32>,
    /// On battery: the time left, when the battery says (`time_to_empty_now`, or its
    /// energy over its power draw).
    pub runtime_seconds: Option<u32>,
    /// "sysfs", "config" or "none".
    pub origin: &'static str,
}

/// `power:` in the worker config: fixes the reading instead of sysfs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerOverride {
    pub source: PowerSource,
    pub battery_percent: Option<f32>,
}

fn read(dir: &Path, file: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(file))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads the power state under `root` (normally `/sys/class/power_supply`).
///
/// Mains (or a USB charger) online wins; otherwise a system battery means battery power;
/// a UPS that reports `Discharging` means the PC runs on the UPS. Batteries with
/// `scope=Device` (a mouse, a headset) are ignored. No supply at all: unknown (most desktops).
pub fn read_sysfs(root: &Path) -> PowerReading {
    let mut entries: Vec<_> = match std::fs::read_dir(root) {
        Ok(e) => e.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(_) => Vec::new(),
    };
    entries.sort();
    let mut mains_online = false;
    let mut mains_seen = false;
    let mut batteries = Vec::new();
    let mut runtimes: Vec<u32> = Vec::new();
    let mut ups: Option<(bool, Option<f32>)> = None;
    for dir in &entries {
        let kind = read(dir, "type").unwrap_or_default();
        let capacity = read(dir, "capacity").and_then(|c| c.parse::<f32>().ok());
        match kind.as_str() {
            "Mains" | "USB" | "USB_C" | "USB_PD" | "USB_PD_DRP" => {
                mains_seen = true;
                mains_online |= read(dir, "online").as_deref() == Some("1");
            }
            "Battery" if read(dir, "scope").as_deref() != Some("Device") => {
                batteries.push(capacity);
                runtimes.extend(runtime_left(dir));
            }
            "UPS" => {
                let discharging = read(dir, "status").as_deref() == Some("Discharging");
                ups = Some((discharging, capacity));
            }
            _ => {}
        }
    }
    let battery_percent = batteries.iter().flatten().copied().reduce(f32::min);
    let reading = |source, battery_percent| PowerReading {
        source,
        battery_percent,
        runtime_seconds: None,
        origin: "sysfs",
    };
    if let Some((true, charge)) = ups {
        return reading(PowerSource::Ups, charge);
    }
    if mains_online {
        return reading(
            PowerSource::Mains,
            battery_percent.or(ups.and_then(|u| u.1)),
        );
    }
    if !batteries.is_empty() {
        // Several batteries drain together in most laptops: the largest estimate is the
        // time the PC runs (each estimate covers its own battery only).
        return PowerReading {
            runtime_seconds: runtimes.iter().copied().max(),
            ..reading(PowerSource::Battery, battery_percent)
        };
    }
    if ups.is_some() || mains_seen {
        // A UPS on line power, or a mains entry that is offline with no battery: the PC
        // is running, so it draws from the line.
        return reading(PowerSource::Mains, ups.and_then(|u| u.1));
    }
    PowerReading {
        source: PowerSource::Unknown,
        battery_percent: None,
        runtime_seconds: None,
        origin: "none",
    }
}

/// Seconds a discharging battery has left: the kernel's `time_to_empty_now`, else
/// `energy_now / power_now` (µWh / µW) or `charge_now / current_now` (µAh / µA).
/// None when it is not discharging or says nothing usable.
fn runtime_left(dir: &Path) -> Option<u32> {
    if read(dir, "status").as_deref() != Some("Discharging") {
        return None;
    }
    let number = |file: &str| read(dir, file).and_then(|v| v.parse::<f64>().ok());
    let seconds = number("time_to_empty_now").or_else(|| {
        let (amount, rate) = match (number("energy_now"), number("power_now")) {
            (Some(e), Some(p)) => (e, p),
            _ => (number("charge_now")?, number("current_now")?),
        };
        (rate > 0.0).then(|| amount / rate * 3600.0)
    })?;
    (seconds.is_finite() && seconds >= 0.0).then(|| seconds.min(f64::from(u32::MAX)) as u32)
}

/// The reading a worker reports: the override when configured, else sysfs.
pub fn current(root: &Path, override_: Option<&PowerOverride>) -> PowerReading {
    match override_ {
        Some(o) => PowerReading {
            source: o.source,
            battery_percent: o.battery_percent,
            runtime_seconds: None,
            origin: "config",
        },
        None => read_sysfs(root),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(tag: &str, supplies: &[(&str, &[(&str, &str)])]) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("localml-power-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for (name, files) in supplies {
            let dir = root.join(name);
            std::fs::create_dir_all(&dir).expect("mkdir");
            for (file, value) in *files {
                std::fs::write(dir.join(file), format!("{value}\n")).expect("write");
            }
        }
        std::fs::create_dir_all(&root).expect("mkdir");
        root
    }

    #[test]
    fn readings_from_fake_sysfs_trees() {
        type Supply<'a> = (&'a str, &'a [(&'a str, &'a str)]);
        type Case<'a> = (&'a str, Vec<Supply<'a>>, PowerSource, Option<f32>);
        let cases: Vec<Case> = vec![
            ("empty", vec![], PowerSource::Unknown, None),
            (
                "laptop on mains",
                vec![
                    ("AC", &[("type", "Mains"), ("online", "1")]),
                    (
                        "BAT0",
                        &[
                            ("type", "Battery"),
                            ("capacity", "80"),
                            ("status", "Charging"),
                        ],
                    ),
                ],
                PowerSource::Mains,
                Some(80.0),
            ),
            (
                "laptop on battery",
                vec![
                    ("AC", &[("type", "Mains"), ("online", "0")]),
                    (
                        "BAT0",
                        &[
                            ("type", "Battery"),
                            ("capacity", "42"),
                            ("status", "Discharging"),
                        ],
                    ),
                ],
                PowerSource::Battery,
                Some(42.0),
            ),
            (
                "mouse battery ignored",
                vec![
                    ("AC", &[("type", "Mains"), ("online", "0")]),
                    (
                        "hid-mouse",
                        &[("type", "Battery"), ("scope", "Device"), ("capacity", "5")],
                    ),
                ],
                PowerSource::Mains,
                None,
            ),
            (
                "usb-c charger",
                vec![
                    ("ucsi", &[("type", "USB"), ("online", "1")]),
                    ("BAT1", &[("type", "Battery"), ("capacity", "55")]),
                ],
                PowerSource::Mains,
                Some(55.0),
            ),
            (
                "ups discharging",
                vec![(
                    "ups0",
                    &[
                        ("type", "UPS"),
                        ("status", "Discharging"),
                        ("capacity", "90"),
                    ],
                )],
                PowerSource::Ups,
                Some(90.0),
            ),
            (
                "ups on line",
                vec![(
                    "ups0",
                    &[("type", "UPS"), ("status", "Full"), ("capacity", "100")],
                )],
                PowerSource::Mains,
                Some(100.0),
            ),
        ];
        for (i, (name, supplies, source, percent)) in cases.into_iter().enumerate() {
            let root = tree(&i.to_string(), &supplies);
            let reading = read_sysfs(&root);
            assert_eq!(
                (reading.source, reading.battery_percent),
                (source, percent),
                "{name}"
            );
            std::fs::remove_dir_all(&root).ok();
        }
    }

    #[test]
    fn override_wins_over_sysfs() {
        let o = PowerOverride {
            source: PowerSource::Ups,
            battery_percent: Some(70.0),
        };
        let reading = current(Path::new("/nonexistent"), Some(&o));
        assert_eq!(reading.source, PowerSource::Ups);
        assert_eq!(reading.origin, "config");
        assert_eq!(
            read_sysfs(Path::new("/nonexistent")).source,
            PowerSource::Unknown
        );
    }

    #[test]
    fn a_discharging_battery_says_how_long_it_has() {
        type Files<'a> = &'a [(&'a str, &'a str)];
        let cases: [(&str, Files, Option<u32>); 5] = [
            (
                "time_to_empty",
                &[
                    ("type", "Battery"),
                    ("status", "Discharging"),
                    ("time_to_empty_now", "1800"),
                ],
                Some(1800),
            ),
            (
                // 20 Wh at 10 W: two hours.
                "energy over power",
                &[
                    ("type", "Battery"),
                    ("status", "Discharging"),
                    ("energy_now", "20000000"),
                    ("power_now", "10000000"),
                ],
                Some(7200),
            ),
            (
                "charge over current",
                &[
                    ("type", "Battery"),
                    ("status", "Discharging"),
                    ("charge_now", "1000000"),
                    ("current_now", "4000000"),
                ],
                Some(900),
            ),
            (
                "no draw",
                &[
                    ("type", "Battery"),
                    ("status", "Discharging"),
                    ("energy_now", "20000000"),
                    ("power_now", "0"),
                ],
                None,
            ),
            (
                "charging",
                &[
                    ("type", "Battery"),
                    ("status", "Charging"),
                    ("time_to_empty_now", "1800"),
                ],
                None,
            ),
        ];
        for (name, files, expected) in cases {
            let root = tree(
                &format!("runtime-{}", name.replace(' ', "-")),
                &[("BAT0", files)],
            );
            let reading = read_sysfs(&root);
            assert_eq!(reading.runtime_seconds, expected, "{name}");
            let _ = std::fs::remove_dir_all(&root);
        }
    }
}
