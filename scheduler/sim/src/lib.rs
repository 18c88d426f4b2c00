//! localml-sim: a discrete-event simulator that drives the real scheduling framework and plugins (the
//! same code the scheduler runs) against simulated workers, and compares them with the
//! standard load-balancing policies. Deterministic for a seed.
//!
//! Model: open-loop Poisson arrivals; each worker serves one request at a time (FIFO
//! queue) with exponential service times of mean `service_ms / speed`; workers may switch
//! to battery and back, or fail (their queued requests fail, and only policies that watch
//! worker health stop sending to them, after the grace period). Baselines are bare
//! policies: a request sent to a failed worker fails. localml's profiles run as the
//! scheduler's dispatcher does: a failed dispatch marks the worker unreachable and the
//! cycle runs again without it (up to 3 attempts).
//!
//! Energy: each worker draws idle watts while up and busy watts while it serves; a
//! laptop on battery drains it, and reports its falling charge at once (no heartbeat
//! delay), so PowerState sees a battery under its critical level. Each worker reports the
//! model's joules per inference (busy minus idle watts x mean service time), which
//! LeastEnergy scores. The run ends with its last event; a failed worker draws nothing
//! after it fails.
//!
//! # Layout
//! - `energy`: watts, batteries and the [`energy::Meter`] that adds up a worker's joules.
//! - `fleet`: the simulated workers ([`SimWorker`]), the PC classes and their watts, the
//!   fleets ([`heterogeneous`], [`identical`]).
//! - this file: the baseline policies ([`Policy`]) and the event loop ([`run`]) with its
//!   [`Report`].
//! - `main.rs`: the `localml-sim` binary, the tables in docs/benchmarks.md.

pub mod energy;
pub mod fleet;

pub use fleet::{heterogeneous, identical, SimWorker};

use std::cmp::Ordering as CmpOrdering;
use std::collections::{BinaryHeap, VecDeque};

use localml_framework::estimator::PeakEwma;
use localml_framework::runtime::Profile;
use localml_framework::{
    CycleState, ModelOnWorker, PowerSource, RequestInfo, Snapshot, WorkerInfo,
};

use crate::energy::Meter;

/// The balancing policies compared.
#[derive(Clone)]
pub enum Policy {
    RoundRobin,
    Random,
    LeastInFlight,
    /// Power of two choices on in-flight count.
    P2cInFlight,
    /// Power of two choices on peak-EWMA latency x (in-flight + 1), as tower and linkerd.
    P2cPeakEwma,
    /// A localml profile, run through the real framework.
    Profile(std::sync::Arc<Profile>),
}

impl Policy {
    pub fn name(&self) -> String {
        match self {
            Policy::RoundRobin => "round-robin".into(),
            Policy::Random => "random".into(),
            Policy::LeastInFlight => "least-in-flight".into(),
            Policy::P2cInFlight => "p2c in-flight".into(),
            Policy::P2cPeakEwma => "p2c peak-EWMA".into(),
            Policy::Profile(p) => format!("localml {}", p.name),
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub completed: usize,
    pub failed: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    /// Share of dispatched requests by the worker's power source at dispatch time:
    /// mains (or unknown), ups, battery.
    pub share_mains: f64,
    pub share_ups: f64,
    pub share_battery: f64,
    /// Energy all workers drew, idle and busy, from the start to the last event, in joules.
    pub total_j: f64,
    /// The part of it above idle: the inferences' marginal energy.
    pub above_idle_j: f64,
    /// Energy drawn from batteries.
    pub battery_j: f64,
    /// Workers whose battery ended the run under [`CRITICAL_PERCENT`].
    pub batteries_under_critical: usize,
}

/// The shipped profiles' `critical_battery_percent`.
pub const CRITICAL_PERCENT: f32 = 15.0;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Arrival,
    Completion(usize),
    Power(usize, usize),
    Failure(usize),
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Scheduled {
    at: f64,
    seq: u64,
    event: Event,
}

impl Eq for Scheduled {}

impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Earliest first in a max-heap.
        other.at.total_cmp(&self.at).then(other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

struct State {
    queue: VecDeque<f64>,
    /// Arrival time of the request in service.
    serving: Option<f64>,
    alive: bool,
    /// When the scheduler would notice a failure (after the grace period).
    detected_dead_at: Option<f64>,
    power: PowerSource,
    previous_power: PowerSource,
    power_changed_ms: u64,
    meter: Meter,
    ewma: PeakEwma,
}

impl State {
    fn outstanding(&self) -> usize {
        self.queue.len() + usize::from(self.serving.is_some())
    }
}

/// A policy's answer for one request.
enum Pick {
    To(usize),
    /// Every feasible worker is at its concurrency limit: wait (localml's queue).
    Busy,
    Nowhere,
}

impl From<Option<usize>> for Pick {
    fn from(choice: Option<usize>) -> Pick {
        choice.map_or(Pick::Nowhere, Pick::To)
    }
}

/// Grace period before a silent worker is NotReady, as in the scheduler's default.
pub const GRACE_MS: f64 = 2_500.0;

fn exp_sample(rng: &mut fastrand::Rng, mean: f64) -> f64 {
    -mean * (1.0 - rng.f64()).ln()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Runs `requests` arrivals at `load` (share of total capacity) through `policy`.
pub fn run(
    workers: &[SimWorker],
    service_ms: f64,
    load: f64,
    requests: usize,
    policy: &Policy,
    seed: u64,
) -> Report {
    let mut rng = fastrand::Rng::with_seed(seed);
    let capacity_per_ms: f64 = workers.iter().map(|w| w.speed / service_ms).sum();
    let mean_gap = 1.0 / (capacity_per_ms * load);
    let mut events = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |events: &mut BinaryHeap<Scheduled>, at: f64, event: Event| {
        seq += 1;
        events.push(Scheduled { at, seq, event });
    };
    let mut states: Vec<State> = workers
        .iter()
        .map(|w| State {
            queue: VecDeque::new(),
            serving: None,
            alive: true,
            detected_dead_at: None,
            power: PowerSource::Mains,
            previous_power: PowerSource::Mains,
            power_changed_ms: 0,
            meter: Meter::new(w.watts, w.battery),
            ewma: PeakEwma::default(),
        })
        .collect();
    for (i, w) in workers.iter().enumerate() {
        for (k, (at, _)) in w.power_changes.iter().enumerate() {
            push(&mut events, *at, Event::Power(i, k));
        }
        if let Some(at) = w.fails_at {
            push(&mut events, at, Event::Failure(i));
        }
    }
    push(&mut events, exp_sample(&mut rng, mean_gap), Event::Arrival);

    // The framework's snapshot, kept up to date in place.
    let mut snapshot = Snapshot {
        workers: workers
            .iter()
            .enumerate()
            .map(|(index, w)| {
                let mean_ms = service_ms / w.speed;
                let model = ModelOnWorker {
                    // What the worker's own latency EWMA converges to.
                    reported_latency_ms: mean_ms,
                    // What the worker reports from its watts: the model's figure.
                    joules_per_inference: w.watts.joules_per_inference(mean_ms),
                    ..ModelOnWorker::new("m", "1")
                };
                WorkerInfo::new(index, format!("sim-{index}"), model)
            })
            .collect(),
        now_ms: 0,
        queued: 0,
    };
    let request = RequestInfo {
        model: "m".into(),
        version: "1".into(),
        ..Default::default()
    };

    let mut latencies = Vec::with_capacity(requests);
    let mut failed = 0usize;
    let mut arrived = 0usize;
    let mut by_power = [0usize; 3];
    let mut rotation = 0usize;
    // Requests waiting for a worker (localml's queue; baselines never wait).
    let mut waiting: VecDeque<f64> = VecDeque::new();
    let mut end_ms = 0.0f64;
    while let Some(Scheduled { at: now, event, .. }) = events.pop() {
        end_ms = now;
        match event {
            Event::Arrival => {
                arrived += 1;
                if arrived < requests {
                    push(
                        &mut events,
                        now + exp_sample(&mut rng, mean_gap),
                        Event::Arrival,
                    );
                }
                waiting.push_back(now);
            }
            Event::Completion(i) => {
                let s = &mut states[i];
                if !s.alive {
                    continue;
                }
                if let Some(arrived_at) = s.serving.take() {
                    let latency = now - arrived_at;
                    latencies.push(latency);
                    s.ewma.observe(latency, now as u64);
                }
                if let Some(next) = s.queue.pop_front() {
                    s.serving = Some(next);
                    let done = now + exp_sample(&mut rng, service_ms / workers[i].speed);
                    push(&mut events, done, Event::Completion(i));
                } else {
                    s.meter.set_busy(now, false);
                }
            }
            Event::Power(i, k) => {
                let (_, source) = workers[i].power_changes[k];
                let s = &mut states[i];
                s.previous_power = s.power;
                s.power_changed_ms = now as u64;
                s.power = source;
                s.meter.set_on_battery(now, source == PowerSource::Battery);
            }
            Event::Failure(i) => {
                let s = &mut states[i];
                s.alive = false;
                s.meter.switch_off(now);
                s.detected_dead_at = Some(now + GRACE_MS);
                failed += s.queue.len() + usize::from(s.serving.is_some());
                s.queue.clear();
                s.serving = None;
            }
        }
        // Place waiting requests in arrival order until the cluster is busy (localml's
        // queue) or none is left.
        while let Some(&arrival) = waiting.front() {
            // What the balancer can see: a dead worker looks alive until detected.
            let visible = |s: &State| s.detected_dead_at.is_none_or(|t| now < t);
            let n = states.len();
            rotation += 1;
            let pick: Pick = match policy {
                Policy::RoundRobin => (0..n)
                    .map(|k| (rotation + k) % n)
                    .find(|&i| visible(&states[i]))
                    .into(),
                Policy::Random => {
                    let live: Vec<usize> = (0..n).filter(|&i| visible(&states[i])).collect();
                    (!live.is_empty())
                        .then(|| live[rng.usize(..live.len())])
                        .into()
                }
                Policy::LeastInFlight => (0..n)
                    .map(|k| (rotation + k) % n)
                    .filter(|&i| visible(&states[i]))
                    .min_by_key(|&i| states[i].outstanding())
                    .into(),
                Policy::P2cInFlight | Policy::P2cPeakEwma => {
                    let live: Vec<usize> = (0..n).filter(|&i| visible(&states[i])).collect();
                    if live.is_empty() {
                        Pick::Nowhere
                    } else {
                        let a = live[rng.usize(..live.len())];
                        let b = live[rng.usize(..live.len())];
                        let cost = |i: usize| {
                            let s = &states[i];
                            if matches!(policy, Policy::P2cInFlight) {
                                s.outstanding() as f64
                            } else {
                                let est = s.ewma.estimate(now as u64).max(1e-3);
                                est * (s.outstanding() as f64 + 1.0)
                            }
                        };
                        Pick::To(if cost(a) <= cost(b) { a } else { b })
                    }
                }
                Policy::Profile(profile) => 'cycle: {
                    snapshot.now_ms = now as u64;
                    snapshot.queued = waiting.len();
                    for (w, s) in snapshot.workers.iter_mut().zip(&states) {
                        w.schedulable = visible(s);
                        if !w.schedulable {
                            w.unschedulable_reason = "NotReady".into();
                        }
                        w.power = s.power;
                        w.previous_power = s.previous_power;
                        w.power_changed_ms = s.power_changed_ms;
                        w.battery_percent = s.meter.battery_percent(now);
                        w.dispatched = s.outstanding() as u32;
                        w.peak_ewma_ms = s
                            .ewma
                            .fresh_estimate(now as u64, localml_framework::estimator::STALE_MS)
                            .unwrap_or(0.0);
                    }
                    // As the dispatcher does: a worker that fails the dispatch is marked
                    // unreachable at once and the cycle runs again without it.
                    let mut excluded = Vec::new();
                    for _ in 0..3 {
                        let mut state = CycleState::default();
                        let d = match profile
                            .schedule(&mut state, &request, &snapshot, &excluded, rotation)
                        {
                            Ok(d) => d,
                            Err(r) if localml_framework::plugins::capacity::all_busy(&r) => {
                                break 'cycle Pick::Busy
                            }
                            Err(_) => break 'cycle Pick::Nowhere,
                        };
                        if states[d.worker].alive {
                            break 'cycle Pick::To(d.worker);
                        }
                        states[d.worker].detected_dead_at = Some(now);
                        snapshot.workers[d.worker].schedulable = false;
                        excluded.push(d.worker);
                    }
                    Pick::Nowhere
                }
            };
            let i = match pick {
                Pick::To(i) => i,
                Pick::Busy => break,
                Pick::Nowhere => {
                    waiting.pop_front();
                    failed += 1;
                    continue;
                }
            };
            waiting.pop_front();
            let s = &mut states[i];
            by_power[match s.power {
                PowerSource::Mains | PowerSource::Unknown => 0,
                PowerSource::Ups => 1,
                PowerSource::Battery => 2,
            }] += 1;
            if !s.alive {
                failed += 1;
                continue;
            }
            if s.serving.is_none() {
                s.serving = Some(arrival);
                s.meter.set_busy(now, true);
                let done = now + exp_sample(&mut rng, service_ms / workers[i].speed);
                push(&mut events, done, Event::Completion(i));
            } else {
                s.queue.push_back(arrival);
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    for s in &mut states {
        s.meter.settle(end_ms);
    }
    let dispatched = by_power.iter().sum::<usize>().max(1) as f64;
    Report {
        completed: latencies.len(),
        failed,
        mean_ms: latencies.iter().sum::<f64>() / latencies.len().max(1) as f64,
        p50_ms: percentile(&latencies, 0.5),
        p99_ms: percentile(&latencies, 0.99),
        p999_ms: percentile(&latencies, 0.999),
        share_mains: by_power[0] as f64 / dispatched,
        share_ups: by_power[1] as f64 / dispatched,
        share_battery: by_power[2] as f64 / dispatched,
        total_j: states.iter().map(|s| s.meter.total_j).sum(),
        above_idle_j: states.iter().map(|s| s.meter.above_idle_j).sum(),
        battery_j: states.iter().map(|s| s.meter.battery_j).sum(),
        batteries_under_critical: states
            .iter()
            .filter(|s| {
                s.meter
                    .battery_percent(end_ms)
                    .is_some_and(|p| p < CRITICAL_PERCENT)
            })
            .count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p2c_reproduces_the_supermarket_model() {
        // Mitzenmacher: with d = 2 choices at load 0.8 the mean time in system tends to
        // sum_i 0.8^(2^i - 2) = 1.95 service times as workers grow.
        let r = run(&identical(200), 1.0, 0.8, 100_000, &Policy::P2cInFlight, 7);
        assert!((r.mean_ms - 1.95).abs() < 0.15, "mean {}", r.mean_ms);
        assert_eq!(r.failed, 0);
    }

    #[test]
    fn runs_are_deterministic_for_a_seed() {
        let a = run(&identical(8), 1.0, 0.5, 5_000, &Policy::Random, 3);
        let b = run(&identical(8), 1.0, 0.5, 5_000, &Policy::Random, 3);
        assert_eq!((a.completed, a.p99_ms), (b.completed, b.p99_ms));
    }

    #[test]
    fn failures_count_and_battery_share_is_reported() {
        let fleet = heterogeneous(8, 10_000.0);
        let r = run(&fleet, 10.0, 0.5, 5_000, &Policy::RoundRobin, 1);
        assert!(
            r.failed > 0,
            "round-robin keeps sending to the failed worker for the grace period"
        );
        // Two of eight workers on battery for 40% of the run: about 10% under round-robin.
        assert!(
            r.share_battery > 0.05 && r.share_battery < 0.2,
            "{}",
            r.share_battery
        );
    }

    fn profile(name: &str) -> Policy {
        use localml_framework::profile::{builtin, Profiles};
        let profiles = Profiles::build(&builtin()).expect("the shipped profiles build");
        Policy::Profile(std::sync::Arc::clone(
            profiles.get(name).expect("a shipped profile"),
        ))
    }

    fn worker(speed: f64, idle: f64, busy: f64) -> SimWorker {
        SimWorker {
            speed,
            watts: energy::Watts { idle, busy },
            battery: None,
            power_changes: Vec::new(),
            fails_at: None,
        }
    }

    #[test]
    fn the_run_adds_up_idle_and_inference_energy() {
        // Four 1x desktops (30 W idle, 120 W busy, 10 ms): 0.9 J an inference.
        let r = run(&identical(4), 10.0, 0.5, 20_000, &Policy::RoundRobin, 5);
        assert_eq!(r.completed, 20_000);
        let per_inference = r.above_idle_j / r.completed as f64;
        assert!((per_inference - 0.9).abs() < 0.03, "{per_inference} J");
        // The rest is idle draw: 4 x 30 W over the run (20,000 requests at 0.2 a ms:
        // about 100 s).
        let idle_s = (r.total_j - r.above_idle_j) / (4.0 * 30.0);
        assert!((idle_s - 100.0).abs() < 3.0, "{idle_s} s");
        assert_eq!((r.battery_j, r.batteries_under_critical), (0.0, 0));
    }

    #[test]
    fn energy_saver_spends_fewer_joules_than_default_where_efficiency_differs() {
        // Four fast, hungry workers (2x, 0.6 J an inference) and four frugal ones (1x,
        // 0.1 J): default goes for speed, energy-saver for joules within its wait budget.
        let mut fleet: Vec<SimWorker> = (0..4).map(|_| worker(2.0, 50.0, 170.0)).collect();
        fleet.extend((0..4).map(|_| worker(1.0, 10.0, 20.0)));
        let default = run(&fleet, 10.0, 0.3, 20_000, &profile("default"), 9);
        let saver = run(&fleet, 10.0, 0.3, 20_000, &profile("energy-saver"), 9);
        assert!(
            saver.above_idle_j < 0.8 * default.above_idle_j,
            "energy-saver {:.0} J above idle, default {:.0} J",
            saver.above_idle_j,
            default.above_idle_j
        );
        assert!(saver.total_j < default.total_j);
    }

    #[test]
    fn a_draining_battery_goes_under_critical_and_power_state_turns_it_away() {
        // A fast laptop on battery from the start next to a slow desktop, with the
        // `latency` profile (battery competes on score). 20,000 requests at 30% of 5
        // requests a ms take about 133 s; the laptop busy about a third of it draws some
        // 1.3 kJ.
        let laptop = |charge_j: f64| SimWorker {
            battery: Some(energy::Battery {
                capacity_j: 10_000.0,
                charge_j,
            }),
            power_changes: vec![(0.0, PowerSource::Battery)],
            ..worker(4.0, 5.0, 30.0)
        };
        let desktop = worker(1.0, 30.0, 120.0);
        let latency = profile("latency");
        // From 60 % it ends well above 15 %.
        let full = run(
            &[laptop(6_000.0), desktop.clone()],
            10.0,
            0.3,
            20_000,
            &latency,
            2,
        );
        assert_eq!(full.batteries_under_critical, 0);
        assert!(full.share_battery > 0.7, "{}", full.share_battery);
        assert!(full.battery_j > 500.0, "{}", full.battery_j);
        // From 20 % it crosses 15 % (500 J) early and PowerState filters it from then on.
        let low = run(&[laptop(2_000.0), desktop], 10.0, 0.3, 20_000, &latency, 2);
        assert_eq!(low.batteries_under_critical, 1);
        assert!(
            low.share_battery < 0.5 * full.share_battery,
            "{} against {}",
            low.share_battery,
            full.share_battery
        );
    }
}
