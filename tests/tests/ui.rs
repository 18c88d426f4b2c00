//! The scheduler's web page (#15) in a real browser: headless Debian Chromium driven by
//! playwright-core (tests/js/ui_check.mjs) against a live cluster with keys required.
//! The page lists the workers with their power state, runs a model from its "Try" form,
//! and cordons a worker with the keyboard, which the scheduler then reports. Screenshots
//! at phone and desktop sizes go to a temporary directory, or to docs/ui/ with
//! `LOCALML_UPDATE_SCREENSHOTS=1`.
//!
//! scripts/deps.sh --test installs Debian's `chromium` and npm's `playwright-core` (into
//! target/tools); the test fails, not skips, when they are missing under scripts/test.sh
//! or CI.

use std::path::Path;

use localml_tests::*;

fn browser_available() -> bool {
    let present = Path::new("/usr/bin/chromium").is_file()
        && repo_root()
            .join("target/tools/node_modules/playwright-core")
            .is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if present {
        return true;
    }
    let required = std::env::var_os("LOCALML_REQUIRE_PYTHON_CLIENT").is_some()
        || std::env::var_os("CI").is_some();
    assert!(
        !required,
        "Chromium, node or playwright-core is missing (scripts/deps.sh --test installs them)"
    );
    eprintln!("skipped: scripts/deps.sh --test installs chromium and playwright-core");
    false
}

/// Where the screenshots go: docs/ui/ with `LOCALML_UPDATE_SCREENSHOTS=1`, else `scratch`.
fn screenshot_dir(scratch: &TempDir) -> std::path::PathBuf {
    let shots = if std::env::var_os("LOCALML_UPDATE_SCREENSHOTS").is_some() {
        repo_root().join("docs/ui")
    } else {
        scratch.path().to_path_buf()
    };
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    shots
}

/// Runs the browser script `tests/js/SCRIPT` with `args` and returns the JSON line it
/// prints last (what it saw); fails the test when the script fails.
async fn browser_check(script: &str, args: &[&str]) -> serde_json::Value {
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(180),
        tokio::process::Command::new("node")
            .arg(repo_root().join("tests/js").join(script))
            .args(args)
            .current_dir(repo_root())
            .output(),
    )
    .await
    .expect("the browser check finishes")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the browser check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(
        stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no result line: {stdout}")),
    )
    .expect("a JSON result line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_the_cluster_runs_a_model_and_cordons() {
    if !browser_available() {
        return;
    }
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--rest-listen", "127.0.0.1:0"]);
    let sysfs = laptop_sysfs("ui-laptop", false, "64", &[]);
    let root = sysfs.path().to_string_lossy().into_owned();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    let _desk = Worker::start("desk", &scheduler, &[]);
    scheduler.wait_ready(&["laptop", "desk"]).await;
    let url = scheduler.rest_url.clone().expect("REST URL");
    let scratch = TempDir::new("ui-shots");
    let shots = screenshot_dir(&scratch);
    let key = scheduler.admin_key();
    let seen = browser_check(
        "ui_check.mjs",
        &[&url, &key, "laptop", "desk", &shots.to_string_lossy()],
    )
    .await;
    let battery = seen["battery"].as_str().unwrap_or_default();
    assert!(
        battery.starts_with("Battery 64%"),
        "the page shows the laptop on battery: {seen}"
    );
    assert_eq!(seen["workers"], serde_json::json!(["desk", "laptop"]));
    let output = seen["output"].as_str().unwrap_or_default();
    assert!(
        output.contains("probabilities FP32 [1, 10]") && output.contains("top: #"),
        "{seen}"
    );
    let p50 = seen["p50"].as_str().unwrap_or_default();
    assert!(
        p50.ends_with(" ms")
            && p50
                .trim_end_matches(" ms")
                .parse::<f64>()
                .is_ok_and(|v| v > 0.0),
        "the model's p50 after one run: {seen}"
    );
    let served_by = seen["servedBy"].as_str().unwrap_or_default();
    assert!(
        served_by.contains("desk") || served_by.contains("laptop"),
        "{seen}"
    );
    for shot in ["cluster-phone.png", "try-phone.png", "cluster-desktop.png"] {
        let bytes = std::fs::metadata(shots.join(shot)).map_or(0, |m| m.len());
        assert!(bytes > 1000, "{shot}: {bytes} bytes");
    }
    // The cordon from the page is the scheduler's state: `localml workers` shows it.
    let listed = localml_workers(&scheduler);
    let desk = listed
        .lines()
        .find(|l| l.starts_with("desk"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(desk.contains("Cordoned"), "{listed}");
}

/// A visitor without a key, where an operator opened image_classifier to everyone
/// (`localml keys create --anonymous`): the page says what is open, lists it with its Try
/// form, and runs it, without asking for a key or showing the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_without_a_key_runs_the_models_open_to_everyone() {
    if !browser_available() {
        return;
    }
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--auth", "required", "--rest-listen", "127.0.0.1:0"],
    );
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let created = std::process::Command::new(bin("localml"))
        .args(["keys", "create", "--name", "kiosk", "--scope", "infer"])
        .args(["--models", "image_classifier", "--anonymous"])
        .args(["--server", &scheduler.addr])
        .env("LOCALML_KEY", scheduler.admin_key())
        .output()
        .expect("run localml");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let url = scheduler.rest_url.clone().expect("REST URL");
    let scratch = TempDir::new("kiosk-shots");
    let shots = screenshot_dir(&scratch);
    let seen = browser_check(
        "kiosk_check.mjs",
        &[&url, "image_classifier", &shots.to_string_lossy()],
    )
    .await;
    let notice = seen["notice"].as_str().unwrap_or_default();
    assert!(
        notice.contains("without a key") && notice.contains("image_classifier"),
        "{seen}"
    );
    let output = seen["output"].as_str().unwrap_or_default();
    assert!(output.contains("probabilities FP32 [1, 10]"), "{seen}");
    assert_eq!(seen["signInShown"], false, "{seen}");
    assert_eq!(seen["clusterShown"], false, "{seen}");
    let shot = std::fs::metadata(shots.join("kiosk-phone.png")).map_or(0, |m| m.len());
    assert!(shot > 1000, "kiosk-phone.png: {shot} bytes");
}
