//! `localml backup` / `localml restore` (issue #10, Deploy), with real processes: a
//! scheduler PC is replaced by restoring its backup into a new data directory, and the
//! cluster goes on with the same CA, API keys, join tokens and jobs; backups need the
//! admin scope and are private files; damaged files, stores that hold state and stores
//! in use are refused with a clear message, and nothing is written.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use localml_cli::client::{self, Connection};
use localml_proto::localml::v1::backup_client::BackupClient;
use localml_proto::localml::v1::jobs_client::JobsClient;
use localml_proto::localml::v1::trust_client::TrustClient;
use localml_proto::localml::v1::*;
use localml_tests::*;
use tonic::Code;

async fn connect(scheduler_addr: &str, key: Option<&str>) -> Connection {
    client::connect_with_key(scheduler_addr, Duration::from_secs(10), key)
        .await
        .expect("connect")
}

/// Runs `localml ARGS`, with `key` as LOCALML_KEY when given; (success, stdout, stderr).
fn run(args: &[&str], key: Option<&str>) -> (bool, String, String) {
    let mut command = Command::new(bin("localml"));
    command
        .args(args)
        .env("RUST_LOG", "off")
        .env_remove("LOCALML_KEY");
    if let Some(key) = key {
        command.env("LOCALML_KEY", key);
    }
    let out = command.output().expect("run localml");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Creates a key with the CLI, as an operator does; returns the printed key.
fn create_key(scheduler: &Scheduler, admin: &str, name: &str, scope: &str) -> String {
    let (ok, key, err) = run(
        &[
            "keys",
            "create",
            "--name",
            name,
            "--scope",
            scope,
            "--server",
            &scheduler.addr,
        ],
        Some(admin),
    );
    assert!(ok, "keys create {name}: {err}");
    key.trim().to_string()
}

/// Stops a scheduler as systemd would (SIGTERM) and waits until it exited.
fn stop(scheduler: &mut Scheduler) {
    scheduler.process.signal("TERM");
    assert!(
        scheduler.process.wait_exit(SOON).is_some(),
        "the scheduler did not stop"
    );
}

/// The cluster CA's certificate as the scheduler hands it out (with an operator
/// certificate).
async fn ca_pem(scheduler: &Scheduler, key: &str) -> String {
    TrustClient::new(connect(&scheduler.addr, Some(key)).await)
        .issue_certificate(IssueCertificateRequest {
            name: "backup-check".into(),
        })
        .await
        .expect("issue a certificate")
        .into_inner()
        .ca_pem
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_scheduler_pc_keeps_the_ca_keys_tokens_and_jobs() {
    let mut old = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--auth", "required"]);
    let worker_dir = TempDir::new("backup-worker");
    let w = Worker::start("w", &old, &["--data-dir", &text(worker_dir.path())]);
    old.wait_ready(&["w"]).await;
    let admin = old.admin_key();
    let app = create_key(&old, &admin, "app", "infer");
    let batch = create_key(&old, &admin, "batch", "jobs");
    let (ok, token, err) = run(
        &[
            "token",
            "create",
            "--ttl",
            "0",
            "--description",
            "spare PCs",
            "--server",
            &old.addr,
        ],
        Some(&admin),
    );
    assert!(ok, "token create: {err}");
    let token = token.trim().to_string();
    // A job that ran: its record and its result are state too.
    let mut jobs = JobsClient::new(connect(&old.addr, Some(&batch)).await);
    let job = jobs
        .submit(SubmitJobRequest {
            request: Some(image_request(1)),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    let succeeded = wait_until(SOON, || {
        let mut jobs = jobs.clone();
        let id = job.id.clone();
        async move {
            jobs.get(GetJobRequest { id })
                .await
                .is_ok_and(|j| j.into_inner().state == JobState::Succeeded as i32)
        }
    })
    .await;
    assert!(succeeded, "the job did not succeed before the backup");
    let ca = ca_pem(&old, &admin).await;

    let dir = TempDir::new("backup");
    let file = dir.path().join("cluster.backup");
    let (ok, out, err) = run(
        &["backup", &text(&file), "--server", &old.addr],
        Some(&admin),
    );
    assert!(ok, "backup: {err}");
    println!("{out}");
    assert!(
        out.contains(&localml_trust::sha256_hex(ca.as_bytes()))
            && out.contains("join tokens")
            && out.contains(", 1 job"),
        "the backup says what it holds: {out}"
    );
    assert!(
        err.contains("private key") && err.contains("password"),
        "the backup warns what the file gives away: {err}"
    );
    let mode = std::fs::metadata(&file)
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("backup file");
    assert_eq!(mode, 0o600, "the backup file is private");
    let (ok, _, err) = run(
        &["backup", &text(&file), "--server", &old.addr],
        Some(&admin),
    );
    assert!(
        !ok && err.contains("--force"),
        "an existing backup is not replaced without --force: {err}"
    );

    // The scheduler PC dies; a new one restores the backup into an empty data directory.
    stop(&mut old);
    drop(w);
    let mut restored = String::new();
    let new = Scheduler::start_prepared(TEST_SCHEDULER_CONFIG, &["--auth", "required"], |data| {
        let (ok, out, err) = run(&["restore", &text(&file), "--data-dir", &text(data)], None);
        assert!(ok, "restore: {err}");
        restored = out;
    });
    println!("{restored}");
    assert!(
        restored.contains("restored") && restored.contains("admin.key"),
        "restore says what to do next: {restored}"
    );

    // The same CA: the old token lets a new worker join, and the old worker rejoins with
    // its certificate alone (no token).
    assert_eq!(ca_pem(&new, &admin).await, ca, "the cluster CA is the same");
    let _w = Worker::start(
        "w",
        &new,
        &["--data-dir", &text(worker_dir.path()), "--token", ""],
    );
    let _w2 = Worker::start("w2", &new, &["--token", &token]);
    new.wait_ready(&["w", "w2"]).await;
    // The old keys work: the admin key from the old PC, and a client's infer key.
    assert_ne!(
        new.admin_key(),
        admin,
        "a new admin key was written at first start"
    );
    let mut inference = client::inference_client(connect(&new.addr, Some(&app)).await);
    inference
        .model_infer(image_request(1))
        .await
        .expect("the old infer key runs inference");
    let (ok, tokens, err) = run(&["token", "list", "--server", &new.addr], Some(&admin));
    assert!(ok && tokens.contains("spare PCs"), "{err}");
    // The job and its result are there.
    let mut jobs = JobsClient::new(connect(&new.addr, Some(&batch)).await);
    let again = jobs
        .get(GetJobRequest { id: job.id.clone() })
        .await
        .expect("the job is still there")
        .into_inner();
    assert_eq!(again.state, JobState::Succeeded as i32);
    assert!(again.result.is_some(), "with its result");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backups_need_admin_and_bad_restores_write_nothing() {
    let mut scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--auth", "required"]);
    let admin = scheduler.admin_key();
    let infer = create_key(&scheduler, &admin, "app", "infer");
    let dir = TempDir::new("backup-refusals");
    let file = dir.path().join("cluster.backup");

    // An infer key gets PERMISSION_DENIED, from the RPC and through the CLI, and no file.
    let refused = BackupClient::new(connect(&scheduler.addr, Some(&infer)).await)
        .backup(BackupRequest {})
        .await
        .map(|_| ())
        .expect_err("an infer key cannot read a backup");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("'admin' scope"),
        "{}",
        refused.message()
    );
    let (ok, _, err) = run(
        &["backup", &text(&file), "--server", &scheduler.addr],
        Some(&infer),
    );
    assert!(!ok && err.contains("'admin' scope"), "{err}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").collect();
    assert!(left.is_empty(), "a refused backup leaves no file: {left:?}");

    let (ok, first, err) = run(
        &["backup", &text(&file), "--server", &scheduler.addr],
        Some(&admin),
    );
    assert!(ok, "backup: {err}");

    // While the scheduler runs, its data directory cannot be restored into.
    let data = scheduler.data_dir();
    let (ok, _, err) = run(
        &[
            "restore",
            &text(&file),
            "--data-dir",
            &text(&data),
            "--force",
        ],
        None,
    );
    assert!(
        !ok && err.contains("stop the scheduler using"),
        "restoring under a running scheduler: {err}"
    );

    // Damaged files are refused, and nothing is created.
    let bytes = std::fs::read(&file).expect("read the backup");
    let mut flipped = bytes.clone();
    if let Some(last) = flipped.last_mut() {
        *last ^= 1;
    }
    let damaged = [
        ("truncated", bytes[..bytes.len() - 10].to_vec(), "truncated"),
        ("flipped", flipped, "corrupted"),
        ("empty", Vec::new(), "truncated"),
    ];
    for (name, content, reason) in damaged {
        let path = dir.path().join(name);
        std::fs::write(&path, content).expect("write");
        let target = dir.path().join(format!("restored-{name}"));
        let (ok, _, err) = run(
            &["restore", &text(&path), "--data-dir", &text(&target)],
            None,
        );
        assert!(!ok && err.contains(reason), "{name}: {err}");
        assert!(
            !target.exists(),
            "{name}: a refused restore created {target:?}"
        );
    }

    // A data directory that holds state: refused without --force, replaced with it.
    stop(&mut scheduler);
    let (ok, _, err) = run(&["restore", &text(&file), "--data-dir", &text(&data)], None);
    assert!(
        !ok && err.contains("already holds cluster state") && err.contains("--force"),
        "{err}"
    );
    let (ok, out, err) = run(
        &[
            "restore",
            &text(&file),
            "--data-dir",
            &text(&data),
            "--force",
        ],
        None,
    );
    assert!(ok && out.contains("replacing"), "{err}");
    assert!(
        !data.join("admin.key").exists() && data.join("admin.key.before-restore").exists(),
        "the replaced state's admin key file is set aside, so a new one is written: {out}"
    );

    // A stopped scheduler's data directory can be backed up offline: it holds the same.
    let offline = dir.path().join("offline.backup");
    let (ok, second, err) = run(
        &["backup", &text(&offline), "--data-dir", &text(&data)],
        None,
    );
    assert!(ok, "offline backup: {err}");
    let holds = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("it holds:"))
            .map(str::to_string)
    };
    assert!(holds(&first).is_some(), "{first}");
    assert_eq!(holds(&first), holds(&second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_backup_restores_into_etcd_and_a_running_replica_is_refused() {
    let mut embedded = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--auth", "required"]);
    let admin = embedded.admin_key();
    let ca = ca_pem(&embedded, &admin).await;
    let dir = TempDir::new("backup-etcd");
    let file = dir.path().join("cluster.backup");
    let (ok, _, err) = run(
        &["backup", &text(&file), "--server", &embedded.addr],
        Some(&admin),
    );
    assert!(ok, "backup: {err}");
    stop(&mut embedded);

    let etcd = Etcd::start();
    let store = etcd.store_address("restored");
    let (ok, out, err) = run(&["restore", &text(&file), "--store", &store], None);
    assert!(ok && out.contains("--store"), "restore into etcd: {err}");
    let (ok, _, err) = run(&["restore", &text(&file), "--store", &store], None);
    assert!(
        !ok && err.contains("already holds cluster state"),
        "a second restore without --force: {err}"
    );

    let replica = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--store", &store, "--auth", "required"],
    );
    assert_eq!(
        ca_pem(&replica, &admin).await,
        ca,
        "the replica serves the restored CA"
    );
    // Once the replica holds a lease (it leads), a restore is refused even with --force.
    let state = localml_store::StoreAddress::parse(&store, dir.path())
        .expect("address")
        .open()
        .await
        .expect("open etcd");
    let leading = wait_until(SOON, || {
        let state = std::sync::Arc::clone(&state);
        async move { state.get("leader").await.is_ok_and(|kv| kv.is_some()) }
    })
    .await;
    assert!(leading, "the replica leads");
    let (ok, _, err) = run(
        &["restore", &text(&file), "--store", &store, "--force"],
        None,
    );
    assert!(
        !ok && err.contains("a scheduler is running on this store"),
        "restoring under a running replica: {err}"
    );
    // A backup through the replica (of the etcd store) holds the same CA.
    let again = dir.path().join("again.backup");
    let (ok, out, err) = run(
        &["backup", &text(&again), "--server", &replica.addr],
        Some(&admin),
    );
    assert!(ok, "backup of the etcd store: {err}");
    assert!(
        out.contains("of the etcd store")
            && out.contains(&localml_trust::sha256_hex(ca.as_bytes())),
        "{out}"
    );
}
