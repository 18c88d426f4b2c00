//! PowerState: a worker on battery under the critical charge gets no new work; otherwise
//! mains (or unknown: most desktops report no supply) scores over UPS over battery, and a
//! battery scores by its charge. Hysteresis: a worse power source applies at once, a
//! better one only after it has held for `recovery_ms`, so a flapping UPS does not make
//! traffic swing back and forth. The registry records each worker's previous source and
//! when it changed, so the plugin keeps no state of its own.

use serde::Deserialize;

use crate::contracts::*;
use crate::registry::{Built, PluginError};

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
    /// Power sources that make a worker unusable, e.g. `[battery]` for a site that never
    /// wants laptops to drain: such workers are filtered out.
    pub unusable_sources: Vec<UnusableSource>,
}

/// A power source name in `unusable_sources`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnusableSource {
    Ups,
    Battery,
    Unknown,
}

impl UnusableSource {
    fn matches(self, source: PowerSource) -> bool {
        matches!(
            (self, source),
            (UnusableSource::Ups, PowerSource::Ups)
                | (UnusableSource::Battery, PowerSource::Battery)
                | (UnusableSource::Unknown, PowerSource::Unknown)
        )
    }
}

impl Default for Args {
    fn default() -> Self {
        Args {
            critical_battery_percent: 15.0,
            recovery_ms: 2_000,
            ups_score: 50,
            battery_score: 10,
            unusable_sources: Vec::new(),
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

pub struct PowerState {
    args: Args,
}

impl Plugin for PowerState {
    fn name(&self) -> &'static str {
        NAME
    }
}

impl PowerState {
    pub fn new(args: Args) -> PowerState {
        PowerState { args }
    }

    /// The source to score `worker` as at `now_ms`: a change for the better counts only
    /// once it has held for `recovery_ms`; a change for the worse counts at once.
    fn effective(&self, worker: &WorkerInfo, now_ms: u64) -> PowerSource {
        let recent = now_ms.saturating_sub(worker.power_changed_ms) < self.args.recovery_ms;
        if recent && rank(worker.power) > rank(worker.previous_power) {
            worker.previous_power
        } else {
            worker.power
        }
    }
}

impl Filter for PowerState {
    fn filter(&self, _: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> Status {
        if request.mains_only && !matches!(worker.power, PowerSource::Mains | PowerSource::Unknown)
        {
            return Status::unschedulable(
                format!("on {:?} power; the request needs mains power", worker.power)
                    .to_lowercase(),
            );
        }
        if let Some(u) = self
            .args
            .unusable_sources
            .iter()
            .find(|u| u.matches(worker.power))
        {
            return Status::unschedulable(
                format!("power source {u:?} is marked unusable").to_lowercase(),
            );
        }
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
        let now = state.now_ms;
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

pub fn build(value: &serde_yaml::Value) -> Result<Built, PluginError> {
    let args: Args = crate::plugins::args(value)?;
    if !(0.0..=100.0).contains(&args.critical_battery_percent) {
        return Err(PluginError::Args(format!(
            "critical_battery_percent must be in [0, 100], got {}",
            args.critical_battery_percent
        )));
    }
    Ok(Built::filter_and_score(PowerState::new(args)))
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
                (
                    "mains_only on mains",
                    mains_only(),
                    on(PowerSource::Mains, None),
                    Code::Success,
                ),
                (
                    "mains_only on a desktop without a supply",
                    mains_only(),
                    on(PowerSource::Unknown, None),
                    Code::Success,
                ),
                (
                    "mains_only on ups",
                    mains_only(),
                    on(PowerSource::Ups, Some(90.0)),
                    Code::Unschedulable,
                ),
                (
                    "mains_only on a full battery",
                    mains_only(),
                    on(PowerSource::Battery, Some(100.0)),
                    Code::Unschedulable,
                ),
            ],
        );
    }

    fn mains_only() -> RequestInfo {
        RequestInfo {
            mains_only: true,
            ..request()
        }
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
            s.now_ms = ms;
            s
        };
        // (case, now, reported, previous, changed at, expected score)
        let cases = [
            (
                "steady mains",
                5_000,
                PowerSource::Mains,
                PowerSource::Mains,
                0,
                100,
            ),
            (
                "grid just failed: at once",
                100,
                PowerSource::Ups,
                PowerSource::Mains,
                100,
                50,
            ),
            (
                "mains back 100 ms ago: not yet",
                300,
                PowerSource::Mains,
                PowerSource::Ups,
                200,
                50,
            ),
            (
                "mains back 1.9 s ago: not yet",
                2_100,
                PowerSource::Mains,
                PowerSource::Ups,
                200,
                50,
            ),
            (
                "mains back 2 s ago",
                2_200,
                PowerSource::Mains,
                PowerSource::Ups,
                200,
                100,
            ),
            (
                "battery to ups: not yet",
                300,
                PowerSource::Ups,
                PowerSource::Battery,
                200,
                5,
            ),
        ];
        for (name, now, power, previous, changed, expected) in cases {
            let mut w = on(power, Some(50.0));
            w.previous_power = previous;
            w.power_changed_ms = changed;
            assert_eq!(plugin.score(&at(now), &request(), &w), expected, "{name}");
        }
    }

    #[test]
    fn unusable_sources_are_filtered() {
        let plugin = PowerState::new(Args {
            unusable_sources: vec![UnusableSource::Battery, UnusableSource::Ups],
            ..Args::default()
        });
        check_filter(
            &plugin,
            vec![
                (
                    "mains",
                    request(),
                    on(PowerSource::Mains, None),
                    Code::Success,
                ),
                (
                    "full battery",
                    request(),
                    on(PowerSource::Battery, Some(100.0)),
                    Code::Unschedulable,
                ),
                (
                    "ups",
                    request(),
                    on(PowerSource::Ups, Some(100.0)),
                    Code::Unschedulable,
                ),
                (
                    "unknown",
                    request(),
                    on(PowerSource::Unknown, None),
                    Code::Success,
                ),
            ],
        );
        let parsed = build(&serde_yaml::from_str("{unusable_sources: [battery]}").expect("yaml"));
        assert!(parsed.is_ok());
        let bad = build(&serde_yaml::from_str("{unusable_sources: [solar]}").expect("yaml"));
        assert!(bad.err().is_some_and(|e| e.to_string().contains("solar")));
    }
}
