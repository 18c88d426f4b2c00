//! Durable async jobs with real processes: crashes of the scheduler (embedded store and
//! etcd) lose no accepted job and end each exactly once with the right output;
//! `mains_only` waits for mains power; limits, cancellation, errors and the CLI.

use std::collections::HashMap;
use std::time::Duration;

use localml_cli::client;
use localml_cli::client::Connection;
use localml_proto::localml::v1::jobs_client::JobsClient;
use localml_proto::localml::v1::*;
use localml_tests::*;

/// Fast leader handover and retries for tests.
const JOBS_CONFIG: &str = "report_interval_ms: 200\nworker_grace_period_ms: 3000\nleader_lease_ms: 1000\njobs:\n  retry_ms: 200\n";

async fn jobs_client(scheduler: &Scheduler) -> JobsClient<Connection> {
    let key = scheduler.admin_key();
    let channel = client::connect_with_key(&scheduler.addr, Duration::from_secs(10), Some(&key))
        .await
        .expect("connect");
    JobsClient::new(channel).max_decoding_message_size(64 << 20)
}

fn submit_request(example: &Expected, key: String) -> SubmitJobRequest {
    SubmitJobRequest {
        request: Some(client::request(
            &example.model,
            &example.version,
            &example.inputs,
        )),
        idempotency_key: key,
        tenant: "school".into(),
        ..Default::default()
    }
}

/// Every job, all pages; None while the scheduler cannot answer.
async fn list_all(scheduler: &Scheduler) -> Option<Vec<Job>> {
    let mut client = jobs_client(scheduler).await;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(ListJobsRequest {
                page_size: 200,
                page_token,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        all.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return Some(all);
        }
        page_token = page.next_page_token;
    }
}

async fn count_ended(scheduler: &Scheduler) -> usize {
    list_all(scheduler)
        .await
        .map(|jobs| {
            jobs.iter()
                .filter(|j| j.state >= JobState::Succeeded as i32)
                .count()
        })
        .unwrap_or(0)
}

/// 500 jobs, the scheduler killed -9 twice while they run; every job ends SUCCEEDED once
/// with the output onnxruntime's Python API computed.
async fn jobs_survive_two_crashes(extra: &[&str]) {
    const JOBS: usize = 500;
    let mut scheduler = Scheduler::start_full(JOBS_CONFIG, extra);
    let _w1 = Worker::start("w1", &scheduler, &["--throttle", "100"]);
    let _w2 = Worker::start("w2", &scheduler, &["--throttle", "100"]);
    scheduler.wait_ready(&["w1", "w2"]).await;
    let examples = expected_examples();
    let mut client = jobs_client(&scheduler).await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let example = &examples[i % examples.len()];
        let job = client
            .submit(submit_request(example, format!("batch-{i}")))
            .await
            .expect("submit")
            .into_inner();
        assert_eq!(job.state, JobState::Pending as i32);
        ids.push(job.id);
    }
    for (crash, at) in [(1, JOBS / 5), (2, JOBS / 2)] {
        let reached = wait_until(Duration::from_secs(120), || async {
            count_ended(&scheduler).await >= at
        })
        .await;
        assert!(reached, "crash {crash}: {at} jobs never ended");
        let ended = count_ended(&scheduler).await;
        assert!(
            ended < JOBS,
            "crash {crash} came after all jobs ended: not a test"
        );
        eprintln!("crash {crash}: kill -9 with {ended}/{JOBS} ended");
        scheduler.crash_and_restart();
    }
    let all_ended = wait_until(Duration::from_secs(300), || async {
        count_ended(&scheduler).await == JOBS
    })
    .await;
    let jobs = list_all(&scheduler).await.expect("list");
    assert!(all_ended, "not every job ended: {:?}", states(&jobs));
    assert_eq!(jobs.len(), JOBS, "no job lost, none duplicated");
    assert_eq!(
        jobs.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        ids,
        "the same jobs, in submit order"
    );
    let mut client = jobs_client(&scheduler).await;
    // Newest first, a page at a time (the store reads backwards, a batch at a time): the
    // same jobs in reverse; a tenant with none gets an empty page and no token.
    let mut newest = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = client
            .list(ListJobsRequest {
                page_size: 70,
                page_token,
                newest_first: true,
                state: JobState::Succeeded as i32,
                ..Default::default()
            })
            .await
            .expect("list newest first")
            .into_inner();
        pages += 1;
        newest.extend(page.jobs.into_iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let mut reversed = ids.clone();
    reversed.reverse();
    assert_eq!(newest, reversed, "newest first, every job once");
    assert_eq!(pages, JOBS.div_ceil(70));
    let none = client
        .list(ListJobsRequest {
            newest_first: true,
            tenant: "nobody".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(
        none.jobs.is_empty() && none.next_page_token.is_empty(),
        "{none:?}"
    );
    let mut reruns = 0;
    for (i, id) in ids.iter().enumerate() {
        let job = client
            .get(GetJobRequest { id: id.clone() })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(
            job.state,
            JobState::Succeeded as i32,
            "job {id}: {}",
            job.message
        );
        reruns += job.attempts.saturating_sub(1);
        let example = &examples[i % examples.len()];
        let outputs = client::outputs(job.result.as_ref().expect("result")).expect("outputs");
        assert_tensors_match(
            &format!("job {i} ({})", example.model),
            &example.outputs,
            &outputs,
        );
    }
    eprintln!("{JOBS} jobs succeeded; {reruns} extra executions after the crashes");
    // The idempotency key still answers with the first job.
    let again = client
        .submit(submit_request(&examples[0], "batch-0".into()))
        .await
        .expect("resubmit")
        .into_inner();
    assert_eq!(again.id, ids[0]);
    assert_eq!(again.state, JobState::Succeeded as i32);
}

fn states(jobs: &[Job]) -> HashMap<i32, usize> {
    let mut counts = HashMap::new();
    for j in jobs {
        *counts.entry(j.state).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_scheduler_crashes_with_the_embedded_store() {
    jobs_survive_two_crashes(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_scheduler_crashes_with_etcd() {
    let etcd = Etcd::start();
    let store = etcd.store_address("localml");
    jobs_survive_two_crashes(&["--store", &store]).await;
}

async fn job_state(client: &mut JobsClient<Connection>, id: &str) -> Job {
    client
        .get(GetJobRequest { id: id.to_string() })
        .await
        .expect("get")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mains_only_jobs_wait_for_mains_power() {
    let sysfs = laptop_sysfs("sysfs-jobs", false, "80", &[]);
    let scheduler = Scheduler::start_with(JOBS_CONFIG);
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    scheduler.wait_ready(&["laptop"]).await;
    let examples = expected_examples();
    let mut client = jobs_client(&scheduler).await;
    let submit = |policy: PowerPolicy| {
        let mut client = client.clone();
        let request = SubmitJobRequest {
            power_policy: policy as i32,
            ..submit_request(&examples[0], String::new())
        };
        async move { client.submit(request).await.expect("submit").into_inner() }
    };
    let overnight = submit(PowerPolicy::MainsOnly).await;
    let cancelled = submit(PowerPolicy::MainsOnly).await;
    let anytime = submit(PowerPolicy::Any).await;
    // The `any` job runs on the battery laptop; the mains_only ones are tried and wait.
    let ran = wait_until(SOON, || async {
        job_state(&mut client.clone(), &anytime.id).await.state == JobState::Succeeded as i32
    })
    .await;
    assert!(ran, "an `any` job runs on battery");
    let waiting = wait_until(SOON, || async {
        let job = job_state(&mut client.clone(), &overnight.id).await;
        job.state == JobState::Pending as i32 && job.message.contains("mains power")
    })
    .await;
    let job = job_state(&mut client, &overnight.id).await;
    assert!(waiting, "mains_only waits, saying why: {job:?}");
    assert!(job.started_unix_ms != 0, "it was tried: {job:?}");
    assert_eq!(
        job.attempts, 0,
        "waiting for mains is not an attempt: {job:?}"
    );
    // Cancelling a waiting job ends it; it never runs.
    let c = client
        .cancel(CancelJobRequest {
            id: cancelled.id.clone(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(c.state, JobState::Cancelled as i32);
    // Mains returns: the job runs.
    write_power_supply(sysfs.path(), "AC", &[("online", "1")]);
    write_power_supply(sysfs.path(), "BAT0", &[("status", "Charging")]);
    let done = wait_until(SOON, || async {
        job_state(&mut client.clone(), &overnight.id).await.state == JobState::Succeeded as i32
    })
    .await;
    assert!(
        done,
        "runs once on mains: {:?}",
        job_state(&mut client, &overnight.id).await
    );
    let job = job_state(&mut client, &overnight.id).await;
    assert_eq!(job.worker, "laptop");
    let c = job_state(&mut client, &cancelled.id).await;
    assert_eq!(c.state, JobState::Cancelled as i32, "stays cancelled");
    assert!(c.result.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_submits_get_precise_errors_and_oversized_results_fail_clearly() {
    let scheduler = Scheduler::start_with(&format!("{JOBS_CONFIG}  max_result_bytes: 64\n"));
    let _w = Worker::start("w1", &scheduler, &[]);
    scheduler.wait_ready(&["w1"]).await;
    let examples = expected_examples();
    let image = examples
        .iter()
        .find(|e| e.model == "image_classifier")
        .expect("image example");
    let mut client = jobs_client(&scheduler).await;
    let cases = [
        (
            SubmitJobRequest::default(),
            tonic::Code::InvalidArgument,
            "'request' is required",
        ),
        (
            SubmitJobRequest {
                power_policy: 9,
                ..submit_request(image, String::new())
            },
            tonic::Code::InvalidArgument,
            "power_policy 9",
        ),
        (
            SubmitJobRequest {
                deadline_unix_ms: 1_000,
                ..submit_request(image, String::new())
            },
            tonic::Code::InvalidArgument,
            "in the past",
        ),
        (
            // Once a panic in the runner, retried forever (#11).
            SubmitJobRequest {
                deadline_unix_ms: u64::MAX,
                ..submit_request(image, String::new())
            },
            tonic::Code::InvalidArgument,
            "more than a year ahead",
        ),
        (
            {
                let mut r = submit_request(image, String::new());
                r.request.as_mut().expect("request").model_name = "no_such_model".into();
                r
            },
            tonic::Code::NotFound,
            "no_such_model",
        ),
    ];
    for (request, code, text) in cases {
        let status = client.submit(request).await.expect_err("refused");
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(status.message().contains(text), "{}", status.message());
    }
    let status = client
        .get(GetJobRequest { id: "nope".into() })
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound);
    // image_classifier's output is 4 KB, over the 64-byte limit.
    let job = client
        .submit(submit_request(image, String::new()))
        .await
        .expect("submit")
        .into_inner();
    let ended = wait_until(SOON, || async {
        job_state(&mut client.clone(), &job.id).await.state == JobState::Failed as i32
    })
    .await;
    let job = job_state(&mut client, &job.id).await;
    assert!(ended, "{job:?}");
    assert!(job.message.contains("max_result_bytes"), "{}", job.message);
    assert_eq!(job.error_code, tonic::Code::ResourceExhausted as i32);
    // List filters by state and tenant and pages.
    let failed = client
        .list(ListJobsRequest {
            state: JobState::Failed as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(failed.jobs.len(), 1);
    let other_tenant = client
        .list(ListJobsRequest {
            tenant: "library".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(other_tenant.jobs.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_submits_watches_gets_and_lists_jobs() {
    let scheduler = Scheduler::start_with(JOBS_CONFIG);
    let _w = Worker::start("w1", &scheduler, &[]);
    scheduler.wait_ready(&["w1"]).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("localml"))
            .arg("jobs")
            .args(args)
            .args(["--server", &scheduler.addr])
            .env("LOCALML_KEY", scheduler.admin_key())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run localml jobs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&[
        "submit",
        "--model",
        "image_classifier",
        "--count",
        "20",
        "--idempotency-key",
        "cli",
        "--watch",
    ]);
    assert!(ok, "{out}\n{err}");
    let ids: Vec<&str> = out.lines().take(20).collect();
    assert_eq!(ids.len(), 20, "{out}");
    assert!(
        out.contains("20/20 ended (succeeded 20, failed 0, cancelled 0)"),
        "progress summary: {out}\n{err}"
    );
    let (ok, out, err) = run(&["get", ids[0]]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Succeeded") && out.contains("worker w1"),
        "{out}"
    );
    assert!(
        out.contains("probabilities") || out.contains("FP32"),
        "outputs shown: {out}"
    );
    let (ok, out, err) = run(&["list", "--state", "succeeded"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 21, "header and 20 jobs: {out}");
    let (ok, _, err) = run(&["list", "--state", "done"]);
    assert!(!ok && err.contains("expected pending, running"), "{err}");
    let (ok, _, err) = run(&["get", "nope"]);
    assert!(!ok && err.contains("no job 'nope'"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_mode_refuses_jobs_larger_than_etcd_stores() {
    let etcd = Etcd::start();
    let store = etcd.store_address("big");
    let scheduler = Scheduler::start_full(JOBS_CONFIG, &["--store", &store]);
    let mut client = jobs_client(&scheduler).await;
    let mut request = submit_request(&expected_examples()[0], String::new());
    request
        .request
        .as_mut()
        .expect("request")
        .raw_input_contents
        .push(vec![0u8; 2 << 20].into());
    let status = client.submit(request).await.expect_err("too large");
    assert_eq!(
        status.code(),
        tonic::Code::ResourceExhausted,
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("the etcd store keeps at most"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_keeps_failing_on_workers_gives_up_after_max_attempts() {
    let scheduler = Scheduler::start_with(&format!("{JOBS_CONFIG}  max_attempts: 2\n"));
    // It reports an address nothing listens on: every dispatch fails at the transport.
    let _broken = Worker::start("broken", &scheduler, &["--advertise", "127.0.0.1:1"]);
    scheduler.wait_ready(&["broken"]).await;
    let mut client = jobs_client(&scheduler).await;
    let job = client
        .submit(submit_request(&expected_examples()[0], String::new()))
        .await
        .expect("submit")
        .into_inner();
    let failed = wait_until(SOON, || async {
        job_state(&mut client.clone(), &job.id).await.state == JobState::Failed as i32
    })
    .await;
    let job = job_state(&mut client, &job.id).await;
    assert!(failed, "{job:?}");
    assert!(
        job.message
            .contains("gave up after 2 attempts (jobs.max_attempts)"),
        "{}",
        job.message
    );
    assert_eq!(
        job.attempts, 2,
        "waiting for the worker to report again is not an attempt"
    );
}

/// `localml jobs submit --min-battery 80`: deferrable work waits, saying why, while the
/// only worker is on mains with its battery at 40 %, and runs once it is charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_battery_jobs_wait_until_the_battery_is_charged() {
    let sysfs = laptop_sysfs("sysfs-min-battery", true, "40", &[]);
    let scheduler = Scheduler::start_with(JOBS_CONFIG);
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    scheduler.wait_ready(&["laptop"]).await;
    let localml = |args: &[&str]| {
        let out = std::process::Command::new(bin("localml"))
            .args(args)
            .args(["--server", &scheduler.addr])
            .env("LOCALML_KEY", scheduler.admin_key())
            .output()
            .expect("run localml");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, _, err) = localml(&[
        "jobs",
        "submit",
        "--model",
        "image_classifier",
        "--min-battery",
        "180",
    ]);
    assert!(!ok && err.contains("not a percentage"), "{err}");
    let (ok, out, err) = localml(&[
        "jobs",
        "submit",
        "--model",
        "image_classifier",
        "--min-battery",
        "80",
    ]);
    assert!(ok, "{err}");
    let id = out.trim().to_string();
    let waits = wait_until(SOON, || async {
        let (_, out, _) = localml(&["jobs", "get", &id]);
        out.contains("Pending") && out.contains("waits for 80%")
    })
    .await;
    let (_, shown, _) = localml(&["jobs", "get", &id]);
    assert!(waits, "waits, saying why: {shown}");
    assert!(shown.contains("at 80% or more"), "{shown}");
    // Charged: the job runs.
    write_power_supply(sysfs.path(), "BAT0", &[("capacity", "90")]);
    let ran = wait_until(SOON, || async {
        localml(&["jobs", "get", &id]).1.contains("Succeeded")
    })
    .await;
    assert!(ran, "{}", localml(&["jobs", "get", &id]).1);
}

/// The server checks `min_battery_percent` itself (clients other than the CLI send it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_min_battery_outside_0_to_100_is_refused_by_the_server() {
    let scheduler = Scheduler::start_with(JOBS_CONFIG);
    let examples = expected_examples();
    let mut client = jobs_client(&scheduler).await;
    for bad in [150.0, -1.0, f32::NAN] {
        let status = client
            .submit(SubmitJobRequest {
                min_battery_percent: Some(bad),
                ..submit_request(&examples[0], String::new())
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
        assert!(
            status.message().contains("min_battery_percent"),
            "{bad}: {}",
            status.message()
        );
    }
}

/// A job waits its turn in the scheduler's queue (jobs are never refused for the queue's
/// wait), but not past its deadline: a low-priority job behind a worker kept busy by
/// higher-priority requests fails with DEADLINE_EXCEEDED once its deadline passes, while
/// the worker is still busy, instead of waiting for the load to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_queued_past_its_deadline_fails_while_the_worker_is_still_busy() {
    let scheduler = Scheduler::start_with(JOBS_CONFIG);
    let _worker = Worker::start("w1", &scheduler, &["--throttle", "300"]);
    scheduler.wait_ready(&["w1"]).await;
    // Twelve clients, more than the worker's 8 slots (2 sessions, 4 each), for 20 s.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load: Vec<_> = (0..12)
        .map(|_| {
            let (stop, addr) = (std::sync::Arc::clone(&stop), scheduler.addr.clone());
            tokio::spawn(async move {
                let mut c = inference_client(&addr).await;
                let started = std::time::Instant::now();
                while !stop.load(std::sync::atomic::Ordering::Relaxed)
                    && started.elapsed() < Duration::from_secs(20)
                {
                    let _ = c.model_infer(image_request(1)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let image = expected_examples()
        .into_iter()
        .find(|e| e.model == "image_classifier")
        .expect("image example");
    let mut jobs = jobs_client(&scheduler).await;
    let now_ms = localml_proto::time::unix_ms();
    let job = jobs
        .submit(SubmitJobRequest {
            priority: -5,
            deadline_unix_ms: now_ms + 2_000,
            ..submit_request(&image, "behind".into())
        })
        .await
        .expect("submit")
        .into_inner();
    let ended = wait_until(Duration::from_secs(12), || {
        let (mut jobs, id) = (jobs.clone(), job.id.clone());
        async move {
            jobs.get(GetJobRequest { id })
                .await
                .is_ok_and(|j| j.into_inner().state == JobState::Failed as i32)
        }
    })
    .await;
    let still_loaded = load.iter().any(|t| !t.is_finished());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got = jobs
        .get(GetJobRequest { id: job.id })
        .await
        .expect("get")
        .into_inner();
    assert!(ended, "the job did not fail at its deadline: {got:?}");
    assert!(
        still_loaded,
        "the worker was still busy when the job failed"
    );
    assert_eq!(
        got.error_code,
        tonic::Code::DeadlineExceeded as i32,
        "{got:?}"
    );
    // Ended in the queue, never sent to the busy worker.
    assert!(
        got.message.contains("waited in the scheduler's queue") && got.attempts == 0,
        "{got:?}"
    );
    for t in load {
        t.await.expect("load task");
    }
}
