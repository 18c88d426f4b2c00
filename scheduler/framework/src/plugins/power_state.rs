//! PowerState: a worker on battery under the critical charge gets no new work; with a
//! `battery_wait_budget_ms`, a worker on battery is overflow capacity: it gets a request
//! only when no worker off battery that could serve it would start it within the budget
//! (PreFilter looks over the snapshot, Filter applies it). Otherwise mains (or unknown:
//! most desktops report no supply) scores over UPS over battery, and a battery scores by
//! its charge. Hysteresis: a worse power source applies at once, a
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
    /// A worker on battery with less time left than this (when its battery or UPS says)
    /// is filtered out: it finishes what it has.
    pub min_runtime_minutes: f64,
    /// How long a better power source must hold before the worker scores as such.
    pub recovery_ms: u64,
    /// Score of a worker running on a UPS (mains and unknown: 100).
    pub ups_score: i64,
    /// Score of a worker on a full battery (scaled down with its charge).
    pub battery_score: i64,
    /// Power sources that make a worker unusable, e.g. `[battery]` for a site that never
    /// wants laptops to drain: such workers are filtered out.
    pub unusable_sources: Vec<UnusableSource>,
    /// Battery is overflow capacity: a worker on battery gets a request only when no
    /// worker off battery that could serve it is expected to start it within this many
    /// milliseconds (its requests ahead times its latency). Absent: battery workers
    /// compete on score alone (the `latency` profile).
    pub battery_wait_budget_ms: Option<f64>,
}

/// The start of the reason a worker on stored power is turned away.
const RESTS: &str = "on battery, resting";

/// What PreFilter found for this cycle: a worker off battery that starts the request
/// within the wait budget, so workers on battery rest.
#[derive(Debug, Clone, PartialEq)]
pub struct BatteryRests {
    /// Why workers on stored power are turned away this cycle, naming a worker that
    /// would start the request within the budget and when (written once per cycle, not
    /// once per rejected worker).
    pub reason: String,
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
            min_runtime_minutes: 5.0,
            recovery_ms: 2_000,
            ups_score: 50,
            battery_score: 10,
            unusable_sources: Vec::new(),
            battery_wait_budget_ms: None,
        }
    }
}

/// Running on stored energy: a battery, or a UPS that lost mains (what sysfs and the
/// `ups` override report as `Ups`). Such workers are overflow capacity.
fn on_stored_power(source: PowerSource) -> bool {
    matches!(source, PowerSource::Battery | PowerSource::Ups)
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

/// Why `worker` cannot run a request that needs mains and `min` percent of charge
/// (`localml.min_battery`), if it cannot.
fn below_min_battery(worker: &WorkerInfo, min: f32) -> Option<String> {
    if !matches!(worker.power, PowerSource::Mains | PowerSource::Unknown) {
        return Some(
            format!(
                "on {:?} power; the request waits for mains and {min}% charge",
                worker.power
            )
            .to_lowercase(),
        );
    }
    match worker.battery_percent {
        Some(p) if p < min => Some(format!(
            "on mains, battery at {p:.0}%; the request waits for {min}%"
        )),
        _ => None,
    }
}

impl PowerState {
    /// Whether `worker` (not on battery) could take `request` as far as the other shipped
    /// filters go: schedulable, labels, provider, memory, power rules. Capacity is left
    /// out on purpose: a busy worker counts, with the wait its queue implies.
    fn could_serve(&self, request: &RequestInfo, worker: &WorkerInfo) -> bool {
        worker.schedulable
            && !worker.low_battery
            && worker.model(request).is_some()
            && worker.selector_mismatch(request).is_none()
            && worker.provider_mismatch(request).is_none()
            && worker.free_ram_percent() >= MEMORY_PRESSURE_PERCENT
            && !self
                .args
                .unusable_sources
                .iter()
                .any(|u| u.matches(worker.power))
            && !(request.mains_only && worker.power == PowerSource::Ups)
            && request
                .min_battery_percent
                .is_none_or(|min| below_min_battery(worker, min).is_none())
    }
}

impl PreFilter for PowerState {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        request: &RequestInfo,
        snapshot: &Snapshot,
    ) -> Status {
        let Some(budget) = self.args.battery_wait_budget_ms else {
            return Status::success();
        };
        // Hysteresis as in scoring: a worker that just came back to mains still counts as
        // on stored power until the better source has held for `recovery_ms`.
        let now = snapshot.now_ms;
        let stored = |w: &WorkerInfo| on_stored_power(self.effective(w, now));
        if !snapshot.workers.iter().any(stored) {
            return Status::success();
        }
        let off_battery = || {
            snapshot
                .workers
                .iter()
                .filter(|w| !stored(w) && self.could_serve(request, w))
        };
        // Requests queued in the scheduler start first, spread over these workers'
        // sessions. (Only then is a full scan needed; otherwise the first worker within
        // the budget settles it.)
        let queue_waves = if snapshot.queued == 0 {
            0.0
        } else {
            let sessions: u64 = off_battery()
                .map(|w| u64::from(w.model(request).map_or(1, |m| m.instances.max(1))))
                .sum();
            (snapshot.queued as f64 / sessions.max(1) as f64).floor()
        };
        let within_budget = off_battery()
            .map(|w| {
                let waves = w.waves_ahead(request) + queue_waves;
                (w, waves * w.latency_ms(request, DEFAULT_LATENCY_MS))
            })
            .find(|(_, start)| *start <= budget);
        if let Some((worker, start_ms)) = within_budget {
            state.write(BatteryRests {
                reason: format!(
                    "{RESTS}: {} (not on battery) can start it within {:.0} ms",
                    worker.name,
                    start_ms.ceil()
                ),
            });
        }
        Status::success()
    }
}

impl PostFilter for PowerState {
    /// Nothing fits: when workers were turned away only to rest their batteries and no
    /// worker is merely busy (Capacity: the request will wait for it), the preference
    /// gives way, so it never refuses a request that only a battery worker can take (the
    /// workers expected to start it were rejected by another filter, or already tried).
    fn post_filter(
        &self,
        state: &mut CycleState,
        _: &RequestInfo,
        rejected: &[(usize, Status)],
    ) -> Status {
        let rested = rejected
            .iter()
            .any(|(_, s)| s.plugin == NAME && s.reason.starts_with(RESTS));
        let busy = rejected
            .iter()
            .any(|(_, s)| s.plugin == crate::plugins::capacity::NAME);
        if rested && !busy && state.remove::<BatteryRests>().is_some() {
            Status::success()
        } else {
            Status::new(Code::Skip, "")
        }
    }
}

impl Filter for PowerState {
    fn filter(&self, state: &CycleState, request: &RequestInfo, worker: &WorkerInfo) -> Status {
        if request.mains_only && !matches!(worker.power, PowerSource::Mains | PowerSource::Unknown)
        {
            return Status::unschedulable(
                format!("on {:?} power; the request needs mains power", worker.power)
                    .to_lowercase(),
            );
        }
        if let Some(min) = request.min_battery_percent {
            if let Some(why) = below_min_battery(worker, min) {
                return Status::unschedulable(why);
            }
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
        if worker.low_battery {
            return Status::unschedulable("its UPS reports low battery");
        }
        if on_stored_power(self.effective(worker, state.now_ms)) {
            if let Some(rests) = state.read::<BatteryRests>() {
                return Status::unschedulable(rests.reason.clone());
            }
        }
        if worker.power == PowerSource::Battery {
            if let Some(left) = worker.battery_runtime_s {
                if f64::from(left) < self.args.min_runtime_minutes * 60.0 {
                    return Status::unschedulable(format!(
                        "on battery with {} min left, under the minimum {} min",
                        left / 60,
                        self.args.min_runtime_minutes
                    ));
                }
            }
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
    if !(args.min_runtime_minutes.is_finite() && args.min_runtime_minutes >= 0.0) {
        return Err(PluginError::Args(format!(
            "min_runtime_minutes must be a number of minutes >= 0, got {}",
            args.min_runtime_minutes
        )));
    }
    if let Some(budget) = args.battery_wait_budget_ms {
        if !budget.is_finite() || budget < 0.0 {
            return Err(PluginError::Args(format!(
                "battery_wait_budget_ms must be a number of milliseconds >= 0, got {budget}"
            )));
        }
    }
    let plugin = std::sync::Arc::new(PowerState::new(args));
    Ok(Built {
        pre_filter: Some(plugin.clone()),
        filter: Some(plugin.clone()),
        post_filter: Some(plugin.clone()),
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
                    "UPS low battery",
                    request(),
                    WorkerInfo {
                        low_battery: true,
                        ..on(PowerSource::Battery, Some(60.0))
                    },
                    Code::Unschedulable,
                ),
                (
                    "battery with 3 min left",
                    request(),
                    WorkerInfo {
                        battery_runtime_s: Some(180),
                        ..on(PowerSource::Battery, Some(60.0))
                    },
                    Code::Unschedulable,
                ),
                (
                    "battery with an hour left",
                    request(),
                    WorkerInfo {
                        battery_runtime_s: Some(3600),
                        ..on(PowerSource::Battery, Some(60.0))
                    },
                    Code::Success,
                ),
                (
                    "mains, UPS runtime short (not on battery)",
                    request(),
                    WorkerInfo {
                        battery_runtime_s: Some(60),
                        ..on(PowerSource::Mains, Some(60.0))
                    },
                    Code::Success,
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

    #[test]
    fn min_battery_waits_for_mains_and_charge() {
        let plugin = PowerState::new(Args::default());
        let needs = |min: f32| RequestInfo {
            min_battery_percent: Some(min),
            ..request()
        };
        check_filter(
            &plugin,
            vec![
                (
                    "charged on mains",
                    needs(80.0),
                    on(PowerSource::Mains, Some(90.0)),
                    Code::Success,
                ),
                (
                    "recharging",
                    needs(80.0),
                    on(PowerSource::Mains, Some(40.0)),
                    Code::Unschedulable,
                ),
                (
                    "no battery at all",
                    needs(80.0),
                    on(PowerSource::Unknown, None),
                    Code::Success,
                ),
                (
                    "on battery",
                    needs(10.0),
                    on(PowerSource::Battery, Some(100.0)),
                    Code::Unschedulable,
                ),
                (
                    "on a UPS",
                    needs(10.0),
                    on(PowerSource::Ups, Some(100.0)),
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

    /// A mains worker `mains` and a laptop on battery at 80 %, cycle run by PowerState's
    /// PreFilter then Filter on the laptop: whether the laptop may take the request.
    fn laptop_may_serve(budget: Option<f64>, request: &RequestInfo, mains: WorkerInfo) -> Status {
        laptop_may_serve_with_queue(budget, request, mains, 0)
    }

    fn laptop_may_serve_with_queue(
        budget: Option<f64>,
        request: &RequestInfo,
        mains: WorkerInfo,
        queued: usize,
    ) -> Status {
        let plugin = PowerState::new(Args {
            battery_wait_budget_ms: budget,
            ..Args::default()
        });
        let mut laptop = on(PowerSource::Battery, Some(80.0));
        laptop.index = 1;
        laptop.name = "laptop".into();
        let snapshot = Snapshot {
            workers: vec![mains, laptop.clone()],
            now_ms: 10_000,
            queued,
        };
        let mut state = CycleState::default();
        assert!(plugin
            .pre_filter(&mut state, request, &snapshot)
            .is_success());
        plugin.filter(&state, request, &laptop)
    }

    fn mains_with(outstanding: u32, latency_ms: f64) -> WorkerInfo {
        let mut w = on(PowerSource::Mains, None);
        w.name = "desktop".into();
        w.dispatched = outstanding;
        w.peak_ewma_ms = latency_ms;
        w
    }

    #[test]
    fn battery_is_overflow_capacity() {
        let budget = Some(50.0);
        let cases: Vec<(&str, Option<f64>, RequestInfo, WorkerInfo, Code)> = vec![
            (
                "idle desktop",
                budget,
                request(),
                mains_with(0, 5.0),
                Code::Unschedulable,
            ),
            // 4 requests ahead of 10 ms each: starts in 40 ms, within 50.
            (
                "busy, within budget",
                budget,
                request(),
                mains_with(4, 10.0),
                Code::Unschedulable,
            ),
            // 6 ahead of 10 ms: 60 ms, over the budget: the laptop helps.
            (
                "overloaded",
                budget,
                request(),
                mains_with(6, 10.0),
                Code::Success,
            ),
            (
                "no budget (latency profile)",
                None,
                request(),
                mains_with(0, 5.0),
                Code::Success,
            ),
            (
                "desktop cordoned",
                budget,
                request(),
                WorkerInfo {
                    schedulable: false,
                    ..mains_with(0, 5.0)
                },
                Code::Success,
            ),
            (
                "selector only the laptop matches",
                budget,
                RequestInfo {
                    selector: vec![("site".into(), "library".into())],
                    ..request()
                },
                mains_with(0, 5.0),
                Code::Success,
            ),
            (
                "desktop under memory pressure",
                budget,
                request(),
                WorkerInfo {
                    ram_free_bytes: 1 << 20,
                    ..mains_with(0, 5.0)
                },
                Code::Success,
            ),
            (
                // A UPS that lost mains is stored power too: it does not count.
                "desktop running on its UPS",
                budget,
                request(),
                WorkerInfo {
                    power: PowerSource::Ups,
                    ..mains_with(0, 5.0)
                },
                Code::Success,
            ),
            (
                // Back on mains 1 s ago, under the 2 s recovery: still counted as battery.
                "desktop just back on mains",
                budget,
                request(),
                WorkerInfo {
                    previous_power: PowerSource::Battery,
                    power_changed_ms: 9_000,
                    ..mains_with(0, 5.0)
                },
                Code::Success,
            ),
            (
                "another laptop on battery",
                budget,
                request(),
                WorkerInfo {
                    power: PowerSource::Battery,
                    ..mains_with(0, 5.0)
                },
                Code::Success,
            ),
        ];
        for (name, budget, request, mains, code) in cases {
            let status = laptop_may_serve(budget, &request, mains);
            assert_eq!(status.code, code, "{name}: {}", status.reason);
            if code == Code::Unschedulable {
                assert!(
                    status.reason.contains("desktop"),
                    "{name}: {}",
                    status.reason
                );
            }
        }
    }

    #[test]
    fn requests_queued_in_the_scheduler_count_as_waiting() {
        // 2 ahead on the desktop and 2 queued: 4 waves of 10 ms, within 50 ms.
        let status = laptop_may_serve_with_queue(Some(50.0), &request(), mains_with(2, 10.0), 2);
        assert_eq!(status.code, Code::Unschedulable, "{}", status.reason);
        // 2 ahead and 4 queued: 60 ms: the laptop takes the overflow.
        let status = laptop_may_serve_with_queue(Some(50.0), &request(), mains_with(2, 10.0), 4);
        assert_eq!(status.code, Code::Success, "{}", status.reason);
    }

    #[test]
    fn a_busy_desktop_makes_the_request_wait_rather_than_drain_the_laptop() {
        // The whole default profile: the desktop is at its Capacity limit but starts the
        // next request within the budget, so the request queues (all_busy) instead of
        // going to the laptop.
        let profiles =
            crate::profile::Profiles::build(&crate::profile::builtin()).expect("profiles");
        let profile = profiles.get("").expect("default");
        let mut desktop = mains_with(4, 1.0);
        desktop.index = 0;
        let mut laptop = on(PowerSource::Battery, Some(90.0));
        laptop.index = 1;
        laptop.name = "laptop".into();
        let snapshot = Snapshot {
            workers: vec![desktop, laptop],
            now_ms: 10_000,
            queued: 0,
        };
        let rejection = profile
            .schedule(&mut CycleState::default(), &request(), &snapshot, &[], 0)
            .expect_err("nothing free now");
        assert!(
            crate::plugins::capacity::all_busy(&rejection),
            "{}",
            rejection.message
        );
        // Under the `latency` profile the laptop takes it.
        let latency = profiles.get("latency").expect("latency profile");
        let decision = latency
            .schedule(&mut CycleState::default(), &request(), &snapshot, &[], 0)
            .expect("laptop");
        assert_eq!(decision.worker, 1);
    }

    #[test]
    fn the_preference_gives_way_when_only_the_laptop_can_serve() {
        // The desktop would start it at once but was already tried for this request (it
        // failed): the laptop takes it rather than the request being refused.
        let profiles =
            crate::profile::Profiles::build(&crate::profile::builtin()).expect("profiles");
        let profile = profiles.get("").expect("default");
        let mut laptop = on(PowerSource::Battery, Some(90.0));
        laptop.index = 1;
        laptop.name = "laptop".into();
        let snapshot = Snapshot {
            workers: vec![mains_with(0, 1.0), laptop],
            now_ms: 10_000,
            queued: 0,
        };
        let decision = profile
            .schedule(&mut CycleState::default(), &request(), &snapshot, &[0], 0)
            .expect("the laptop serves");
        assert_eq!(decision.worker, 1);
        // Not tried yet: the desktop takes it, the laptop rests.
        let decision = profile
            .schedule(&mut CycleState::default(), &request(), &snapshot, &[], 0)
            .expect("the desktop serves");
        assert_eq!(decision.worker, 0);
    }

    #[test]
    fn the_budget_must_be_a_duration() {
        for bad in ["-1", ".nan", ".inf"] {
            let yaml: serde_yaml::Value =
                serde_yaml::from_str(&format!("{{battery_wait_budget_ms: {bad}}}")).expect("yaml");
            assert!(build(&yaml).is_err(), "{bad}");
        }
        let ok: serde_yaml::Value =
            serde_yaml::from_str("{battery_wait_budget_ms: 0}").expect("yaml");
        assert!(build(&ok).is_ok());
    }
}
