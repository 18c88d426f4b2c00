//! One scheduling decision (the default profile's full cycle over a snapshot) with 16,
//! 1,000 and 10,000 workers, against a baseline measured in the same run: a plain
//! least-in-flight scan over the same snapshot. Prints the ratio.
//!
//! Run: `cargo bench -p localml-scheduler --bench decision`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use localml_framework::profile::{builtin, Profiles};
use localml_framework::{
    CycleState, ModelOnWorker, PowerSource, RequestInfo, Snapshot, WorkerInfo,
};

fn snapshot(n: usize) -> Snapshot {
    let mut rng = fastrand::Rng::with_seed(1);
    Snapshot {
        workers: (0..n)
            .map(|index| WorkerInfo {
                index,
                name: format!("worker-{index}"),
                schedulable: rng.u8(..100) > 2,
                unschedulable_reason: "NotReady".into(),
                labels: [("site".to_string(), format!("site-{}", index % 4))]
                    .into_iter()
                    .collect(),
                ram_total_bytes: 16 << 30,
                ram_free_bytes: rng.u64(1 << 30..12 << 30),
                gpu_free_bytes: 0,
                power: if index % 5 == 0 {
                    PowerSource::Battery
                } else {
                    PowerSource::Mains
                },
                previous_power: PowerSource::Mains,
                power_changed_ms: 0,
                battery_percent: Some(rng.f32() * 100.0),
                low_battery: false,
                battery_runtime_s: None,
                models: vec![ModelOnWorker {
                    name: "m".into(),
                    version: "1".into(),
                    on_gpu: index % 7 == 0,
                    memory_bytes: 1 << 20,
                    queue_depth: rng.u32(..4),
                    in_flight: rng.u32(..2),
                    instances: 2,
                    batch: 1,
                    reported_latency_ms: 1.0 + rng.f64() * 9.0,
                    joules_per_inference: 0.5 + rng.f64(),
                }],
                dispatched: rng.u32(..8),
                peak_ewma_ms: 1.0 + rng.f64() * 20.0,
            })
            .collect(),
        now_ms: 10_000,
        queued: 0,
    }
}

fn least_in_flight(s: &Snapshot) -> Option<usize> {
    s.workers
        .iter()
        .filter(|w| w.schedulable)
        .min_by_key(|w| w.dispatched)
        .map(|w| w.index)
}

/// Mean time per call over about `budget`.
fn time_per_call(budget: Duration, mut f: impl FnMut()) -> Duration {
    let mut calls = 0u32;
    let start = Instant::now();
    while start.elapsed() < budget {
        for _ in 0..64 {
            f();
        }
        calls += 64;
    }
    start.elapsed() / calls
}

fn main() {
    let profiles = Profiles::build(&builtin()).expect("builtin profiles");
    let profile = profiles.get("default").expect("default profile").clone();
    let request = RequestInfo {
        model: "m".into(),
        version: "1".into(),
        ..Default::default()
    };
    let mut criterion = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3));
    let mut group = criterion.benchmark_group("decision");
    let sizes = [16usize, 1_000, 10_000];
    for &n in &sizes {
        let snap = snapshot(n);
        let mut rotation = 0usize;
        group.bench_with_input(BenchmarkId::new("default-profile", n), &snap, |b, snap| {
            b.iter(|| {
                rotation += 1;
                let mut state = CycleState::default();
                black_box(
                    profile
                        .schedule(&mut state, &request, snap, &[], rotation)
                        .ok(),
                )
            })
        });
        group.bench_with_input(
            BenchmarkId::new("least-in-flight-baseline", n),
            &snap,
            |b, snap| b.iter(|| black_box(least_in_flight(snap))),
        );
    }
    group.finish();
    criterion.final_summary();

    // The same profile scoring up to 32 feasible workers instead of the default 16.
    let mut wide = (*profile).clone();
    wide.max_feasible = 32;
    println!();
    println!("| workers | default profile (16 feasible) | with 32 feasible | least-in-flight scan | ratio (16) |");
    println!("|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let snap = snapshot(n);
        let mut rotation = 0usize;
        let framework = time_per_call(Duration::from_secs(1), || {
            rotation += 1;
            let mut state = CycleState::default();
            black_box(
                profile
                    .schedule(&mut state, &request, &snap, &[], rotation)
                    .ok(),
            );
        });
        let wide_time = time_per_call(Duration::from_secs(1), || {
            rotation += 1;
            let mut state = CycleState::default();
            black_box(
                wide.schedule(&mut state, &request, &snap, &[], rotation)
                    .ok(),
            );
        });
        let baseline = time_per_call(Duration::from_secs(1), || {
            black_box(least_in_flight(&snap));
        });
        println!(
            "| {n} | {:.2} us | {:.2} us | {:.3} us | {:.1}x |",
            framework.as_secs_f64() * 1e6,
            wide_time.as_secs_f64() * 1e6,
            baseline.as_secs_f64() * 1e6,
            framework.as_secs_f64() / baseline.as_secs_f64().max(1e-12)
        );
    }
}
