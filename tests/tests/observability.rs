//! `/metrics`, `/healthz` and `/readyz` on the scheduler and on a worker: what they
//! count matches what was sent, the text passes `promtool check metrics`, and readiness
//! follows the state store.

use std::io::Write;
use std::process::{Command, Stdio};

use localml_tests::*;

/// `promtool check metrics` on `text`: Ok or its complaints.
fn promtool(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install it with `scripts/deps.sh --test` (Debian package prometheus)")
        });
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let out = child.wait_with_output().expect("promtool");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The value of the sample whose line starts with `series` (name and labels).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_pass_promtool() {
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--http-listen", "127.0.0.1:0"]);
    let worker = Worker::start("w1", &scheduler, &["--http-listen", "127.0.0.1:0"]);
    scheduler.wait_ready(&["w1"]).await;
    let s_http = scheduler.http_addr.clone().expect("scheduler http address");
    let w_http = worker.http_addr.clone().expect("worker http address");
    for addr in [&s_http, &w_http] {
        assert_eq!(
            http_get(addr, "/healthz").map(|r| r.0),
            Some(200),
            "{addr} healthz"
        );
        let ready = wait_until(SOON, || async {
            http_get(addr, "/readyz").map(|r| r.0) == Some(200)
        })
        .await;
        assert!(ready, "{addr} readyz: {:?}", http_get(addr, "/readyz"));
        assert_eq!(http_get(addr, "/nope").map(|r| r.0), Some(404));
    }
    let mut client = scheduler.inference().await;
    for _ in 0..7 {
        client.model_infer(image_request(1)).await.expect("infer");
    }
    // Model names a client invents count under one label, not a series each.
    for name in ["no_such_model", "another_invented_name"] {
        let mut missing = image_request(1);
        missing.model_name = name.into();
        client
            .model_infer(missing)
            .await
            .expect_err("unknown model");
    }

    let (code, text) = http_get(&s_http, "/metrics").expect("scheduler metrics");
    assert_eq!(code, 200);
    promtool(&text).unwrap_or_else(|e| panic!("scheduler metrics fail promtool:\n{e}\n{text}"));
    assert_eq!(
        sample(
            &text,
            "localml_scheduler_requests_total{model=\"image_classifier\",code=\"OK\"}"
        ),
        Some(7.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "localml_scheduler_requests_total{model=\"<unknown>\",code=\"NOT_FOUND\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert!(!text.contains("no_such_model"), "{text}");
    assert_eq!(
        sample(
            &text,
            "localml_scheduler_request_duration_seconds_count{model=\"image_classifier\"}"
        ),
        Some(7.0)
    );
    assert_eq!(sample(&text, "localml_workers{state=\"ready\"}"), Some(1.0));
    assert_eq!(sample(&text, "localml_scheduler_leader"), Some(1.0));
    assert_eq!(sample(&text, "localml_scheduler_queue_depth"), Some(0.0));
    assert!(
        sample(&text, "localml_worker_memory_free_bytes{worker=\"w1\"}").is_some_and(|v| v > 0.0)
    );
    assert_eq!(
        sample(
            &text,
            "localml_worker_power_source{worker=\"w1\",source=\"unknown\"}"
        )
        .or_else(|| sample(
            &text,
            "localml_worker_power_source{worker=\"w1\",source=\"mains\"}"
        )),
        Some(1.0),
        "{text}"
    );

    let (code, text) = http_get(&w_http, "/metrics").expect("worker metrics");
    assert_eq!(code, 200);
    promtool(&text).unwrap_or_else(|e| panic!("worker metrics fail promtool:\n{e}\n{text}"));
    assert_eq!(
        sample(
            &text,
            "localml_worker_requests_total{model=\"image_classifier\",version=\"1\",code=\"OK\"}"
        ),
        Some(7.0),
        "{text}"
    );
    assert!(sample(&text, "localml_worker_memory_total_bytes").is_some_and(|v| v > 0.0));
    assert_eq!(
        sample(
            &text,
            "localml_worker_queue_depth{model=\"image_classifier\",version=\"1\"}"
        ),
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_state_store() {
    let mut etcd = Etcd::start();
    let store = etcd.store_address("ready");
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--http-listen", "127.0.0.1:0", "--store", &store],
    );
    let http = scheduler.http_addr.clone().expect("http address");
    assert!(
        wait_until(SOON, || async {
            http_get(&http, "/readyz").map(|r| r.0) == Some(200)
        })
        .await,
        "ready with etcd up"
    );
    etcd.process.kill9();
    let unready = wait_until(SOON, || async {
        http_get(&http, "/readyz").is_some_and(|(code, body)| {
            code == 503 && body.contains("etcd state store does not answer")
        })
    })
    .await;
    assert!(unready, "{:?}", http_get(&http, "/readyz"));
    assert_eq!(
        http_get(&http, "/healthz").map(|r| r.0),
        Some(200),
        "still alive"
    );
}
