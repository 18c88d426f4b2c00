//! The scheduling framework with real processes: heterogeneous speed, power state,
//! cordon, label selectors, profiles and provider requests.

use std::process::Command;
use std::time::Duration;

use localml_proto::inference::ModelInferRequest;
use localml_tests::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_faster_worker_serves_clearly_more() {
    let scheduler = Scheduler::start();
    let _fast = Worker::start("fast", &scheduler, &[]);
    let _slow1 = Worker::start("slow1", &scheduler, &["--throttle", "4"]);
    let _slow2 = Worker::start("slow2", &scheduler, &["--throttle", "4"]);
    scheduler.wait_ready(&["fast", "slow1", "slow2"]).await;
    // Batches of 8 so inference, which the throttle slows, outweighs the network.
    let counts = served_by(&scheduler, &image_request(8), 300, 6).await;
    let get = |n: &str| counts.get(n).copied().unwrap_or(0);
    eprintln!("served: {counts:?}");
    assert_eq!(get("fast") + get("slow1") + get("slow2"), 300);
    assert!(
        get("fast") * 2 > get("slow1") * 3 && get("fast") * 2 > get("slow2") * 3,
        "the fast worker serves clearly more: {counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_battery_stops_receiving_new_work_and_gets_it_back_on_mains() {
    use localml_proto::localml::v1::PowerSource;
    let sysfs = laptop_sysfs("sysfs-sched", true, "70", &[]);
    let scheduler = Scheduler::start();
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    let _desktop = Worker::start("desktop", &scheduler, &[]);
    scheduler.wait_ready(&["laptop", "desktop"]).await;
    let request = image_request(1);
    let before = served_by(&scheduler, &request, 100, 4).await;
    assert!(
        before.get("laptop").copied().unwrap_or(0) > 10,
        "on mains the laptop shares the work: {before:?}"
    );

    // The grid fails.
    write_power_supply(sysfs.path(), "AC", &[("online", "0")]);
    write_power_supply(
        sysfs.path(),
        "BAT0",
        &[("capacity", "60"), ("status", "Discharging")],
    );
    let switched = wait_until(SOON, || async {
        reported_power(&scheduler, "laptop").await == Some(PowerSource::Battery as i32)
    })
    .await;
    assert!(switched, "battery reported");
    // One at a time: the desktop always has capacity.
    let on_battery = served_by(&scheduler, &request, 100, 1).await;
    let laptop = on_battery.get("laptop").copied().unwrap_or(0);
    assert!(
        laptop <= 10,
        "at most 10% of new work while on battery: {on_battery:?}"
    );

    // Mains returns; after the hysteresis the laptop gets work again.
    write_power_supply(sysfs.path(), "AC", &[("online", "1")]);
    write_power_supply(sysfs.path(), "BAT0", &[("status", "Charging")]);
    let back = wait_until(SOON, || async {
        // One at a time: the desktop always has capacity, so only power decides.
        served_by(&scheduler, &request, 20, 1)
            .await
            .get("laptop")
            .copied()
            .unwrap_or(0)
            > 2
    })
    .await;
    assert!(back, "work returns to the laptop on mains");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_worker_gets_nothing_new() {
    let scheduler = Scheduler::start();
    let _a = Worker::start("a", &scheduler, &[]);
    let _b = Worker::start("b", &scheduler, &[]);
    scheduler.wait_ready(&["a", "b"]).await;
    let localml = |args: &[&str]| {
        let out = Command::new(bin("localml"))
            .args(args)
            .args(["--server", &scheduler.addr])
            .env("LOCALML_KEY", scheduler.admin_key())
            .output()
            .expect("run");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    localml(&["cordon", "a"]);
    assert!(localml(&["workers"])
        .lines()
        .any(|l| l.starts_with("a ") && l.contains("Cordoned")));
    let counts = served_by(&scheduler, &image_request(1), 60, 4).await;
    assert_eq!(counts.get("a"), None, "{counts:?}");
    assert_eq!(counts.get("b"), Some(&60));
    localml(&["uncordon", "a"]);
    let counts = served_by(&scheduler, &image_request(1), 60, 4).await;
    assert!(counts.get("a").copied().unwrap_or(0) > 0, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_profiles_and_providers() {
    let scheduler = Scheduler::start();
    let _library = Worker::start("library", &scheduler, &["--labels", "site=library"]);
    let _school = Worker::start("school", &scheduler, &["--labels", "site=school"]);
    scheduler.wait_ready(&["library", "school"]).await;
    let mut c = scheduler.inference().await;
    let to_library = with_param(image_request(1), "localml.selector", "site=library");
    let counts = served_by(&scheduler, &to_library, 20, 2).await;
    assert_eq!(counts.get("library"), Some(&20), "{counts:?}");
    let energy = with_param(image_request(1), "localml.profile", "energy-saver");
    assert!(
        c.model_infer(energy).await.is_ok(),
        "the energy-saver profile serves"
    );

    let cases = [
        (
            "localml.selector",
            "site=clinic",
            Code::FailedPrecondition,
            "0/2 workers are available",
        ),
        (
            "localml.selector",
            "site",
            Code::InvalidArgument,
            "localml.selector",
        ),
        (
            "localml.profile",
            "fastest",
            Code::InvalidArgument,
            "unknown profile 'fastest'",
        ),
        (
            "localml.provider",
            "gpu",
            Code::FailedPrecondition,
            "asks for gpu",
        ),
        (
            "localml.provider",
            "tpu",
            Code::InvalidArgument,
            "expected gpu, cpu or any",
        ),
    ];
    for (key, value, code, fragment) in cases {
        let status = c
            .model_infer(with_param(image_request(1), key, value))
            .await
            .expect_err(value);
        assert_eq!(status.code(), code, "{key}={value}: {}", status.message());
        assert!(
            status.message().contains(fragment),
            "{key}={value}: {}",
            status.message()
        );
    }
}

#[test]
fn an_invalid_profile_stops_the_scheduler_naming_the_field() {
    let dir = TempDir::new("badprofile");
    let config = dir.path().join("scheduler.yaml");
    std::fs::write(
        &config,
        "profiles:\n  - name: default\n    plugins:\n      - {name: PowerState, args: {critical_percent: 10}}\n",
    )
    .expect("write");
    let mut child = Command::new(bin("localml-scheduler"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--config",
        ])
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the scheduler did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read");
    assert!(!status.success());
    assert!(stderr.contains("profiles[0].plugins[0].args"), "{stderr}");
    assert!(stderr.contains("critical_percent"), "{stderr}");
}

/// Starts `n` requests of `tenant` at once; they complete in the background, counting into
/// the returned counter.
async fn flood(
    scheduler: &Scheduler,
    request: &ModelInferRequest,
    n: usize,
) -> (
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    Vec<tokio::task::JoinHandle<Result<(), tonic::Status>>>,
) {
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Every client first, then every request: sent together, not one connection apart.
    let mut clients = Vec::new();
    for _ in 0..n {
        clients.push(scheduler.inference().await);
    }
    let mut tasks = Vec::new();
    for mut c in clients {
        let (request, done) = (request.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            c.model_infer(request).await?;
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }));
    }
    (done, tasks)
}

/// Requests waiting in the scheduler's queue, from its `/metrics`.
async fn scheduler_queued(scheduler: &Scheduler) -> String {
    let Some(addr) = scheduler.http_addr.as_deref() else {
        return "unknown".into();
    };
    http_get(addr, "/metrics")
        .and_then(|(_, text)| {
            text.lines()
                .find(|l| l.starts_with("localml_scheduler_queue_depth"))
                .map(str::to_string)
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Whether the scheduler comes to have `n` requests outstanding on its workers at once
/// (the rest queue) within [`SOON`].
async fn comes_to_dispatch(scheduler: &Scheduler, n: u32) -> bool {
    wait_until(SOON, || async {
        scheduler
            .workers()
            .await
            .iter()
            .map(|w| w.dispatched_in_flight)
            .sum::<u32>()
            >= n
    })
    .await
}

/// Waits until the scheduler has `n` requests outstanding on its workers (the rest queue).
async fn wait_dispatched(scheduler: &Scheduler, n: u32) {
    let full = comes_to_dispatch(scheduler, n).await;
    let workers = scheduler.workers().await;
    let seen: Vec<String> = workers
        .iter()
        .map(|w| {
            let models: Vec<String> = w
                .status
                .iter()
                .flat_map(|s| s.models.iter())
                .map(|m| {
                    format!(
                        "{} queued {} in flight {}",
                        m.name, m.queue_depth, m.in_flight
                    )
                })
                .collect();
            format!(
                "{} state {} ({}) dispatched {} {models:?}",
                w.status.as_ref().map_or("", |s| s.name.as_str()),
                w.state,
                w.state_reason,
                w.dispatched_in_flight
            )
        })
        .collect();
    assert!(full, "workers not saturated with {n}: {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_go_by_priority_and_tenant_fairness() {
    let scheduler = Scheduler::start();
    // image_classifier has 2 sessions; Capacity allows 4 outstanding per session: 8.
    let _slow = Worker::start("slow", &scheduler, &["--throttle", "100"]);
    scheduler.wait_ready(&["slow"]).await;
    let heavy = with_param(image_request(1), "localml.tenant", "heavy");
    // 60 queued: in arrival order the two below would finish after at least 52 of them;
    // overtaking, after a few rounds of 8 (up to 25 seen under CI load).
    let (heavy_done, heavy_tasks) = flood(&scheduler, &heavy, 60).await;
    wait_dispatched(&scheduler, 8).await;

    // Another tenant, and a high-priority request of the heavy tenant, overtake the backlog.
    let light = with_param(image_request(1), "localml.tenant", "light");
    let urgent = with_param(
        with_param(image_request(1), "localml.tenant", "heavy"),
        "localml.priority",
        "10",
    );
    let mut c = scheduler.inference().await;
    for (name, request) in [("light tenant", light), ("priority 10", urgent)] {
        c.model_infer(request)
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"));
        let behind = heavy_done.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            behind < 40,
            "{name} waited for {behind} of the 60 heavy requests"
        );
    }
    for t in heavy_tasks {
        t.await
            .expect("task")
            .expect("every heavy request is served in the end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ends_wakes_the_queue() {
    // The worker reports every 30 s: a queued request can only be woken in time by the end
    // of another (the queue does not poll).
    let scheduler = Scheduler::start_with(
        "report_interval_ms: 30000\nworker_grace_period_ms: 120000\nqueue_safety_net_ms: 0\n",
    );
    let _slow = Worker::start("slow", &scheduler, &["--throttle", "20"]);
    scheduler.wait_ready(&["slow"]).await;
    // image_classifier takes 8 at once on this worker: 16 of 24 queue.
    let request = image_request(1);
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(scheduler.inference().await);
    }
    let started = std::time::Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(Duration::from_secs(15));
            tokio::spawn(async move { c.model_infer(request).await.map(|_| ()) })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        t.await
            .expect("task")
            .unwrap_or_else(|s| panic!("request {i} after {:?}: {s:?}", started.elapsed()));
    }
    eprintln!("24 requests served in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_hear_when_their_only_worker_is_gone() {
    // The worker is kept full by clients of its own (its reports say so), so requests
    // through the scheduler queue with none of them in flight; then the worker is killed.
    // No request of the scheduler's ends and no report comes again: only the worker
    // turning NotReady can tell the queued requests (no deadline) that they will not run.
    let scheduler =
        Scheduler::start_with(&format!("{TEST_SCHEDULER_CONFIG}queue_safety_net_ms: 0\n"));
    let mut slow = Worker::start("doomed", &scheduler, &["--throttle", "400"]);
    scheduler.wait_ready(&["doomed"]).await;
    let direct = slow.inference().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for _ in 0..16 {
        let (mut c, stop) = (direct.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                if c.model_infer(image_request(1)).await.is_err() {
                    break;
                }
            }
        });
    }
    let full = wait_until(SOON, || async {
        scheduler.workers().await.iter().any(|w| {
            w.status.as_ref().is_some_and(|s| {
                s.models
                    .iter()
                    .any(|m| m.name == "image_classifier" && m.queue_depth + m.in_flight >= 8)
            })
        })
    })
    .await;
    assert!(full, "the worker never reported itself full");
    let (_, tasks) = flood(&scheduler, &image_request(1), 5).await;
    // Time for them to reach the queue (they fail the same way if they have not).
    tokio::time::sleep(Duration::from_millis(500)).await;
    slow.process.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let all = futures::future::join_all(tasks);
    let results = tokio::time::timeout(SOON, all)
        .await
        .expect("queued requests were left waiting after their only worker died");
    for (i, result) in results.into_iter().enumerate() {
        match result.expect("task") {
            // Served before the kill.
            Ok(()) => {}
            Err(s) => assert!(matches!(s.code(), Code::Unavailable), "request {i}: {s:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_resource_exhausted_and_a_deadline_applies_while_queued() {
    let scheduler =
        Scheduler::start_with(&format!("{TEST_SCHEDULER_CONFIG}max_queued_requests: 4\n"));
    // Slow enough that the second burst below stays in flight for a while (observed by
    // polling every 100 ms) and the last request's 200 ms pass while it is queued.
    let _slow = Worker::start("slow", &scheduler, &["--throttle", "400"]);
    scheduler.wait_ready(&["slow"]).await;
    let (_, tasks) = flood(&scheduler, &image_request(1), 30).await;
    let mut exhausted = 0;
    let mut served = 0;
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => served += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                assert!(s.message().contains("queue is full"), "{}", s.message());
                exhausted += 1;
            }
        }
    }
    assert!(exhausted > 0, "some requests found the queue full");
    assert!(
        served >= 8 + 4,
        "the dispatched and the queued ones were served: {served}"
    );

    // The worker's reports say it is idle again first: a report from the busy moments
    // above, still standing, would make the scheduler queue the next burst (four) and
    // refuse the rest, so eight would never be dispatched.
    let idle = wait_until(SOON, || async {
        scheduler.workers().await.iter().all(|w| {
            w.dispatched_in_flight == 0
                && w.status
                    .iter()
                    .flat_map(|s| s.models.iter())
                    .all(|m| m.queue_depth == 0 && m.in_flight == 0)
        })
    })
    .await;
    assert!(
        idle,
        "the worker reports itself idle once the first burst is served"
    );
    let (busy_done, _busy) = flood(&scheduler, &image_request(1), 10).await;
    let full = comes_to_dispatch(&scheduler, 8).await;
    assert!(
        full,
        "eight of the second burst were never in flight together; {} of 10 were served, {} queued now",
        busy_done.load(std::sync::atomic::Ordering::SeqCst),
        scheduler_queued(&scheduler).await
    );
    let mut c = scheduler.inference().await;
    let mut request = tonic::Request::new(image_request(1));
    request.set_timeout(Duration::from_millis(200));
    let status = c
        .model_infer(request)
        .await
        .expect_err("stays queued past its deadline");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
}

/// Request payloads held by the scheduler (queued or in flight) are bounded in bytes, not
/// only in count: beyond `max_queued_bytes` a request gets RESOURCE_EXHAUSTED at once,
/// naming the budget, and once the held ones are served new ones are taken again (#11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_request_bytes_are_bounded() {
    // One image request is about 12 KiB: about five fit in 64 KiB.
    let scheduler = Scheduler::start_with(&format!(
        "{TEST_SCHEDULER_CONFIG}max_message_bytes: 65536\nmax_queued_bytes: 65536\n"
    ));
    let _slow = Worker::start("slow", &scheduler, &["--throttle", "100"]);
    scheduler.wait_ready(&["slow"]).await;
    let (_, tasks) = flood(&scheduler, &image_request(1), 20).await;
    let (mut exhausted, mut served) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => served += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                assert!(s.message().contains("max_queued_bytes"), "{}", s.message());
                assert_eq!(
                    s.metadata()
                        .get("grpc-retry-pushback-ms")
                        .and_then(|v| v.to_str().ok()),
                    Some("200"),
                    "a retry hint"
                );
                exhausted += 1;
            }
        }
    }
    assert!(
        exhausted > 0 && served > 0,
        "served {served}, refused {exhausted}"
    );
    let mut c = scheduler.inference().await;
    c.model_infer(image_request(1))
        .await
        .expect("taken again once the held requests are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_queue_refuses_at_once_what_it_cannot_serve_in_time() {
    // image_classifier on a worker 100 times slower (tens of milliseconds per request in
    // a debug build), two sessions. The queue admits an expected wait of 1.5 s. (At 300
    // times, a loaded CI run measured a pace at which not even one queued request fit.)
    let scheduler =
        Scheduler::start_with(&format!("{TEST_SCHEDULER_CONFIG}max_queue_wait_ms: 1500\n"));
    let _slow = Worker::start("slow", &scheduler, &["--throttle", "100"]);
    scheduler.wait_ready(&["slow"]).await;
    // Latency samples first, so the scheduler knows the worker's pace (reported with the
    // worker's next status; the first runs are slower, the average settles over ten).
    let mut c = scheduler.inference().await;
    for _ in 0..10 {
        c.model_infer(image_request(1)).await.expect("warm-up");
    }
    tokio::time::sleep(Duration::from_millis(600)).await;

    // 150 requests at once, seconds of work: what the expected wait admits is served, the
    // rest is refused at once with RESOURCE_EXHAUSTED and a retry hint, naming the bound.
    let (_, tasks) = flood(&scheduler, &image_request(1), 150).await;

    // Meanwhile, with that backlog, a request whose deadline the expected wait cannot
    // meet gets DEADLINE_EXCEEDED at once, saying so, instead of waiting it out.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut request = tonic::Request::new(image_request(1));
    request.set_timeout(Duration::from_millis(300));
    let status = c
        .model_infer(request)
        .await
        .expect_err("cannot be served within 300 ms");
    assert_eq!(
        status.code(),
        Code::DeadlineExceeded,
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("is longer than the request's deadline leaves"),
        "refused at once, not timed out in the queue: {}",
        status.message()
    );

    let (mut served, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(()) => served += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
                assert!(
                    s.message().contains("is over max_queue_wait_ms (1500 ms)"),
                    "{}",
                    s.message()
                );
                assert!(
                    s.metadata().get("grpc-retry-pushback-ms").is_some(),
                    "a retry hint"
                );
                refused += 1;
            }
        }
    }
    eprintln!("{served} served, {refused} refused");
    assert!(served > 8, "queued requests that fit were served: {served}");
    assert!(refused > 0, "an expected wait over 1.5 s was refused");
}
