//! Simulated fleets: the speed classes with their watts, and the fleets the tables use.

use localml_framework::PowerSource;

use crate::energy::{Battery, Watts};

/// A simulated worker.
#[derive(Debug, Clone)]
pub struct SimWorker {
    /// Relative speed (1.0 = `service_ms` per request).
    pub speed: f64,
    pub watts: Watts,
    /// Its battery, if it has one (a laptop).
    pub battery: Option<Battery>,
    /// (time ms, source) changes during the run; the worker starts on mains.
    pub power_changes: Vec<(f64, PowerSource)>,
    /// Time at which the worker fails (and is switched off), if it does.
    pub fails_at: Option<f64>,
}

/// A kind of PC: how fast it runs the model and what it draws.
#[derive(Debug, Clone, Copy)]
pub struct Class {
    pub name: &'static str,
    pub speed: f64,
    pub watts: Watts,
    pub laptop: bool,
}

/// The five kinds of PC in [`heterogeneous`], slowest first. Watts are plausible wall
/// figures for each kind running a CPU or GPU inference flat out, not measurements. Energy
/// per inference (busy minus idle watts x `service_ms / speed`, 10 ms at 1x) is not in
/// the order of speed: the modern laptop is the most frugal, then the old laptop, the GPU
/// desktop, the desktop; the old office PC is both the slowest and the most wasteful.
pub const CLASSES: [Class; 5] = [
    // 40 ms a request, 60 W above idle: 2.4 J.
    Class {
        name: "old office PC",
        speed: 0.25,
        watts: Watts {
            idle: 40.0,
            busy: 100.0,
        },
        laptop: false,
    },
    // 20 ms, 27 W: 0.54 J.
    Class {
        name: "old laptop",
        speed: 0.5,
        watts: Watts {
            idle: 8.0,
            busy: 35.0,
        },
        laptop: true,
    },
    // 10 ms, 90 W: 0.9 J.
    Class {
        name: "desktop",
        speed: 1.0,
        watts: Watts {
            idle: 30.0,
            busy: 120.0,
        },
        laptop: false,
    },
    // 5 ms, 25 W: 0.125 J.
    Class {
        name: "modern laptop",
        speed: 2.0,
        watts: Watts {
            idle: 4.0,
            busy: 29.0,
        },
        laptop: true,
    },
    // 2.5 ms, 240 W: 0.6 J.
    Class {
        name: "desktop with GPU",
        speed: 4.0,
        watts: Watts {
            idle: 55.0,
            busy: 295.0,
        },
        laptop: false,
    },
];

/// Charge a battery starts the run with, in percent.
pub const BATTERY_START_PERCENT: f64 = 50.0;
/// A battery holds what its laptop draws busy over this many battery periods.
/// Runs last seconds to minutes, real batteries hours, so the batteries are scaled to
/// the run: a laptop busy about two thirds of its battery period or more ends it under
/// the shipped profiles' critical 15 %, and none empties (at most half drains).
pub const BATTERY_PERIODS: f64 = 2.0;

/// `n` identical 1x desktops.
pub fn identical(n: usize) -> Vec<SimWorker> {
    (0..n)
        .map(|_| SimWorker {
            speed: 1.0,
            watts: CLASSES[2].watts,
            battery: None,
            power_changes: Vec::new(),
            fails_at: None,
        })
        .collect()
}

/// `n` workers cycling through [`CLASSES`] (speeds 0.25x to 4x). The laptops of every
/// other cycle of five (a quarter of 16 workers, a fifth of 1,000) go on battery for the
/// middle of the run (from 30% to 70% of `duration_ms`); one worker fails at 50%.
pub fn heterogeneous(n: usize, duration_ms: f64) -> Vec<SimWorker> {
    let battery_s = duration_ms * 0.4 / 1000.0;
    (0..n)
        .map(|i| {
            let class = CLASSES[i % CLASSES.len()];
            let unplugged = class.laptop && (i / CLASSES.len()).is_multiple_of(2);
            let capacity_j = class.watts.busy * battery_s * BATTERY_PERIODS;
            SimWorker {
                speed: class.speed,
                watts: class.watts,
                battery: class.laptop.then_some(Battery {
                    capacity_j,
                    charge_j: capacity_j * BATTERY_START_PERCENT / 100.0,
                }),
                power_changes: if unplugged {
                    vec![
                        (duration_ms * 0.3, PowerSource::Battery),
                        (duration_ms * 0.7, PowerSource::Mains),
                    ]
                } else {
                    Vec::new()
                },
                fails_at: (i == n / 2).then_some(duration_ms * 0.5),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn energy_per_inference_is_not_in_the_order_of_speed() {
        let joules: Vec<f64> = CLASSES
            .iter()
            .map(|c| c.watts.joules_per_inference(10.0 / c.speed))
            .collect();
        let fastest = joules[4];
        let most_frugal = joules.iter().copied().fold(f64::INFINITY, f64::min);
        assert!(most_frugal < fastest, "{joules:?}");
        assert!(
            joules[0] > joules[2],
            "the old office PC wastes most: {joules:?}"
        );
    }

    #[test]
    fn a_quarter_of_sixteen_go_on_battery_and_only_laptops() {
        let fleet = heterogeneous(16, 1_000.0);
        let unplugged: Vec<&SimWorker> = fleet
            .iter()
            .filter(|w| !w.power_changes.is_empty())
            .collect();
        assert_eq!(unplugged.len(), 4);
        assert!(unplugged.iter().all(|w| w.battery.is_some()));
        assert_eq!(fleet.iter().filter(|w| w.fails_at.is_some()).count(), 1);
    }
}
