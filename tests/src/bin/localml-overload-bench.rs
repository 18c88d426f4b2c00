//! Overload (issue #11): what clients see when more requests come than the cluster can
//! serve. Two sleep-throttled workers (`--min-run-ms`: each run holds its session that
//! long, asleep, so the load generator does not steal the workers' CPU and their service
//! time stays the same under load) behind one scheduler with `max_queue_wait_ms`. In one
//! run:
//!
//! 1. unloaded: one request at a time, for the baseline p50/p99;
//! 2. capacity: a closed loop with more requests in flight than the workers' sessions,
//!    for the requests per second the cluster serves;
//! 3. offered load at 0.5x, 1x, 2x and 3x that capacity, open loop (requests sent on a
//!    fixed schedule whatever the answers), each request with a deadline: admitted
//!    requests' p50/p99, the refused share (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) and
//!    how fast refusals come, other errors, and the scheduler's CPU.
//!
//! The bound to check: admitted p99 stays within the unloaded p99 plus
//! `max_queue_wait_ms` (printed as a ratio), and refusals take milliseconds.
//!
//! `--soak MINUTES` runs the soak instead: 80 % of the measured capacity for MINUTES, the
//! scheduler's and workers' RSS sampled every 10 s, every error counted.
//!
//! Run: `cargo build --release --workspace --bins && target/release/localml-overload-bench`
//! Options: `--seconds N` per load level (default 10), `--service-ms MS` per run
//! (default 40: 2 workers x 2 sessions serve 100 requests/s),
//! `--max-queue-wait-ms MS` (default 1000), `--deadline-ms MS` per request (default 5000),
//! `--soak-load F` (the soak's share of capacity, default 0.8),
//! `--outstanding-per-session N` (the default profile with Capacity's
//! `max_outstanding_per_session` set to N; default: the shipped profile's 4), `--soak
//! MINUTES`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use localml_cli::client::Connection;
use localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use localml_tests::{cpu_time, image_request, inference_client, Scheduler, Worker};
use tonic::Code;

type Client = GrpcInferenceServiceClient<Connection>;

/// Resident memory of a process in KiB (VmRSS).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn percentile(values: &mut [Duration], p: f64) -> Duration {
    values.sort();
    let index = ((values.len() as f64 - 1.0) * p).round() as usize;
    values.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One request's end: its code and how long it took.
type Outcome = (Code, Duration);

async fn one(mut client: Client, deadline: Duration) -> Outcome {
    let mut request = tonic::Request::new(image_request(1));
    request.set_timeout(deadline);
    let start = Instant::now();
    let code = match client.model_infer(request).await {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    };
    (code, start.elapsed())
}

/// `concurrency` clients, each sending the next request when the last is answered.
async fn closed_loop(
    clients: &[Client],
    concurrency: usize,
    duration: Duration,
    deadline: Duration,
) -> (Vec<Outcome>, Duration) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let client = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                let mut outcomes = Vec::new();
                while start.elapsed() < duration {
                    outcomes.push(one(client.clone(), deadline).await);
                }
                outcomes
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client task"));
    }
    (all, start.elapsed())
}

/// Requests sent at `rate` per second on a fixed schedule for `duration`, whatever the
/// answers (an open loop: clients that do not slow down when the cluster does).
async fn open_loop(
    clients: &[Client],
    rate: f64,
    duration: Duration,
    deadline: Duration,
) -> Vec<Outcome> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for i in 0u64.. {
        let at = start + Duration::from_secs_f64(i as f64 / rate);
        if at.duration_since(start) >= duration {
            break;
        }
        tokio::time::sleep_until(at).await;
        let client = clients[i as usize % clients.len()].clone();
        tasks.push(tokio::spawn(one(client, deadline)));
    }
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        all.push(t.await.expect("request task"));
    }
    all
}

struct Summary {
    ok: Vec<Duration>,
    refused: Vec<Duration>,
    by_code: BTreeMap<String, usize>,
    other: usize,
}

fn summarize(outcomes: &[Outcome]) -> Summary {
    let mut s = Summary {
        ok: Vec::new(),
        refused: Vec::new(),
        by_code: BTreeMap::new(),
        other: 0,
    };
    for &(code, took) in outcomes {
        *s.by_code.entry(format!("{code:?}")).or_default() += 1;
        match code {
            Code::Ok => s.ok.push(took),
            Code::ResourceExhausted | Code::DeadlineExceeded => s.refused.push(took),
            _ => s.other += 1,
        }
    }
    s
}

struct Cluster {
    scheduler: Scheduler,
    workers: Vec<Worker>,
    clients: Vec<Client>,
}

async fn cluster(service_ms: u64, max_queue_wait_ms: u64, per_session: Option<u32>) -> Cluster {
    let mut config = format!(
        "report_interval_ms: 200\nworker_grace_period_ms: 3000\nmax_queue_wait_ms: {max_queue_wait_ms}\n"
    );
    if let Some(n) = per_session {
        // The default profile (docs/scheduling.md) with Capacity's limit changed.
        config.push_str(&format!(
            "profiles:\n  - name: default\n    plugins:\n      - {{name: NodeUnschedulable}}\n      - {{name: Labels}}\n      - {{name: ModelAvailable}}\n      - {{name: ExecutionProvider, weight: 1}}\n      - {{name: MemoryFit, weight: 1}}\n      - {{name: PowerState, weight: 3, args: {{battery_wait_budget_ms: 50}}}}\n      - {{name: LeastExpectedLatency, weight: 6}}\n      - {{name: Capacity, args: {{max_outstanding_per_session: {n}}}}}\n"
        ));
    }
    let scheduler = Scheduler::start_with(&config);
    let service_ms = service_ms.to_string();
    let workers: Vec<Worker> = ["w1", "w2"]
        .iter()
        .map(|n| Worker::start(n, &scheduler, &["--min-run-ms", &service_ms]))
        .collect();
    scheduler.wait_ready(&["w1", "w2"]).await;
    // Several connections, as several clients on the LAN would open.
    let mut clients = Vec::new();
    for _ in 0..8 {
        clients.push(inference_client(&scheduler.addr).await);
    }
    Cluster {
        scheduler,
        workers,
        clients,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = localml_tests::option;
    let number = |name: &str, default: f64| -> anyhow::Result<f64> {
        Ok(arg(name).map(|v| v.parse()).transpose()?.unwrap_or(default))
    };
    let seconds = number("--seconds", 10.0)?;
    let service_ms = number("--service-ms", 40.0)? as u64;
    let max_queue_wait_ms = number("--max-queue-wait-ms", 1000.0)? as u64;
    let deadline = Duration::from_millis(number("--deadline-ms", 5000.0)? as u64);
    let soak_minutes = arg("--soak").map(|v| v.parse::<f64>()).transpose()?;
    let duration = Duration::from_secs_f64(seconds);

    let per_session = arg("--outstanding-per-session")
        .map(|v| v.parse::<u32>())
        .transpose()?;
    let c = cluster(service_ms, max_queue_wait_ms, per_session).await;
    let scheduler_pid = c.scheduler.process.pid();
    println!(
        "two workers (image_classifier, 2 sessions each, --min-run-ms {service_ms}), max_queue_wait_ms {max_queue_wait_ms}, deadline {} ms per request, Capacity max_outstanding_per_session {}",
        deadline.as_millis(),
        per_session.map_or("4 (default)".to_string(), |n| n.to_string())
    );

    // Warm up, then the unloaded baseline: one request at a time.
    closed_loop(&c.clients, 4, Duration::from_secs(2), deadline).await;
    let (unloaded, _) = closed_loop(&c.clients, 1, duration / 2, deadline).await;
    let mut unloaded = summarize(&unloaded);
    anyhow::ensure!(
        unloaded.other == 0,
        "unloaded errors: {:?}",
        unloaded.by_code
    );
    let (u50, u99) = (
        percentile(&mut unloaded.ok, 0.5),
        percentile(&mut unloaded.ok, 0.99),
    );
    // Capacity: more in flight than the four sessions, few enough to stay queued well
    // under max_queue_wait_ms.
    let (saturated, took) = closed_loop(&c.clients, 12, duration, deadline).await;
    let saturated = summarize(&saturated);
    let capacity = saturated.ok.len() as f64 / took.as_secs_f64();
    println!(
        "unloaded (1 in flight): p50 {:.1} ms, p99 {:.1} ms; capacity (12 in flight): {capacity:.1} requests/s ({:?})",
        ms(u50),
        ms(u99),
        saturated.by_code
    );
    let bound = u99 + Duration::from_millis(max_queue_wait_ms);

    if let Some(minutes) = soak_minutes {
        let load = number("--soak-load", 0.8)?;
        return soak(&c, load * capacity, minutes, deadline).await;
    }

    println!();
    println!("| offered | offered/s | admitted/s | admitted p50 | admitted p99 | p99 / (unloaded p99 + max wait) | refused | refusal p50 | refusal p99 | other errors | scheduler CPU |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for factor in [0.5, 1.0, 2.0, 3.0] {
        let rate = factor * capacity;
        let cpu_before = cpu_time(scheduler_pid);
        let started = Instant::now();
        let outcomes = open_loop(&c.clients, rate, duration, deadline).await;
        let wall = started.elapsed();
        let cpu = cpu_time(scheduler_pid) - cpu_before;
        let mut s = summarize(&outcomes);
        let (p50, p99) = (percentile(&mut s.ok, 0.5), percentile(&mut s.ok, 0.99));
        let (r50, r99) = (
            percentile(&mut s.refused, 0.5),
            percentile(&mut s.refused, 0.99),
        );
        let refused_share = s.refused.len() as f64 / outcomes.len().max(1) as f64;
        println!(
            "| {factor}x | {rate:.0} | {:.1} | {:.0} ms | {:.0} ms | {:.2} | {:.1} % | {} | {} | {} | {:.0} % of a core |",
            // Over the whole time, the last admitted request's answer included.
            s.ok.len() as f64 / wall.as_secs_f64(),
            ms(p50),
            ms(p99),
            p99.as_secs_f64() / bound.as_secs_f64(),
            refused_share * 100.0,
            if s.refused.is_empty() { "-".into() } else { format!("{:.1} ms", ms(r50)) },
            if s.refused.is_empty() { "-".into() } else { format!("{:.1} ms", ms(r99)) },
            s.other,
            cpu.as_secs_f64() * 100.0 / wall.as_secs_f64(),
        );
        eprintln!("  {factor}x: {:?}", s.by_code);
        // Let the queue drain before the next level.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}

/// Offered load at `rate` for `minutes`, in 10 s slices: each slice's answers and every
/// process's RSS.
async fn soak(c: &Cluster, rate: f64, minutes: f64, deadline: Duration) -> anyhow::Result<()> {
    let mut pids = vec![("scheduler".to_string(), c.scheduler.process.pid())];
    pids.extend(c.workers.iter().map(|w| (w.name.clone(), w.process.pid())));
    println!("soak: {rate:.1} requests/s for {minutes} min, RSS in MiB every 10 s");
    println!(
        "| minute | ok | refused | other errors | p99 | {} |",
        pids.iter()
            .map(|(n, _)| format!("{n} RSS"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|---|---|---|---|{}", "---|".repeat(pids.len()));
    let slice = Duration::from_secs(10);
    let slices = (minutes * 6.0).ceil() as u32;
    let mut totals: BTreeMap<String, usize> = BTreeMap::new();
    let mut rss: Vec<Vec<u64>> = vec![Vec::new(); pids.len()];
    for i in 0..slices {
        let outcomes = open_loop(&c.clients, rate, slice, deadline).await;
        let mut s = summarize(&outcomes);
        for (code, n) in &s.by_code {
            *totals.entry(code.clone()).or_default() += n;
        }
        let now: Vec<u64> = pids.iter().map(|(_, pid)| rss_kib(*pid)).collect();
        for (k, v) in now.iter().enumerate() {
            rss[k].push(*v);
        }
        println!(
            "| {:.1} | {} | {} | {} | {:.0} ms | {} |",
            f64::from(i + 1) / 6.0,
            s.ok.len(),
            s.refused.len(),
            s.other,
            ms(percentile(&mut s.ok, 0.99)),
            now.iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    println!();
    println!("totals: {totals:?}");
    for ((name, _), samples) in pids.iter().zip(&rss) {
        // Flat: the second half's mean against the first half's (after the first minute).
        let settled = &samples[samples.len().min(6)..];
        let half = settled.len() / 2;
        let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len().max(1) as f64 / 1024.0;
        println!(
            "{name}: RSS first {:.1} MiB, last {:.1} MiB, max {:.1} MiB; mean of the first half after minute 1 {:.1} MiB, of the second half {:.1} MiB",
            samples.first().copied().unwrap_or(0) as f64 / 1024.0,
            samples.last().copied().unwrap_or(0) as f64 / 1024.0,
            samples.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
            mean(&settled[..half]),
            mean(&settled[half..]),
        );
    }
    Ok(())
}
