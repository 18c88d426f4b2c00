//! Model deployments with real processes: on-demand workers load what the leader
//! assigns, scale up and down, follow selectors, unload on delete; specs survive a
//! scheduler crash; the CLI drives it.

use std::time::Duration;

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
