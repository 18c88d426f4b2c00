//! Failures with real processes: a worker killed mid-stream, a worker paused and resumed
//! (node lifecycle), and a worker whose PC switches to battery.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use localml_cli::client;
use localml_proto::localml::v1::{PowerSource, WorkerState};
use localml_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_worker_mid_stream_loses_no_request() {
    let scheduler = Scheduler::start();
    let mut victim = Worker::start("victim", &scheduler, &[]);
    let _a = Worker::start("a", &scheduler, &[]);
    let _b = Worker::start("b", &scheduler, &[]);
    scheduler.wait_ready(&["victim", "a", "b"]).await;
    let examples = expected_examples();
    let ex = examples
        .iter()
        .find(|e| e.model == "image_classifier")
        .expect("example");
    let request = client::request(&ex.model, "", &ex.inputs);

    const TOTAL: usize = 400;
    const CONCURRENCY: usize = 8;
    let done = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (mut c, done, next, request) = (
            scheduler.inference().await,
            done.clone(),
            next.clone(),
            request.clone(),
        );
        let expected = ex.outputs.clone();
        tasks.push(tokio::spawn(async move {
            let mut served = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < TOTAL {
                let response = c
                    .model_infer(request.clone())
                    .await
                    .unwrap_or_else(|s| panic!("request failed: {:?}: {}", s.code(), s.message()))
                    .into_inner();
                assert_tensors_match(
                    "during failover",
                    &expected,
                    &client::outputs(&response).expect("decode"),
                );
                served.push(client::served_by(&response).expect("worker"));
                done.fetch_add(1, Ordering::SeqCst);
            }
            served
        }));
    }
    // Kill the victim once the stream is well under way.
    assert!(wait_until(SOON, || async { done.load(Ordering::SeqCst) >= TOTAL / 4 }).await);
    victim.process.kill9();
    let mut served = Vec::new();
    for t in tasks {
        served.extend(t.await.expect("client task"));
    }
    assert_eq!(served.len(), TOTAL, "every request answered");
    let by_victim = served.iter().filter(|w| *w == "victim").count();
    assert!(
        by_victim > 0,
        "the victim served some requests before it died"
    );
    assert!(by_victim < TOTAL, "the others took over");
    assert!(
        scheduler.worker_state("victim").await != Some(WorkerState::Ready),
        "the dead worker is not Ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_worker_becomes_not_ready_and_recovers() {
    let scheduler = Scheduler::start();
    let paused = Worker::start("paused", &scheduler, &[]);
    let _other = Worker::start("other", &scheduler, &[]);
    scheduler.wait_ready(&["paused", "other"]).await;

    paused.process.signal("STOP");
    let not_ready = wait_until(SOON, || async {
        scheduler.worker_state("paused").await == Some(WorkerState::NotReady)
    })
    .await;
    assert!(
        not_ready,
        "a stopped worker misses its reports and becomes NotReady"
    );
    let info = scheduler.workers().await;
    let reason = &info
        .iter()
        .find(|w| w.status.as_ref().is_some_and(|s| s.name == "paused"))
        .expect("listed")
        .state_reason;
    assert!(reason.contains("no status report"), "{reason}");

    // Traffic goes to the other worker only, and succeeds.
    let mut c = scheduler.inference().await;
    let examples = expected_examples();
    let ex = examples
        .iter()
        .find(|e| e.model == "text_classifier" && e.version == "2")
        .expect("example");
    for _ in 0..20 {
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            c.model_infer(client::request(&ex.model, "2", &ex.inputs)),
        )
        .await
        .expect("no hang")
        .expect("served")
        .into_inner();
        assert_eq!(client::served_by(&response).as_deref(), Some("other"));
    }

    paused.process.signal("CONT");
    let ready = wait_until(SOON, || async {
        scheduler.worker_state("paused").await == Some(WorkerState::Ready)
    })
    .await;
    assert!(ready, "reports resume and the worker is Ready again");
}

/// The `localml workers` table row of `name`.
fn workers_row(scheduler: &Scheduler, name: &str) -> String {
    localml_workers(scheduler)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_switch_shows_up_in_localml_workers() {
    let sysfs = laptop_sysfs("sysfs", true, "87", &[]);
    let scheduler = Scheduler::start();
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    scheduler.wait_ready(&["laptop"]).await;
    let row = workers_row(&scheduler, "laptop");
    assert!(row.contains("mains") && row.contains("87%"), "{row}");

    // The grid fails.
    write_power_supply(sysfs.path(), "AC", &[("online", "0")]);
    write_power_supply(
        sysfs.path(),
        "BAT0",
        &[("capacity", "64"), ("status", "Discharging")],
    );
    let switched = wait_until(SOON, || async {
        let row = workers_row(&scheduler, "laptop");
        row.contains("battery") && row.contains("64%") && row.contains("OnBattery")
    })
    .await;
    assert!(
        switched,
        "battery not shown: {}",
        workers_row(&scheduler, "laptop")
    );
    let power = scheduler.workers().await[0]
        .status
        .clone()
        .expect("status")
        .power
        .expect("power");
    assert_eq!(power.source, PowerSource::Battery as i32);
    assert_eq!(power.origin, "sysfs");

    // And back on mains.
    write_power_supply(sysfs.path(), "AC", &[("online", "1")]);
    assert!(
        wait_until(SOON, || async {
            workers_row(&scheduler, "laptop").contains("mains")
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaving_worker_finishes_in_flight_work_and_gets_no_new_work() {
    let scheduler = Scheduler::start();
    // Throttled so one request takes long enough to be in flight when the worker leaves.
    let mut leaving = Worker::start("leaving", &scheduler, &["--throttle", "400"]);
    scheduler.wait_ready(&["leaving"]).await;
    let examples = expected_examples();
    let ex = examples
        .iter()
        .find(|e| e.model == "image_classifier")
        .expect("example");
    let request = client::request(&ex.model, "", &ex.inputs);
    let mut c = scheduler.inference().await;
    // One request first, so the scheduler's mutual-TLS connection to the worker exists:
    // a first request's handshake could otherwise race the worker's shutdown, which is
    // not what this test is about (a request already running there).
    c.model_infer(request.clone()).await.expect("warm-up");
    let in_flight = {
        let (mut c, request) = (c.clone(), request.clone());
        tokio::spawn(async move { c.model_infer(request).await })
    };
    // Wait until the scheduler has dispatched it, then ask the worker to leave.
    let dispatched = wait_until(SOON, || async {
        scheduler
            .workers()
            .await
            .iter()
            .any(|w| w.dispatched_in_flight > 0)
    })
    .await;
    assert!(dispatched, "request dispatched");
    leaving.process.signal("TERM");
    let _stays = Worker::start("stays", &scheduler, &[]);
    let response = in_flight
        .await
        .expect("task")
        .expect("the in-flight request completes")
        .into_inner();
    assert_eq!(client::served_by(&response).as_deref(), Some("leaving"));
    assert_tensors_match(
        "drained request",
        &ex.outputs,
        &client::outputs(&response).expect("decode"),
    );
    let exit = leaving
        .process
        .wait_exit(SOON)
        .expect("the leaving worker exits");
    assert!(exit.success(), "clean exit: {exit}");
    scheduler.wait_ready(&["stays"]).await;
    for _ in 0..5 {
        let response = c
            .model_infer(request.clone())
            .await
            .expect("served")
            .into_inner();
        assert_eq!(client::served_by(&response).as_deref(), Some("stays"));
    }
}

/// A burst of requests whose deadlines pass while a healthy worker works them is the
/// clients' doing: they get DEADLINE_EXCEEDED, the worker is not marked unreachable, and
/// the normal requests after the burst are all served (#11: they all got UNAVAILABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_client_deadlines_do_not_take_a_healthy_worker_out() {
    let scheduler = Scheduler::start();
    // Ten times as slow (sleeping): each request takes longer than the burst's deadlines.
    let _w = Worker::start("only", &scheduler, &["--throttle", "10"]);
    scheduler.wait_ready(&["only"]).await;
    let c = scheduler.inference().await;
    let burst: Vec<_> = (0..40)
        .map(|i| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(image_request(1));
                request.set_timeout(Duration::from_millis(2 + i % 5));
                c.model_infer(request).await.map(|_| ())
            })
        })
        .collect();
    for task in burst {
        // The scheduler answers DEADLINE_EXCEEDED; the client's own channel may give up
        // first (CANCELLED "Timeout expired", or, on this loaded VM, an UNKNOWN transport
        // error for a stream it reset). Never UNAVAILABLE: the worker is not unreachable.
        if let Err(status) = task.await.expect("task") {
            assert_ne!(status.code(), tonic::Code::Unavailable, "{status:?}");
        }
    }
    for _ in 0..20 {
        let mut c = c.clone();
        c.model_infer(image_request(1))
            .await
            .expect("a normal request after the burst");
    }
    assert_eq!(
        scheduler.worker_state("only").await,
        Some(WorkerState::Ready)
    );
}

/// Eight clients sending image requests one after another for `secs` seconds, each
/// with a 30 s timeout; `during` runs half a second in. Every request must be served;
/// returns how many each worker served and the slowest request.
async fn load_through(
    scheduler: &Scheduler,
    secs: u64,
    during: impl FnOnce(),
) -> (std::collections::HashMap<String, usize>, Duration) {
    let c = scheduler.inference().await;
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                while started.elapsed() < Duration::from_secs(secs) {
                    let sent = std::time::Instant::now();
                    let answer = tokio::time::timeout(
                        Duration::from_secs(30),
                        c.model_infer(image_request(1)),
                    )
                    .await;
                    answers.push((answer, sent.elapsed()));
                }
                answers
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    during();
    let mut served_by = std::collections::HashMap::<String, usize>::new();
    let mut worst = Duration::ZERO;
    for task in clients {
        for (answer, took) in task.await.expect("task") {
            let response = answer
                .expect("not left hanging until the client's timeout")
                .expect("served")
                .into_inner();
            *served_by
                .entry(client::served_by(&response).unwrap_or_default())
                .or_default() += 1;
            worst = worst.max(took);
        }
    }
    eprintln!(
        "served by {served_by:?}; worst request {worst:?}, all in {:?}",
        started.elapsed()
    );
    (served_by, worst)
}

/// A worker frozen (SIGSTOP, as a PC that loses power or its network looks from outside)
/// while it serves: the requests in flight on it are not left hanging. The scheduler's
/// HTTP/2 keepalive (a ping a second, two seconds to answer) ends the frozen connection,
/// and those requests are served by the other worker, without any client deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_on_a_frozen_worker_are_served_elsewhere() {
    let scheduler = Scheduler::start();
    // Slowed (sleeping) so that requests are in flight on both when one freezes.
    let frozen = Worker::start("frozen", &scheduler, &["--throttle", "20"]);
    let _alive = Worker::start("alive", &scheduler, &["--throttle", "20"]);
    scheduler.wait_ready(&["frozen", "alive"]).await;
    let (served_by, worst) = load_through(&scheduler, 3, || frozen.process.signal("STOP")).await;
    // Some requests were on the frozen worker when it froze: they waited for the
    // keepalive to give up on it, then were served by the other.
    assert!(
        worst > Duration::from_secs(1),
        "nothing was in flight on the frozen worker"
    );
    frozen.process.signal("CONT");
    assert!(
        served_by.get("alive").copied().unwrap_or(0) > 0,
        "{served_by:?}"
    );
}

/// The same without HTTP/2 keepalive (`worker_keepalive_ms: 0`), so only the missed
/// status reports tell: once the worker turns NotReady (no report for the grace period,
/// 3 s here), the requests in flight on it are dropped there and served by the other
/// worker, without any client deadline. Without this they waited for the 30 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_on_a_worker_that_misses_its_reports_go_elsewhere() {
    let scheduler =
        Scheduler::start_with(&format!("{TEST_SCHEDULER_CONFIG}worker_keepalive_ms: 0\n"));
    let frozen = Worker::start("silent", &scheduler, &["--throttle", "20"]);
    let _alive = Worker::start("alive", &scheduler, &["--throttle", "20"]);
    scheduler.wait_ready(&["silent", "alive"]).await;
    let (served_by, worst) = load_through(&scheduler, 2, || frozen.process.signal("STOP")).await;
    frozen.process.signal("CONT");
    assert!(
        worst > Duration::from_secs(2),
        "nothing waited for the worker to turn NotReady: {worst:?}"
    );
    assert!(
        served_by.get("alive").copied().unwrap_or(0) > 0,
        "{served_by:?}"
    );
}

/// Requests whose deadlines pass while the worker runs them give their session back only
/// when the run ends: the requests right after them wait for a free session instead of
/// failing with "no free session" (#11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_keep_their_session_until_the_run_ends() {
    let scheduler = Scheduler::start();
    // Slowed (the session is held while sleeping): each run takes tens of milliseconds.
    let worker = Worker::start("w", &scheduler, &["--throttle", "30"]);
    scheduler.wait_ready(&["w"]).await;
    let direct = worker.inference().await;
    for _ in 0..3 {
        let burst: Vec<_> = (0..12)
            .map(|_| {
                let mut c = direct.clone();
                tokio::spawn(async move {
                    // The largest batch, so the run itself outlasts the deadline.
                    let mut request = tonic::Request::new(image_request(8));
                    request.set_timeout(Duration::from_millis(3));
                    let _ = c.model_infer(request).await;
                })
            })
            .collect();
        for task in burst {
            task.await.expect("task");
        }
        // At once: the runs the burst started are still going.
        let followers: Vec<_> = (0..4)
            .map(|_| {
                let mut c = direct.clone();
                tokio::spawn(async move { c.model_infer(image_request(1)).await })
            })
            .collect();
        for task in followers {
            task.await
                .expect("task")
                .expect("served once a session is free, not refused");
        }
    }
}

/// A worker on its own link (a network namespace) whose link is cut mid-load, with two
/// scheduler replicas on etcd it reports to: every request is still served (the
/// scheduler's keepalive drops the dead connection and the requests go to the other
/// worker), the worker turns NotReady on both replicas, and once the link is back it is
/// Ready on both again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_link_is_cut_mid_load_loses_no_request_and_comes_back() {
    let Some(net) = Netns::create() else {
        return;
    };
    let etcd = Etcd::start();
    let store = etcd.store_address("link");
    let replicas: Vec<Scheduler> = (0..2)
        .map(|_| {
            let cluster = format!("{}:{}", net.host_ip(), free_port());
            Scheduler::start_full(
                TEST_SCHEDULER_CONFIG,
                &["--cluster-listen", &cluster, "--store", &store],
            )
        })
        .collect();
    let both = format!("{},{}", replicas[0].cluster_addr, replicas[1].cluster_addr);
    let remote = Worker::start_in_netns_reporting_to(
        "remote",
        &both,
        &net.name,
        net.ns_ip(),
        &["--throttle", "20"],
    );
    assert!(remote.addr.starts_with(net.ns_ip()), "{}", remote.addr);
    let _local = Worker::start_reporting_to("local", &both, &models_dir(), &["--throttle", "20"]);
    for r in &replicas {
        r.wait_ready(&["remote", "local"]).await;
    }
    let (served_by, _) = load_through(&replicas[0], 3, || net.set_link(false)).await;
    assert!(
        served_by.get("remote").copied().unwrap_or(0) > 0
            && served_by.get("local").copied().unwrap_or(0) > 0,
        "{served_by:?}"
    );
    for (i, r) in replicas.iter().enumerate() {
        let not_ready = wait_until(SOON, || async {
            r.worker_state("remote").await == Some(WorkerState::NotReady)
        })
        .await;
        assert!(
            not_ready,
            "replica {i}: {:?}",
            r.worker_state("remote").await
        );
    }
    net.set_link(true);
    for (i, r) in replicas.iter().enumerate() {
        let back = wait_until(SOON, || async {
            r.worker_state("remote").await == Some(WorkerState::Ready)
        })
        .await;
        assert!(back, "replica {i}: {:?}", r.worker_state("remote").await);
    }
}
