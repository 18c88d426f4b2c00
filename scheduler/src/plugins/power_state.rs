//! PowerState: a worker on battery under the critical charge gets no new work; otherwise
//! mains (or unknown: most desktops report no supply) scores over UPS over battery, and a
//! battery scores by its charge. Hysteresis: a worse power source applies at once, a
//! better one only after it has held for `recovery_ms`, so a flapping UPS does not make
//! traffic swing back and forth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Deserialize;

use crate::framework::registry::Built;
use crate::framework::*;

pub const NAME: &str = "PowerState";

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Args {
    /// Battery charge under which a worker on battery is filtered out.
    pub critical_battery_percent: f32,
    /// How long a better power source must hold before the worker scores as such.
    pub recovery_ms: u64,
    /// Score of a worker running on a UPS (mains and unknown: 100).
    pub ups_score: i64,
    /// Score of a worker on a full battery (scaled down with its charge).
    pub battery_score: i64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            critical_battery_percent: 15.0,
            recovery_ms: 2_000,
            ups_score: 50,
            battery_score: 10,
        }
    }
}

fn rank(source: PowerSource) -> u8 {
    match source {
        PowerSource::Mains | PowerSource::Unknown => 2,
        PowerSource::Ups => 1,
        PowerSource::Battery => 0,
    }
}

#[derive(Debug, Clone, Copy)]
struct Track {
    /// The source the worker is scored as.
    effective: PowerSource,
    /// The better source it reports now, and since when.
    pending: Option<(PowerSource, u64)>,
}

pub struct PowerState {
    args: Args,
    tracks: Mutex<HashMap<String, Track>>,
}

impl Plugin for PowerState {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PowerState {
    pub fn new(args: Args) -> PowerState {
        PowerState {
            args,
            tracks: Mutex::new(HashMap::new()),
        }
    }

    /// The source to score `worker` as at `now_ms`, applying hysteresis.
    fn effective(&self, worker: &WorkerInfo, now_ms: u64) -> PowerSource {
        let mut tracks = self.tracks.lock().unwrap_or_else(|p| p.into_inner());
        let track = tracks.entry(worker.name.clone()).or_insert(Track {
            effective: worker.power,
            pending: None,
        });
        let reported = worker.power;
        if rank(reported) <= rank(track.effective) {
            // Same or worse: applies at once.
            track.effective = reported;
            track.pending = None;
        } else {
            match track.pending {
                Some((source, since)) if source == reported => {
                    if now_ms.saturating_sub(since) >= self.args.recovery_ms {
                        track.effective = reported;
                        track.pending = None;
                    }
                }
                _ => track.pending = Some((reported, now_ms)),
            }
        }
        track.effective
    }
}

impl Filter for PowerState {
    fn filter(&self, _: &CycleState, _: &RequestInfo, worker: &WorkerInfo) -> Status {
        if worker.power == PowerSource::Battery {
            if let Some(p) = worker.battery_percent {
                if p < self.args.critical_battery_percent {
                    return Status::unschedulable(format!(
                        "on battery at {p:.0}%, under the critical {}%",
                        self.args.critical_battery_percent
                    ));
                }
            }
        }
        Status::success()
    }
}

impl Score for PowerState {
    fn score(&self, state: &CycleState, _: &RequestInfo, worker: &WorkerInfo) -> i64 {
        let now = state.read::<CycleTime>().map(|t| t.0).unwrap_or(0);
        match self.effective(worker, now) {
            PowerSource::Mains | PowerSource::Unknown => MAX_SCORE,
            PowerSource::Ups => self.args.ups_score,
            PowerSource::Battery => {
                let charge = f64::from(worker.battery_percent.unwrap_or(50.0)) / 100.0;
                (self.args.battery_score as f64 * charge).round() as i64
            }
        }
    }
}

pub fn build(value: &serde_yaml::Value) -> Result<Built, String> {
    let args: Args = crate::plugins::args(value)?;
    if !(0.0..=100.0).contains(&args.critical_battery_percent) {
        return Err(format!(
            "critical_battery_percent must be in [0, 100], got {}",
            args.critical_battery_percent
        ));
    }
    let plugin = Arc::new(PowerState::new(args));
    Ok(Built {
        filter: Some(plugin.clone()),
        score: Some(plugin),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::testing::*;

    fn on(source: PowerSource, percent: Option<f32>) -> WorkerInfo {
        let mut w = worker(0);
        w.power = source;
        w.battery_percent = percent;
        w
    }

    #[test]
    fn filter_table() {
        let plugin = PowerState::new(Args::default());
        check_filter(
            &plugin,
            vec![
                (
                    "mains",
                    request(),
                    on(PowerSource::Mains, Some(5.0)),
                    Code::Success,
                ),
                (
                    "battery ok",
                    request(),
                    on(PowerSource::Battery, Some(60.0)),
                    Code::Success,
                ),
                (
                    "battery critical",
                    request(),
                    on(PowerSource::Battery, Some(9.0)),
                    Code::Unschedulable,
                ),
                (
                    "battery unknown charge",
                    request(),
                    on(PowerSource::Battery, None),
                    Code::Success,
                ),
                (
                    "ups",
                    request(),
                    on(PowerSource::Ups, Some(5.0)),
                    Code::Success,
                ),
            ],
        );
    }

    #[test]
    fn scores_mains_over_ups_over_battery_by_charge() {
        let s = CycleState::default();
        let score = |w: WorkerInfo| PowerState::new(Args::default()).score(&s, &request(), &w);
        assert_eq!(score(on(PowerSource::Mains, None)), 100);
        assert_eq!(score(on(PowerSource::Unknown, None)), 100);
        assert_eq!(score(on(PowerSource::Ups, Some(90.0))), 50);
        assert_eq!(score(on(PowerSource::Battery, Some(100.0))), 10);
        assert_eq!(score(on(PowerSource::Battery, Some(40.0))), 4);
    }

    #[test]
    fn worse_applies_at_once_better_after_recovery() {
        let plugin = PowerState::new(Args::default());
        let at = |ms: u64| {
            let mut s = CycleState::default();
            s.write(CycleTime(ms));
            s
        };
        let mains = on(PowerSource::Mains, None);
        let ups = on(PowerSource::Ups, Some(80.0));
        // (time, reported, expected score)
        let steps = [
            (0, &mains, 100),
            (100, &ups, 50),   // grid fails: at once
            (200, &mains, 50), // back on mains: not yet
            (300, &ups, 50),   // flaps again
            (400, &mains, 50), // recovery starts over
            (2_300, &mains, 50),
            (2_400, &mains, 100), // held 2 s
        ];
        for (t, w, expected) in steps {
            assert_eq!(plugin.score(&at(t), &request(), w), expected, "at {t} ms");
        }
    }
}
