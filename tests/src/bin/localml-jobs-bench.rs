//! What durability costs: N inferences as synchronous requests (the baseline) and as
//! durable async jobs, with the embedded store and with etcd, in one run, with ratios.
//! Jobs are submitted as fast as one client can, then waited for; the time is from the
//! first submit to the last job ended.
//!
//! Run: `cargo build --release --workspace --bins && target/release/localml-jobs-bench`
//! Options: `--jobs N` (default 500), `--concurrency C` for the baseline and the
//! dispatcher's `jobs.concurrency` (default 8). Needs `etcd` on PATH for the etcd row
//! (`scripts/deps.sh --test` installs it); without it that row is skipped and says so.

use std::sync::Arc;
use std::time::{Duration, Instant};

use localml_cli::client;
use localml_proto::localml::v1::jobs_client::JobsClient;
use localml_proto::localml::v1::{JobState, ListJobsRequest, SubmitJobRequest};
use localml_tests::{image_request, Etcd, Scheduler, Worker};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(concurrency: usize) -> String {
    format!(
        "report_interval_ms: 200\nworker_grace_period_ms: 3000\njobs:\n  concurrency: {concurrency}\n  retry_ms: 100\n"
    )
}

/// Starts a scheduler (with `extra` flags) and two workers; waits until they are Ready.
async fn cluster(concurrency: usize, extra: &[&str]) -> (Scheduler, Vec<Worker>) {
    let scheduler = Scheduler::start_full(&config(concurrency), extra);
    let workers = vec![
        Worker::start("w1", &scheduler, &[]),
        Worker::start("w2", &scheduler, &[]),
    ];
    scheduler.wait_ready(&["w1", "w2"]).await;
    (scheduler, workers)
}

async fn synchronous(scheduler: &Scheduler, n: usize, concurrency: usize) -> Duration {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, addr) = (Arc::clone(&next), scheduler.addr.clone());
            tokio::spawn(async move {
                let mut c = localml_tests::inference_client(&addr).await;
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                    c.model_infer(image_request(1)).await.expect("infer");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    started.elapsed()
}

async fn jobs(scheduler: &Scheduler, n: usize) -> Duration {
    let key = scheduler.admin_key();
    let channel = client::connect_with_key(&scheduler.addr, Duration::from_secs(10), Some(&key))
        .await
        .expect("connect");
    let mut jobs = JobsClient::new(channel);
    let started = Instant::now();
    for i in 0..n {
        jobs.submit(SubmitJobRequest {
            request: Some(image_request(1)),
            idempotency_key: format!("bench-{i}"),
            ..Default::default()
        })
        .await
        .expect("submit");
    }
    loop {
        let mut done = 0;
        let mut token = String::new();
        loop {
            let page = jobs
                .list(ListJobsRequest {
                    state: JobState::Succeeded as i32,
                    page_size: 1000,
                    page_token: token,
                    ..Default::default()
                })
                .await
                .expect("list")
                .into_inner();
            done += page.jobs.len();
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        if done >= n {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn row(label: &str, n: usize, took: Duration, baseline: Duration) {
    println!(
        "{label:<34} {:>8.2} s {:>9.0} /s {:>8.2}x baseline time",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64() / baseline.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let n = arg("--jobs", 500);
    let concurrency = arg("--concurrency", 8);
    println!(
        "{n} inferences of image_classifier (batch 1) on 2 workers; concurrency {concurrency}"
    );
    let (scheduler, _workers) = cluster(concurrency, &[]).await;
    let baseline = synchronous(&scheduler, n, concurrency).await;
    row("synchronous requests (baseline)", n, baseline, baseline);
    let took = jobs(&scheduler, n).await;
    row("jobs, embedded store", n, took, baseline);
    drop(scheduler);
    let etcd_available = std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !etcd_available {
        println!("jobs, etcd: skipped (etcd is not on PATH; scripts/deps.sh --test installs it)");
        return;
    }
    let etcd = Etcd::start();
    let address = etcd.store_address("bench");
    let (scheduler, _workers) = cluster(concurrency, &["--store", &address]).await;
    let baseline = synchronous(&scheduler, n, concurrency).await;
    row("synchronous requests (etcd run)", n, baseline, baseline);
    let took = jobs(&scheduler, n).await;
    row("jobs, etcd 3.4", n, took, baseline);
}
