//! Model deployments with real processes: on-demand workers load what the leader
//! assigns, scale up and down, follow selectors, unload on delete; specs survive a
//! scheduler crash; the CLI drives it.

use std::time::Duration;

use localml_cli::client;
use localml_proto::localml::v1::*;
use localml_tests::*;

const CONFIG: &str =
    "report_interval_ms: 200\nworker_grace_period_ms: 3000\nleader_lease_ms: 1000\n";

async fn holders(scheduler: &Scheduler, model: &str) -> Vec<String> {
    scheduler.serving(model).await
}

async fn apply(scheduler: &Scheduler, d: Deployment) -> Result<Deployment, tonic::Status> {
    scheduler
        .admin()
        .await
        .apply_deployment(d)
        .await
        .map(|r| r.into_inner())
}

async fn wait_holders(
    scheduler: &Scheduler,
    model: &str,
    check: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let ok = wait_until(SOON, || async { check(&holders(scheduler, model).await) }).await;
    let now = holders(scheduler, model).await;
    assert!(ok, "holders of {model}: {now:?}");
    now
}

async fn deployments(scheduler: &Scheduler) -> Vec<Deployment> {
    scheduler
        .admin()
        .await
        .list_deployments(ListDeploymentsRequest {})
        .await
        .expect("list")
        .into_inner()
        .deployments
}

fn image(replicas: u32) -> Deployment {
    Deployment {
        name: "images".into(),
        model: "image_classifier".into(),
        replicas,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_workers_follow_deployments() {
    let mut scheduler = Scheduler::start_with(CONFIG);
    let _a = Worker::start(
        "a",
        &scheduler,
        &["--load", "on-demand", "--labels", "room=lab"],
    );
    let _b = Worker::start(
        "b",
        &scheduler,
        &["--load", "on-demand", "--labels", "room=office"],
    );
    scheduler.wait_ready(&["a", "b"]).await;
    assert!(
        holders(&scheduler, "image_classifier").await.is_empty(),
        "nothing loaded at start"
    );
    let status = scheduler
        .inference()
        .await
        .model_infer(image_request(1))
        .await
        .expect_err("no worker has it yet");
    assert_eq!(status.code(), tonic::Code::NotFound);

    apply(&scheduler, image(1)).await.expect("apply");
    wait_holders(&scheduler, "image_classifier", |h| h.len() == 1).await;
    scheduler
        .inference()
        .await
        .model_infer(image_request(1))
        .await
        .expect("served once deployed");
    apply(&scheduler, image(2)).await.expect("scale up");
    wait_holders(&scheduler, "image_classifier", |h| h.len() == 2).await;
    apply(&scheduler, image(1)).await.expect("scale down");
    wait_holders(&scheduler, "image_classifier", |h| h.len() == 1).await;

    // A selector moves the replica to the matching worker.
    apply(
        &scheduler,
        Deployment {
            selector: [("room".to_string(), "office".to_string())].into(),
            ..image(1)
        },
    )
    .await
    .expect("apply selector");
    wait_holders(&scheduler, "image_classifier", |h| h == ["b"]).await;
    let list = deployments(&scheduler).await;
    assert_eq!(list.len(), 1);
    assert_eq!(
        (list[0].ready_replicas, list[0].workers.clone()),
        (1, vec!["b".to_string()])
    );

    // The spec is in the store: a crash changes nothing.
    scheduler.crash_and_restart();
    scheduler.wait_ready(&["a", "b"]).await;
    wait_holders(&scheduler, "image_classifier", |h| h == ["b"]).await;

    // Unsatisfiable: says why.
    apply(
        &scheduler,
        Deployment {
            name: "texts".into(),
            model: "text_classifier".into(),
            replicas: 1,
            selector: [("room".to_string(), "attic".to_string())].into(),
            ..Default::default()
        },
    )
    .await
    .expect("apply");
    let list = deployments(&scheduler).await;
    let texts = list.iter().find(|d| d.name == "texts").expect("texts");
    assert!(
        texts.message.contains("0 of 1 replicas ready; 0 eligible"),
        "{}",
        texts.message
    );

    let mut admin = scheduler.admin().await;
    admin
        .delete_deployment(DeleteDeploymentRequest {
            name: "images".into(),
        })
        .await
        .expect("delete");
    wait_holders(&scheduler, "image_classifier", |h| h.is_empty()).await;
    let status = admin
        .delete_deployment(DeleteDeploymentRequest {
            name: "images".into(),
        })
        .await
        .expect_err("gone");
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = apply(
        &scheduler,
        Deployment {
            name: "bad name".into(),
            ..image(1)
        },
    )
    .await
    .expect_err("invalid");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_applies_lists_and_deletes_deployments() {
    let scheduler = Scheduler::start_with(CONFIG);
    let _a = Worker::start("a", &scheduler, &["--load", "on-demand"]);
    scheduler.wait_ready(&["a"]).await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin("localml"))
            .arg("deployments")
            .args(args)
            .args(["--server", &scheduler.addr])
            .env("LOCALML_KEY", scheduler.admin_key())
            .env("RUST_LOG", "warn")
            .output()
            .expect("run localml deployments");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&[
        "apply",
        "stats",
        "--model",
        "tensor_stats",
        "--replicas",
        "1",
    ]);
    assert!(ok && out.contains("deployment stats applied"), "{out}{err}");
    wait_holders(&scheduler, "tensor_stats", |h| h == ["a"]).await;
    let listed = wait_until(Duration::from_secs(10), || async {
        run(&["list"])
            .1
            .lines()
            .any(|l| l.starts_with("stats") && l.contains("1/1") && l.contains(" a"))
    })
    .await;
    assert!(listed, "{}", run(&["list"]).1);
    let (ok, _, err) = run(&["apply", "x", "--model", "m", "--selector", "nope"]);
    assert!(!ok && err.contains("expected key=value"), "{err}");
    let (ok, out, err) = run(&["delete", "stats"]);
    assert!(ok && out.contains("deleted"), "{err}");
    wait_holders(&scheduler, "tensor_stats", |h| h.is_empty()).await;
    let (ok, _, err) = run(&["delete", "stats"]);
    assert!(!ok && err.contains("no deployment 'stats'"), "{err}");
}

/// Versions of `model` that worker `name` has loaded, as the scheduler sees them.
async fn loaded_versions(scheduler: &Scheduler, name: &str, model: &str) -> Vec<String> {
    let workers = scheduler.workers().await;
    let mut versions: Vec<String> = workers
        .iter()
        .filter_map(|w| w.status.as_ref())
        .filter(|s| s.name == name)
        .flat_map(|s| s.models.iter())
        .filter(|m| m.name == model)
        .map(|m| m.version.clone())
        .collect();
    versions.sort();
    versions
}

/// What was seen while a deployment rolled.
#[derive(Debug, Default)]
struct Seen {
    /// A worker held two versions at once (the new one loaded beside the old).
    both_on_one: bool,
    /// The most workers that held text_classifier at once.
    most_holders: usize,
}

/// Waits until two of `workers` serve exactly `version` of text_classifier, the others
/// none, and the deployment says nothing is rolling; returns what was seen meanwhile.
async fn wait_rolled(scheduler: &Scheduler, workers: &[&str], version: &str) -> Seen {
    let deadline = std::time::Instant::now() + SOON;
    let mut seen = Seen::default();
    loop {
        let mut held = Vec::new();
        for w in workers {
            held.push(loaded_versions(scheduler, w, "text_classifier").await);
        }
        seen.both_on_one |= held.iter().any(|h| h.len() == 2);
        seen.most_holders = seen
            .most_holders
            .max(held.iter().filter(|h| !h.is_empty()).count());
        let on = held.iter().filter(|h| *h == &[version]).count() == 2
            && held.iter().filter(|h| !h.is_empty()).count() == 2;
        let list = deployments(scheduler).await;
        let settled = list
            .iter()
            .any(|d| d.name == "texts" && d.ready_replicas == 2 && d.message.is_empty());
        if on && settled {
            return seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not rolled to v{version}: {workers:?} hold {held:?}, {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clients asking for text_classifier without a version, without pause, checking each
/// answer against onnxruntime's for the version that served it.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<(Vec<String>, Vec<String>)>>,
}

impl Load {
    async fn start(scheduler: &Scheduler, clients: usize) -> Load {
        let examples = expected_examples();
        let expected = |version: &str| {
            examples
                .iter()
                .find(|e| e.model == "text_classifier" && e.version == version)
                .expect("expected outputs")
                .clone()
        };
        let (v1, v2) = (expected("1"), expected("2"));
        assert_eq!(v1.inputs, v2.inputs, "one request for both versions");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut handles = Vec::new();
        for _ in 0..clients {
            let mut client = scheduler.inference().await;
            let (stop, v1, v2) = (stop.clone(), v1.clone(), v2.clone());
            handles.push(tokio::spawn(async move {
                // Versions that answered, in order, and the failures.
                let (mut served, mut failed) = (Vec::<String>::new(), Vec::new());
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let request = client::request("text_classifier", "", &v1.inputs);
                    match client.model_infer(request).await {
                        Ok(r) => {
                            let r = r.into_inner();
                            let want = if r.model_version == "1" { &v1 } else { &v2 };
                            let outputs = client::outputs(&r).expect("decode");
                            assert_tensors_match(
                                &format!("v{}", r.model_version),
                                &want.outputs,
                                &outputs,
                            );
                            served.push(r.model_version);
                        }
                        Err(s) => failed.push(format!("{:?}: {}", s.code(), s.message())),
                    }
                }
                (served, failed)
            }));
        }
        Load {
            stop,
            clients: handles,
        }
    }

    /// Stops the clients; asserts none failed and each ended on `last`; returns the
    /// versions that answered.
    async fn stop(self, last: &str) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (mut served, mut failed) = (Vec::new(), Vec::new());
        for c in self.clients {
            let (s, f) = c.await.expect("client task");
            assert_eq!(
                s.last().map(String::as_str),
                Some(last),
                "on v{last} at the end"
            );
            served.extend(s);
            failed.extend(f);
        }
        assert!(
            failed.is_empty(),
            "{} failed: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        served
    }
}

fn texts(version: &str) -> Deployment {
    Deployment {
        name: "texts".into(),
        model: "text_classifier".into(),
        version: version.into(),
        replicas: 2,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_its_rollback_and_a_scale_down_fail_no_request_under_load() {
    let scheduler = Scheduler::start_with(CONFIG);
    let _a = Worker::start("a", &scheduler, &["--load", "on-demand"]);
    let _b = Worker::start("b", &scheduler, &["--load", "on-demand"]);
    scheduler.wait_ready(&["a", "b"]).await;
    apply(&scheduler, texts("1")).await.expect("apply v1");
    wait_rolled(&scheduler, &["a", "b"], "1").await;
    let load = Load::start(&scheduler, 4).await;

    // Upgrade with the defaults (max surge 1, max unavailable 0): each replica loads v2
    // beside v1, then drops v1.
    let upgraded = apply(&scheduler, texts("2")).await.expect("apply v2");
    assert_eq!(
        (
            upgraded.previous_model.as_str(),
            upgraded.previous_version.as_str()
        ),
        ("text_classifier", "1")
    );
    assert!(
        wait_rolled(&scheduler, &["a", "b"], "2").await.both_on_one,
        "no worker held v1 and v2 at once"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Roll back with the CLI: to v1 the same way.
    let out = std::process::Command::new(bin("localml"))
        .args([
            "deployments",
            "rollback",
            "texts",
            "--server",
            &scheduler.addr,
        ])
        .env("LOCALML_KEY", scheduler.admin_key())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run localml deployments rollback");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains(
                "deployment texts rolls back to text_classifier:1 (from text_classifier:2)"
            ),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        wait_rolled(&scheduler, &["a", "b"], "1").await.both_on_one,
        "no worker held v2 and v1 at once"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Scaling down: the worker that unloads may still be sent requests until its next
    // report; it answers NOT_FOUND and the scheduler tries the other.
    apply(
        &scheduler,
        Deployment {
            replicas: 1,
            ..texts("1")
        },
    )
    .await
    .expect("scale down");
    wait_holders(&scheduler, "text_classifier", |h| h.len() == 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = load.stop("1").await;
    let on_v2 = served.iter().filter(|v| *v == "2").count();
    assert!(
        on_v2 > 0 && on_v2 < served.len(),
        "v2 served {on_v2} of {}",
        served.len()
    );

    // Nothing to roll back to on a deployment that never changed.
    apply(
        &scheduler,
        Deployment {
            name: "stats".into(),
            model: "tensor_stats".into(),
            replicas: 1,
            ..Default::default()
        },
    )
    .await
    .expect("apply");
    let mut admin = scheduler.admin().await;
    let status = admin
        .rollback_deployment(RollbackDeploymentRequest {
            name: "stats".into(),
        })
        .await
        .expect_err("never changed");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("no earlier model or version"),
        "{status:?}"
    );
    let status = admin
        .rollback_deployment(RollbackDeploymentRequest {
            name: "nope".into(),
        })
        .await
        .expect_err("no such deployment");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    // A change to a version no worker has is refused: it would unload every replica.
    let status = apply(&scheduler, texts("9"))
        .await
        .expect_err("no version 9");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("no worker can load text_classifier:9"),
        "{status:?}"
    );
    // Both rolling limits 0: refused, naming them.
    let status = apply(
        &scheduler,
        Deployment {
            max_surge: Some(0),
            max_unavailable: Some(0),
            ..texts("2")
        },
    )
    .await
    .expect_err("both 0");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("max_surge"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_surges_onto_a_spare_worker_and_fails_no_request_under_load() {
    let scheduler = Scheduler::start_with(CONFIG);
    let _a = Worker::start("a", &scheduler, &["--load", "on-demand"]);
    let _b = Worker::start("b", &scheduler, &["--load", "on-demand"]);
    let _c = Worker::start("c", &scheduler, &["--load", "on-demand"]);
    scheduler.wait_ready(&["a", "b", "c"]).await;
    apply(&scheduler, texts("1")).await.expect("apply v1");
    let all = ["a", "b", "c"];
    wait_rolled(&scheduler, &all, "1").await;
    let load = Load::start(&scheduler, 4).await;
    // Two replicas on three workers: the spare loads v2 while the two serve v1, then
    // one of them unloads v1, and the next surge goes onto the worker it freed. No
    // worker needs memory for two versions, and two replicas serve throughout.
    apply(&scheduler, texts("2")).await.expect("apply v2");
    let seen = wait_rolled(&scheduler, &all, "2").await;
    assert!(
        !seen.both_on_one && seen.most_holders == 3,
        "surging onto the spare worker: {seen:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let served = load.stop("2").await;
    let on_v1 = served.iter().filter(|v| *v == "1").count();
    assert!(
        on_v1 > 0 && on_v1 < served.len(),
        "v1 served {on_v1} of {}",
        served.len()
    );
}
