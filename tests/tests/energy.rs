//! Energy (issue #14) with real processes: battery as overflow capacity.

use localml_tests::*;

/// Issue #14's case: one fast PC that lost mains power and two slower PCs on mains. The
/// battery PC rests while the mains PCs can start requests within the default profile's
/// wait budget (50 ms), and takes overflow when they cannot. (That the `latency` profile
/// lets it compete on score is shown in PowerState's unit tests and by the simulator,
/// whose `latency` rows equal the previous `default` ones.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn battery_is_overflow_capacity_under_the_default_profile() {
    use localml_proto::localml::v1::PowerSource;
    let sysfs = TempDir::new("sysfs-overflow");
    write_power_supply(sysfs.path(), "AC", &[("type", "Mains"), ("online", "0")]);
    write_power_supply(
        sysfs.path(),
        "BAT0",
        &[
            ("type", "Battery"),
            ("capacity", "80"),
            ("status", "Discharging"),
        ],
    );
    let scheduler = Scheduler::start();
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    // Three times as slow: with the debug build's latencies (about 12 ms a request on the desks)
    // a few requests ahead stay well within the budget, and an overload well over it.
    // The throttle sleeps, so the slow PCs do not take the test's CPU.
    let _desk1 = Worker::start("desk1", &scheduler, &["--throttle", "3"]);
    let _desk2 = Worker::start("desk2", &scheduler, &["--throttle", "3"]);
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

    // 32 in flight, four times the desks' capacity limit (4 outstanding a session each):
    // requests wait in the scheduler, the desks cannot start them within the budget, and
    // the laptop helps.
    let heavy = served_by(&scheduler, &request, 300, 32).await;
    let laptop = heavy.get("laptop").copied().unwrap_or(0);
    eprintln!("32 in flight: {heavy:?}");
    assert!(
        laptop * 10 > 300 * 3,
        "more than 30% on battery under overload: {heavy:?}"
    );
}
