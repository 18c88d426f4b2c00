//! Unit tests of the worker table: lifecycle, lookups, snapshots, listings.

use super::listing::conditions;
use super::*;

fn status(name: &str, models: &[(&str, &str)]) -> pb::WorkerStatus {
    pb::WorkerStatus {
        name: name.into(),
        inference_address: "127.0.0.1:1".into(),
        models: models
            .iter()
            .map(|(m, v)| pb::LoadedModel {
                name: m.to_string(),
                version: v.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn names(lookup: Lookup) -> Vec<String> {
    match lookup {
        Lookup::Found(c) => {
            let mut n: Vec<String> = c.iter().map(|c| c.name.clone()).collect();
            n.sort();
            n
        }
        _ => Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn store_registrations_never_replace_a_worker_that_reports_here() {
    let reg = Workers::new(1 << 20);
    let t0 = Instant::now();
    let direct = reg.join(status("a", &[("m", "1")]), t0);
    reg.mark_unreachable(&direct, "connection refused");
    // A late registration from the store (its own earlier write) changes nothing:
    // the entry stays the direct one, still NotReady.
    reg.apply_remote(status("a", &[("m", "1")]), t0);
    assert_eq!(reg.insert(status("a", &[]), t0, true), direct);
    let listed = reg.list(t0);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, direct);
    assert_eq!(listed[0].state, pb::WorkerState::NotReady as i32);
    // A worker known only through the store is added, then refreshed.
    reg.apply_remote(status("b", &[("m", "1")]), t0);
    assert_eq!(names(reg.lookup("m", "1")), vec!["b"]);
    reg.remote_lease_expired("b");
    assert!(names(reg.lookup("m", "1")).is_empty());
}

#[tokio::test(start_paused = true)]
async fn lease_expiry_and_recovery() {
    let reg = Workers::new(1 << 20);
    let t0 = Instant::now();
    let a = reg.join(status("a", &[("m", "1")]), t0);
    let b = reg.join(status("b", &[("m", "1")]), t0);
    assert_eq!(names(reg.lookup("m", "")), vec!["a", "b"]);
    let grace = Duration::from_secs(2);
    let forget = Duration::from_secs(60);
    // b keeps reporting, a goes silent.
    reg.report(&b, status("b", &[("m", "1")]), t0 + Duration::from_secs(2));
    reg.check_leases(t0 + Duration::from_secs(3), grace, forget);
    assert_eq!(names(reg.lookup("m", "1")), vec!["b"]);
    let listed = reg.list(t0 + Duration::from_secs(3));
    let a_info = listed.iter().find(|w| w.id == a).expect("a listed");
    assert_eq!(a_info.state, pb::WorkerState::NotReady as i32);
    assert!(
        a_info.state_reason.contains("no status report"),
        "{}",
        a_info.state_reason
    );
    // a comes back.
    assert!(reg.report(&a, status("a", &[("m", "1")]), t0 + Duration::from_secs(4)));
    assert_eq!(names(reg.lookup("m", "1")), vec!["a", "b"]);
    // silent past forget_after: removed, and its id is unknown.
    reg.check_leases(t0 + Duration::from_secs(100), grace, forget);
    assert!(reg.list(t0).is_empty());
    assert!(!reg.report(&a, status("a", &[]), t0 + Duration::from_secs(101)));
}

#[tokio::test(start_paused = true)]
async fn lookups_distinguish_unknown_model_version_and_no_ready_worker() {
    let reg = Workers::new(1 << 20);
    let t0 = Instant::now();
    let a = reg.join(status("a", &[("m", "1"), ("m", "2")]), t0);
    reg.join(status("b", &[("m", "1")]), t0);
    assert!(matches!(reg.lookup("x", ""), Lookup::UnknownModel));
    match reg.lookup("m", "3") {
        Lookup::UnknownVersion { available } => assert_eq!(available, vec!["1", "2"]),
        _ => panic!("expected UnknownVersion"),
    }
    // Empty version routes to the newest version.
    assert_eq!(names(reg.lookup("m", "")), vec!["a"]);
    assert_eq!(names(reg.lookup("m", "1")), vec!["a", "b"]);
    reg.leave(&a);
    match reg.lookup("m", "2") {
        Lookup::NoReadyWorker { details } => {
            assert!(details[0].contains("Draining"), "{details:?}")
        }
        _ => panic!("expected NoReadyWorker"),
    }
    // With a draining, the newest Ready version is 1.
    assert_eq!(names(reg.lookup("m", "")), vec!["b"]);
}

#[tokio::test(start_paused = true)]
async fn rejoin_under_same_name_replaces_and_unreachable_is_not_ready() {
    let reg = Workers::new(1 << 20);
    let t0 = Instant::now();
    let old = reg.join(status("a", &[("m", "1")]), t0);
    let new = reg.join(status("a", &[("m", "1")]), t0);
    assert_ne!(old, new);
    assert_eq!(reg.list(t0).len(), 1);
    assert!(!reg.report(&old, status("a", &[]), t0));
    reg.mark_unreachable(&new, "connection refused");
    assert!(matches!(reg.lookup("m", ""), Lookup::NoReadyWorker { .. }));
    reg.report(&new, status("a", &[("m", "1")]), t0);
    assert_eq!(names(reg.lookup("m", "")), vec!["a"]);
}

#[test]
fn conditions_table() {
    let with = |free: u64, total: u64, source: pb::PowerSource| pb::WorkerStatus {
        ram_free_bytes: free,
        ram_total_bytes: total,
        power: Some(pb::PowerStatus {
            source: source as i32,
            ..Default::default()
        }),
        ..Default::default()
    };
    let cases = [
        (with(50, 100, pb::PowerSource::Mains), vec![]),
        (with(4, 100, pb::PowerSource::Mains), vec!["MemoryPressure"]),
        (with(50, 100, pb::PowerSource::Battery), vec!["OnBattery"]),
        (
            with(1, 100, pb::PowerSource::Ups),
            vec!["MemoryPressure", "OnUPS"],
        ),
        (with(0, 0, pb::PowerSource::Unknown), vec![]),
    ];
    for (status, expected) in cases {
        assert_eq!(conditions(&status), expected);
    }
}

#[test]
fn answers_since_a_report_are_taken_off_its_counts() {
    use super::routing::since_report;
    assert_eq!(since_report(6, 2, 0), (6, 2));
    assert_eq!(since_report(6, 2, 1), (5, 2), "a queued one started");
    assert_eq!(since_report(1, 2, 2), (0, 1));
    assert_eq!(since_report(0, 2, 5), (0, 0));
    assert_eq!(since_report(u32::MAX, u32::MAX, u32::MAX), (0, u32::MAX));
}

#[tokio::test(start_paused = true)]
async fn a_snapshot_counts_a_report_less_what_was_answered_since() {
    let reg = Workers::new(1 << 20);
    let t0 = Instant::now();
    let mut busy = status("a", &[("m", "1"), ("other", "1")]);
    busy.models[0].queue_depth = 6;
    busy.models[0].in_flight = 2;
    busy.models[1].queue_depth = 4;
    let id = reg.join(busy.clone(), t0);
    let handle = || {
        let Ok((_, _, handles)) = reg.snapshot("m", "1") else {
            panic!("m not found");
        };
        Arc::clone(&handles[0])
    };
    handle().note_answered("m", "1");
    assert!(reg.report(&id, busy, t0));
    let counts = |model: &str| {
        let Ok((_, snapshot, _)) = reg.snapshot(model, "1") else {
            panic!("{model} not found");
        };
        let m = &snapshot.workers[0].models[0];
        (m.queue_depth, m.in_flight)
    };
    assert_eq!(counts("m"), (6, 2), "answers before the report are in it");
    // Three answers for m came back before the next report: the worker holds five of
    // m's; the other model's count is its own.
    for _ in 0..3 {
        handle().note_answered("m", "1");
    }
    assert_eq!(counts("m"), (3, 2));
    assert_eq!(counts("other"), (4, 0));
    // Calls dropped are not answers (the worker may still run them): nothing changes.
    handle()
        .dispatched
        .store(0, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counts("m"), (3, 2));
    // A status from the store (another replica's report) is not corrected.
    let remote = Workers::new(1 << 20);
    let mut seen = status("b", &[("m", "1")]);
    seen.models[0].queue_depth = 6;
    remote.apply_remote(seen, t0);
    let Ok((_, _, handles)) = remote.snapshot("m", "1") else {
        panic!("m not found");
    };
    handles[0].note_answered("m", "1");
    let Ok((_, snapshot, _)) = remote.snapshot("m", "1") else {
        panic!("m not found");
    };
    assert_eq!(snapshot.workers[0].models[0].queue_depth, 6);
}
