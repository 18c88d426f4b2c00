//! Energy (issue #14) with real processes: battery as overflow capacity, and a UPS read
//! through a real NUT upsd (Debian's nut-server with the dummy-ups driver).

use std::time::{Duration, Instant};

use localml_proto::localml::v1::{PowerSource, PowerStatus};
use localml_tests::*;

/// This file's tests run one at a time: the routing tests judge workers by their latency
/// against the default profile's 50 ms wait budget, which the others' processes would
/// inflate on a 2-core machine (the battery test once saw 23 % on battery in CI).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn power_of(scheduler: &Scheduler, name: &str) -> Option<(PowerStatus, Vec<String>)> {
    scheduler.workers().await.into_iter().find_map(|w| {
        let conditions = w.conditions.clone();
        w.status
            .filter(|s| s.name == name)
            .and_then(|s| s.power)
            .map(|p| (p, conditions))
    })
}

/// Waits until `name`'s reported power satisfies `check`; how long it took.
async fn wait_power(
    scheduler: &Scheduler,
    name: &str,
    what: &str,
    check: impl Fn(&PowerStatus, &[String]) -> bool,
) -> Duration {
    let start = Instant::now();
    let ok = wait_until(SOON, || async {
        power_of(scheduler, name)
            .await
            .is_some_and(|(p, c)| check(&p, &c))
    })
    .await;
    assert!(
        ok,
        "{name}: {what}; last reported {:?}",
        power_of(scheduler, name).await
    );
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ups_read_through_nut_moves_work_drains_on_low_battery_and_fails_safe() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut upsd = Upsd::start();
    let scheduler = Scheduler::start();
    let target = upsd.target();
    let _on_ups = Worker::start("on-ups", &scheduler, &["--ups", &target]);
    let _desk = Worker::start("desk", &scheduler, &[]);
    scheduler.wait_ready(&["on-ups", "desk"]).await;
    let request = image_request(1);

    // On line: mains, with the UPS named in the report.
    wait_power(&scheduler, "on-ups", "OL is mains", |p, _| {
        p.source == PowerSource::Mains as i32
            && p.ups_status == "OL"
            && p.ups == target
            && p.battery_runtime_seconds == Some(3600)
    })
    .await;
    // Work reaches it once mains has held for PowerState's recovery time (its first
    // reading may have been the driver's "no data yet", which counts as battery).
    let shares = || async {
        served_by(&scheduler, &request, 40, 4)
            .await
            .get("on-ups")
            .copied()
            .unwrap_or(0)
            > 4
    };
    assert!(
        wait_until(SOON, shares).await,
        "on line the PC shares the work"
    );

    // The grid fails: the UPS runs on battery.
    upsd.set("OB DISCHRG", "80", "1200");
    let took = wait_power(&scheduler, "on-ups", "OB is battery", |p, c| {
        p.source == PowerSource::Battery as i32
            && p.battery_percent == Some(80.0)
            && c.iter().any(|c| c == "OnBattery")
    })
    .await;
    eprintln!("OL -> OB seen by the scheduler after {took:?} (NUT poll 1 s, UPS read every 1 s, reports every 0.5 s)");
    // Two in flight: well within the one desk's two sessions, so the desk starts every
    // request within the 50 ms budget even when the whole suite loads this machine (at
    // four in flight on a loaded debug build, its wait could exceed the budget, and the
    // battery PC rightly helped).
    let on_battery = served_by(&scheduler, &request, 100, 2).await;
    assert!(
        on_battery.get("on-ups").copied().unwrap_or(0) <= 10,
        "on UPS battery the PC rests: {on_battery:?}"
    );

    // Low battery: no new work at all, even under the latency profile. (Charge and
    // runtime stay above PowerState's other limits, so only LB can turn it away.)
    upsd.set("OB LB", "60", "3600");
    wait_power(&scheduler, "on-ups", "LB is reported", |p, c| {
        p.low_battery && c.iter().any(|c| c == "LowBattery")
    })
    .await;
    let latency_first = with_param(request.clone(), "localml.profile", "latency");
    let low = served_by(&scheduler, &latency_first, 100, 4).await;
    assert_eq!(
        low.get("on-ups"),
        None,
        "low battery takes nothing: {low:?}"
    );

    // Mains returns: after the recovery time, work comes back.
    upsd.set("OL CHRG", "20", "3600");
    wait_power(&scheduler, "on-ups", "OL again", |p, _| {
        p.source == PowerSource::Mains as i32 && !p.low_battery
    })
    .await;
    assert!(wait_until(SOON, shares).await, "work returns on mains");

    // upsd stops answering: the PC's power is not known to be safe.
    upsd.stop_server();
    wait_power(
        &scheduler,
        "on-ups",
        "a silent upsd counts as battery",
        |p, _| {
            p.source == PowerSource::Battery as i32
                && p.ups_status.is_empty()
                && p.reason.contains("cannot be read")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_low_battery_stop_leaves_the_cluster_and_exits() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let upsd = Upsd::start();
    let scheduler = Scheduler::start();
    let mut worker = Worker::start(
        "stopper",
        &scheduler,
        &["--ups", &upsd.target(), "--on-low-battery", "stop"],
    );
    scheduler.wait_ready(&["stopper"]).await;
    upsd.set("OB LB", "5", "60");
    let status = worker
        .process
        .wait_exit(Duration::from_secs(30))
        .expect("the worker stops on low battery");
    assert!(status.success(), "a clean stop: {status:?}");
}

#[test]
fn bad_ups_addresses_are_refused_naming_the_form() {
    let out = std::process::Command::new(bin("localml-worker"))
        .args(["--ups", "no-host-here", "--scheduler", "127.0.0.1:1"])
        .output()
        .expect("run localml-worker");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected NAME@HOST[:PORT]"), "{err}");
}

/// Issue #14's case: one fast PC that lost mains power and two slower PCs on mains. The
/// battery PC rests while the mains PCs can start requests within the default profile's
/// wait budget (50 ms), and takes overflow when they cannot. (That the `latency` profile
/// lets it compete on score is shown in PowerState's unit tests and by the simulator,
/// whose `latency` rows equal the previous `default` ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_is_overflow_capacity_under_the_default_profile() {
    let _serial = ONE_AT_A_TIME.lock().await;
    use localml_proto::localml::v1::PowerSource;
    let sysfs = laptop_sysfs("sysfs-overflow", false, "80", &[]);
    let scheduler = Scheduler::start();
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    // Six times as slow: with the debug build's latencies a few requests ahead stay well
    // within the budget even on a loaded CI machine (at eight times, one clean-clone run
    // put 80 of 300 on the laptop at 4 in flight), and an overload well over it. The
    // throttle sleeps (holding the session), so the slow PCs do not take the test's CPU.
    let _desk1 = Worker::start("desk1", &scheduler, &["--throttle", "6"]);
    let _desk2 = Worker::start("desk2", &scheduler, &["--throttle", "6"]);
    scheduler.wait_ready(&["laptop", "desk1", "desk2"]).await;
    let on_battery = wait_until(SOON, || async {
        reported_power(&scheduler, "laptop").await == Some(PowerSource::Battery as i32)
    })
    .await;
    assert!(on_battery, "battery reported");
    let request = image_request(1);
    // Warm the latency estimates.
    served_by(&scheduler, &request, 40, 2).await;

    // 4 in flight: the desks have capacity (2 each) and start within the budget.
    let light = served_by(&scheduler, &request, 300, 4).await;
    let laptop = light.get("laptop").copied().unwrap_or(0);
    eprintln!("4 in flight: {light:?}");
    assert!(
        laptop * 10 <= 300,
        "at most 10% on battery while mains PCs have capacity: {light:?}"
    );

    // 48 in flight, six times the desks' capacity limit (4 outstanding a session each):
    // requests wait in the scheduler, the desks cannot start them within the budget, and
    // the laptop helps.
    let heavy = served_by(&scheduler, &request, 300, 48).await;
    let laptop = heavy.get("laptop").copied().unwrap_or(0);
    eprintln!("48 in flight: {heavy:?}");
    assert!(
        laptop * 10 > 300 * 3,
        "more than 30% on battery under overload: {heavy:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_battery_with_minutes_left_takes_no_new_work() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // 3 minutes: under PowerState's min_runtime_minutes (5).
    let sysfs = laptop_sysfs(
        "sysfs-runtime",
        false,
        "70",
        &[("time_to_empty_now", "180")],
    );
    let scheduler = Scheduler::start();
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    let _desk = Worker::start("desk", &scheduler, &[]);
    scheduler.wait_ready(&["laptop", "desk"]).await;
    wait_power(&scheduler, "laptop", "runtime reported", |p, _| {
        p.battery_runtime_seconds == Some(180)
    })
    .await;
    // Even speed-first, the laptop takes nothing while it has minutes left.
    let request = with_param(image_request(1), "localml.profile", "latency");
    let served = served_by(&scheduler, &request, 60, 4).await;
    assert_eq!(served.get("laptop"), None, "{served:?}");
}

/// A model's joules per inference as `name` last reported it, and whether its power
/// figure is an estimate.
async fn joules_of(scheduler: &Scheduler, name: &str) -> Option<(f64, bool)> {
    scheduler.workers().await.into_iter().find_map(|w| {
        let s = w.status.filter(|s| s.name == name)?;
        let estimated = s.power.as_ref().is_some_and(|p| p.energy_estimated);
        s.power.as_ref().and_then(|p| p.power_watts)?;
        s.models
            .iter()
            .find(|m| m.name == "image_classifier")
            .map(|m| (m.joules_per_inference, estimated))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn energy_saver_sends_work_to_the_pc_with_the_fewest_joules_per_inference() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scheduler = Scheduler::start();
    // Same speed, same CPU time per inference; the hungry PC draws 36 times more above
    // idle when busy (180 W against 5 W), so its inferences cost about 36 times more.
    let _frugal = Worker::start("frugal", &scheduler, &["--power-watts", "5,10"]);
    let hungry = Worker::start(
        "hungry",
        &scheduler,
        &["--power-watts", "20,200", "--http-listen", "127.0.0.1:0"],
    );
    scheduler.wait_ready(&["frugal", "hungry"]).await;
    let request = image_request(1);

    // Both serve until each has measured its energy per inference (2 s windows).
    let (s, r) = (&scheduler, &request);
    let measured = wait_until(SOON, || async move {
        served_by(s, r, 20, 2).await;
        let f = joules_of(s, "frugal").await;
        let h = joules_of(s, "hungry").await;
        f.is_some_and(|(j, _)| j > 0.0) && h.is_some_and(|(j, _)| j > 0.0)
    })
    .await;
    let frugal_j = joules_of(&scheduler, "frugal").await;
    let hungry_j = joules_of(&scheduler, "hungry").await;
    assert!(measured, "frugal {frugal_j:?}, hungry {hungry_j:?}");
    let (frugal_j, frugal_estimated) = frugal_j.expect("measured");
    let (hungry_j, _) = hungry_j.expect("measured");
    assert!(
        frugal_estimated,
        "configured watts, no RAPL here: an estimate"
    );
    assert!(
        hungry_j > frugal_j,
        "hungry {hungry_j} J/inference vs frugal {frugal_j}"
    );
    println!("measured: frugal {frugal_j:.6} J/inference, hungry {hungry_j:.6} J/inference");

    let counts = served_by(
        &scheduler,
        &with_param(request.clone(), "localml.profile", "energy-saver"),
        100,
        1,
    )
    .await;
    let frugal = counts.get("frugal").copied().unwrap_or(0);
    println!("energy-saver, 100 requests at 1 in flight: {counts:?}");
    assert!(
        frugal >= 90,
        "energy-saver prefers the frugal PC while it starts requests within the budget: {counts:?}"
    );

    // Operators see it: `localml workers` and the worker's /metrics.
    let table = localml_workers(&scheduler);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        table.lines().next().unwrap_or_default().contains("ENERGY"),
        "{table}"
    );
    for name in ["frugal", "hungry"] {
        assert!(
            line(name).contains(" W ") && line(name).contains("J/inf") && line(name).contains('~'),
            "{name}: watts and joules per inference, marked as an estimate: {table}"
        );
    }
    let http = hungry.http_addr.as_deref().expect("http");
    let (code, metrics) = http_get(http, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    for family in [
        "localml_worker_joules_per_inference{model=\"image_classifier\"",
        "localml_worker_model_energy_joules_total{model=\"image_classifier\"",
        "localml_worker_power_watts{estimated=\"true\"}",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
}

/// Writes a fake RAPL package whose counter reads `microjoules`.
fn fake_rapl(root: &std::path::Path, microjoules: u64) {
    let dir = root.join("intel-rapl:0");
    if !dir.join("name").exists() {
        // Written once: rewriting them while the worker reads could show it an empty name.
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("max_energy_range_uj"), "262143328850\n").expect("range");
        std::fs::write(dir.join("name"), "package-0\n").expect("name");
    }
    // Written whole, then renamed: the worker never reads half a number.
    let tmp = dir.join("energy_uj.tmp");
    std::fs::write(&tmp, format!("{microjoules}\n")).expect("energy");
    std::fs::rename(&tmp, dir.join("energy_uj")).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rapl_counter_is_measured_not_estimated() {
    let _serial = ONE_AT_A_TIME.lock().await;
    // A fake powercap tree whose package draws 5 W while the worker idles and 40 W while
    // it serves: the worker learns the 5 W floor from its idle windows and charges what
    // lies above it, in its process's share of the busy CPU time.
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let powercap = TempDir::new("powercap");
    fake_rapl(powercap.path(), 0);
    let root = powercap.path().to_path_buf();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let draw = std::sync::Arc::new(AtomicU64::new(5));
    let meter = {
        let (stop, draw) = (stop.clone(), draw.clone());
        std::thread::spawn(move || {
            let mut joules = 0.0;
            let mut last = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
                joules += last.elapsed().as_secs_f64() * draw.load(Ordering::SeqCst) as f64;
                last = Instant::now();
                fake_rapl(&root, (joules * 1e6) as u64);
            }
        })
    };
    let scheduler = Scheduler::start();
    let powercap_root = powercap.path().to_string_lossy().into_owned();
    let _metered = Worker::start("metered", &scheduler, &["--powercap-root", &powercap_root]);
    scheduler.wait_ready(&["metered"]).await;
    // Energy windows (2 s each) without inference: the idle floor. The draw is reported
    // once the first window closes.
    let reported = wait_until(SOON, || async {
        joules_of(&scheduler, "metered").await.is_some()
    })
    .await;
    assert!(reported, "the worker reports its draw");
    assert_eq!(
        joules_of(&scheduler, "metered").await.map(|(j, _)| j),
        Some(0.0),
        "nothing served, nothing charged"
    );
    draw.store(40, Ordering::SeqCst);
    let request = image_request(1);
    let (s, r) = (&scheduler, &request);
    let measured = wait_until(SOON, || async move {
        served_by(s, r, 20, 2).await;
        joules_of(s, "metered").await.is_some_and(|(j, _)| j > 0.0)
    })
    .await;
    let reading = joules_of(&scheduler, "metered").await;
    let watts = scheduler
        .workers()
        .await
        .into_iter()
        .find_map(|w| w.status.and_then(|s| s.power).and_then(|p| p.power_watts));
    stop.store(true, Ordering::SeqCst);
    let _ = meter.join();
    assert!(measured, "{reading:?}");
    let (joules, estimated) = reading.expect("measured");
    assert!(!estimated, "a RAPL counter is a measurement");
    assert!(
        watts.is_some_and(|w| w > 5.5 && w <= 50.0),
        "the fake package draws 40 W while serving: {watts:?}"
    );
    println!("fake RAPL, 5 W idle and 40 W serving: {joules:.6} J/inference");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_rapl_counter_where_the_machine_has_one() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let readable = std::fs::read_to_string("/sys/class/powercap/intel-rapl:0/energy_uj").is_ok();
    if !readable {
        println!(
            "skipped: this machine exposes no readable RAPL counter (/sys/class/powercap/intel-rapl:0/energy_uj); docs/energy.md says how to grant read access"
        );
        return;
    }
    let scheduler = Scheduler::start();
    let _w = Worker::start("rapl", &scheduler, &[]);
    scheduler.wait_ready(&["rapl"]).await;
    let request = image_request(1);
    let (s, r) = (&scheduler, &request);
    let measured = wait_until(SOON, || async move {
        served_by(s, r, 50, 2).await;
        joules_of(s, "rapl").await.is_some()
    })
    .await;
    let reading = joules_of(&scheduler, "rapl").await;
    assert!(measured, "{reading:?}");
    assert!(!reading.expect("measured").1, "RAPL is a measurement");
    println!("real RAPL: {reading:?}");
}
