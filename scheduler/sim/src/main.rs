//! `localml-sim`: compares balancing policies and localml's profiles (the real framework
//! and plugins) on simulated fleets. See docs/benchmarks.md for the figures.
//!
//! Run: `cargo run --release -p localml-sim [-- --requests N] [--workers 16,1000]`

use std::sync::Arc;

use localml_framework::profile::{builtin, Profiles};
use localml_sim::{self as sim, Policy, SimWorker};

/// Mean service time at speed 1x, in milliseconds.
const SERVICE_MS: f64 = 10.0;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn main() {
    let requests: usize = arg("--requests")
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let sizes: Vec<usize> = arg("--workers")
        .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![16, 1000]);
    let seed = 42;

    // Sanity check: identical workers, power of two choices, 80% load.
    let sanity = sim::run(
        &sim::identical(1000),
        SERVICE_MS,
        0.8,
        requests,
        &Policy::P2cInFlight,
        seed,
    );
    println!(
        "sanity: 1000 identical workers, p2c in-flight, 80% load: mean time in system {:.3}x service time (theory: 1.947x)",
        sanity.mean_ms / SERVICE_MS
    );
    println!();

    let profiles = match Profiles::build(&builtin()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("localml-sim: {e}");
            std::process::exit(1);
        }
    };
    let mut policies = vec![
        Policy::RoundRobin,
        Policy::Random,
        Policy::LeastInFlight,
        Policy::P2cInFlight,
        Policy::P2cPeakEwma,
    ];
    for name in ["default", "energy-saver", "latency"] {
        if let Some(p) = profiles.get(name) {
            policies.push(Policy::Profile(Arc::clone(p)));
        }
    }

    println!("heterogeneous fleets: speeds 0.25x-4x, half the laptops on battery from 30% to 70% of the run, one failure at 50%;");
    println!(
        "service time {SERVICE_MS} ms at 1x, {requests} Poisson arrivals per row, latencies in ms"
    );
    println!("watts (idle/busy) and joules per inference by class:");
    for c in sim::fleet::CLASSES {
        println!(
            "  {:.2}x {}: {:.0}/{:.0} W, {:.3} J",
            c.speed,
            c.name,
            c.watts.idle,
            c.watts.busy,
            c.watts.joules_per_inference(SERVICE_MS / c.speed)
        );
    }
    println!();
    println!("| workers | load | policy | p50 | p99 | p99.9 | failed | on battery | total kJ | above idle kJ | battery kJ | batteries < 15% |");
    println!("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut verdicts = Vec::new();
    let mut energy = Vec::new();
    for &n in &sizes {
        for load in [0.3, 0.5, 0.8, 0.95] {
            let capacity_per_ms = sim::heterogeneous(n, 1.0)
                .iter()
                .map(|w: &SimWorker| w.speed)
                .sum::<f64>()
                / SERVICE_MS;
            let duration = requests as f64 / (capacity_per_ms * load);
            let fleet = sim::heterogeneous(n, duration);
            let mut p99 = std::collections::HashMap::new();
            let mut reports = std::collections::HashMap::new();
            for policy in &policies {
                let started = std::time::Instant::now();
                let r = sim::run(&fleet, SERVICE_MS, load, requests, policy, seed);
                println!(
                    "| {n} | {:.0}% | {} | {:.1} | {:.1} | {:.1} | {} | {:.1}% | {:.1} | {:.1} | {:.2} | {} |",
                    load * 100.0,
                    policy.name(),
                    r.p50_ms,
                    r.p99_ms,
                    r.p999_ms,
                    r.failed,
                    r.share_battery * 100.0,
                    r.total_j / 1000.0,
                    r.above_idle_j / 1000.0,
                    r.battery_j / 1000.0,
                    r.batteries_under_critical
                );
                eprintln!(
                    "  ({} took {:.1}s)",
                    policy.name(),
                    started.elapsed().as_secs_f64()
                );
                p99.insert(policy.name(), r.p99_ms);
                reports.insert(policy.name(), r);
            }
            if let (Some(saver), Some(default)) = (
                reports.get("localml energy-saver"),
                reports.get("localml default"),
            ) {
                energy.push(format!(
                    "{n} workers, {:.0}% load: energy-saver / default: total J {:.3}x, above idle {:.3}x, battery J {:.3}x, p99 {:.3}x",
                    load * 100.0,
                    saver.total_j / default.total_j,
                    saver.above_idle_j / default.above_idle_j,
                    saver.battery_j / default.battery_j,
                    saver.p99_ms / default.p99_ms
                ));
            }
            if load == 0.95 {
                let default = p99["localml default"];
                verdicts.push(format!(
                    "{n} workers, 95% load: default p99 = {:.3}x round-robin (target <= 0.2), {:.3}x p2c peak-EWMA (target <= 0.7)",
                    default / p99["round-robin"],
                    default / p99["p2c peak-EWMA"]
                ));
            }
        }
    }
    println!();
    for v in verdicts {
        println!("{v}");
    }
    println!();
    for e in energy {
        println!("{e}");
    }
}
