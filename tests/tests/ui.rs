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
    assert!(
        seen["rate"]
            .as_str()
            .and_then(|r| r.strip_suffix("/s"))
            .and_then(|r| r.parse::<f64>().ok())
            .is_some_and(|r| r > 0.0),
        "the serving worker's rate after the run: {seen}"
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
    assert!(
        seen["drained"]
            .as_str()
            .is_some_and(|d| d.contains("cordoned, drained")),
        "{seen}"
    );
    let laptop = listed
        .lines()
        .find(|l| l.starts_with("laptop"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(
        laptop.contains("Cordoned"),
        "drained from the page: {listed}"
    );
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

/// A stream of server-sent events read over plain HTTP/1.0 (so the body is the raw stream
/// and ends when the server closes it).
struct Events {
    status: u16,
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl Events {
    fn open(addr: &str, path: &str) -> Events {
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .expect("timeout");
        write!(
            stream,
            "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send");
        let mut reader = std::io::BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).expect("status line");
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("status line: {line}"));
        loop {
            line.clear();
            reader.read_line(&mut line).expect("header");
            if line.trim().is_empty() {
                break;
            }
        }
        Events { status, reader }
    }

    /// The next event's name and data; None when the stream ends.
    fn next(&mut self) -> Option<(String, String)> {
        use std::io::BufRead;
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !data.is_empty() {
                    return Some((event, data));
                }
                continue;
            }
            if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("data:") {
                data.push_str(v.trim_start());
            }
        }
    }

    /// The rest of the body, when it is not a stream (an error).
    fn rest(mut self) -> String {
        use std::io::Read;
        let mut body = String::new();
        let _ = self.reader.read_to_string(&mut body);
        body
    }
}

/// The page's live updates: a key gets a short-lived ticket, the ticket opens one event
/// stream of the cluster's state (and only one), keys never go in the URL, and revoking
/// the key ends the stream with an error event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_updates_use_single_use_tickets_and_end_when_the_key_is_revoked() {
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--rest-listen", "127.0.0.1:0"]);
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let url = scheduler.rest_url.clone().expect("REST URL");
    let addr = url.split_once("://").expect("a URL").1.to_string();
    let key = |name: &str, scope: &str| {
        localml(&[
            "keys",
            "create",
            "--server",
            &scheduler.addr,
            "--name",
            name,
            "--scope",
            scope,
        ])
        .trim()
        .to_string()
    };
    let ops = format!("Bearer {}", key("ops", "admin"));
    let app = format!("Bearer {}", key("app", "infer"));
    let ticket = |auth: Option<&str>| {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        tokio::task::block_in_place(|| http(&addr, "POST", "/api/v1/events/ticket", &headers, b""))
    };
    assert_eq!(ticket(None).status, 401, "a ticket needs a key");
    let refused = ticket(Some(&app));
    assert_eq!(
        refused.status, 403,
        "an infer key may not see the cluster: {refused:?}"
    );
    let issued = ticket(Some(&ops));
    assert_eq!(issued.status, 200, "{issued:?}");
    let t = issued.json()["ticket"]
        .as_str()
        .expect("a ticket")
        .to_string();
    assert_eq!(issued.json()["expires_in_s"], 30);

    let path = format!("/api/v1/events?ticket={t}");
    let (first, mut stream) = tokio::task::block_in_place(|| {
        let mut stream = Events::open(&addr, &path);
        assert_eq!(stream.status, 200);
        (stream.next().expect("a first event"), stream)
    });
    assert_eq!(first.0, "cluster", "{first:?}");
    let state: serde_json::Value = serde_json::from_str(&first.1).expect("JSON");
    assert_eq!(state["workers"][0]["name"], "w", "{state}");
    assert!(
        state["models"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["name"] == "image_classifier")),
        "{state}"
    );
    // A ticket opens one stream; a made-up one none; a key in the URL is refused.
    for (path, status, says) in [
        (path.clone(), 401, "unknown, used or expired event ticket"),
        (
            "/api/v1/events?ticket=00".to_string(),
            401,
            "unknown, used or expired",
        ),
        (
            "/api/v1/events".to_string(),
            401,
            "POST /api/v1/events/ticket",
        ),
        (
            format!(
                "/api/v1/events?ticket={}",
                ops.trim_start_matches("Bearer ")
            ),
            400,
            "sent in the URL",
        ),
    ] {
        let again = tokio::task::block_in_place(|| Events::open(&addr, &path));
        assert_eq!(again.status, status, "{path}");
        let body = again.rest();
        assert!(body.contains(says), "{path}: {body}");
    }
    // Updates keep coming, then the key is revoked: the stream says so and ends.
    let second = tokio::task::block_in_place(|| stream.next()).expect("a second event");
    assert_eq!(second.0, "cluster");
    localml(&["keys", "revoke", "--server", &scheduler.addr, "ops"]);
    let ended = tokio::task::block_in_place(|| {
        let mut last = None;
        while let Some(event) = stream.next() {
            last = Some(event);
        }
        last
    });
    let (name, data) = ended.expect("events until the end");
    assert_eq!(name, "error", "{data}");
    let why: serde_json::Value = serde_json::from_str(&data).expect("JSON");
    assert_eq!(why["status"], 401, "{why}");
    assert!(
        why["error"].as_str().is_some_and(|e| e.contains("revoked")),
        "{why}"
    );
}

/// The page's operator calls: a model uploaded in parts (the second part resumes where the
/// first stopped), added to the catalog with its labels and task, deployed, served with
/// onnxruntime's outputs; its version's statistics and recent windows; jobs listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_api_uploads_deploys_and_reports_a_model_version() {
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--rest-listen", "127.0.0.1:0"]);
    let _w = Worker::start("w", &scheduler, &["--load", "on-demand"]);
    scheduler.wait_ready(&["w"]).await;
    let url = scheduler.rest_url.clone().expect("REST URL");
    let addr = url.split_once("://").expect("a URL").1.to_string();
    let auth = format!("Bearer {}", scheduler.admin_key());
    let call = |method: &str, path: &str, body: &[u8]| {
        tokio::task::block_in_place(|| http(&addr, method, path, &[("authorization", &auth)], body))
    };
    let dir = repo_root().join("examples/models/image_scorer");
    let model = std::fs::read(dir.join("1/model.onnx")).expect("model");
    let labels = std::fs::read(dir.join("1/labels.txt")).expect("labels");
    let config = std::fs::read_to_string(dir.join("config.yaml")).expect("config");
    let sha = localml_trust::sha256_hex(&model);
    let blob = format!("/api/v1/blobs/{sha}");
    let held = call("GET", &blob, b"");
    assert_eq!(
        (held.status, held.json()["received"].clone()),
        (200, 0.into()),
        "{held:?}"
    );
    // The first half, as a dropped upload leaves it; then the rest from where it stopped.
    let half = model.len() / 2;
    let size = model.len();
    let first = call(
        "PUT",
        &format!("{blob}?size={size}&offset=0"),
        &model[..half],
    );
    assert_eq!(first.status, 409, "{first:?}");
    assert!(first.error().contains("send the rest"), "{first:?}");
    assert_eq!(call("GET", &blob, b"").json()["received"], half);
    let wrong = call("PUT", &format!("{blob}?size={size}&offset=7"), &model[7..]);
    assert!(wrong.status >= 400 && wrong.status < 500, "{wrong:?}");
    let rest = call(
        "PUT",
        &format!("{blob}?size={size}&offset={half}"),
        &model[half..],
    );
    assert_eq!(rest.json()["complete"], true, "{rest:?}");
    // Bytes that do not match their name are refused, naming both hashes.
    let other = localml_trust::sha256_hex(b"not these bytes");
    let bad = call(
        "PUT",
        &format!("/api/v1/blobs/{other}?size={size}&offset=0"),
        &model,
    );
    assert!(bad.status >= 400, "{bad:?}");
    assert!(bad.error().contains(&sha[..12]), "{bad:?}");
    let no_size = call("PUT", &blob, &model);
    assert_eq!(no_size.status, 400, "{no_size:?}");
    let labels_sha = localml_trust::sha256_hex(&labels);
    let put = call(
        "PUT",
        &format!("/api/v1/blobs/{labels_sha}?size={}&offset=0", labels.len()),
        &labels,
    );
    assert_eq!(put.json()["complete"], true, "{put:?}");
    let files = serde_json::json!([
        {"path": "model.onnx", "sha256": sha, "size": size},
        {"path": "labels.txt", "sha256": labels_sha, "size": labels.len()},
    ]);
    // A task whose labels file is not among the files is refused before anything is kept.
    let missing = serde_json::json!({"name": "scorer", "config_yaml": config, "files": [files[0]]});
    let refused = call("POST", "/api/v1/catalog", missing.to_string().as_bytes());
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused.error().contains("labels 'labels.txt'"),
        "{refused:?}"
    );
    let version = serde_json::json!({"name": "scorer", "config_yaml": config, "files": files});
    let added = call("POST", "/api/v1/catalog", version.to_string().as_bytes());
    assert_eq!(added.status, 200, "{added:?}");
    assert_eq!(added.json()["version"], "1", "{added:?}");
    assert_eq!(
        added.json()["inputs"][0]["shape"],
        serde_json::json!([-1, 12, 16, 3])
    );

    // Deployed from the page: a new deployment needs a model; then it serves.
    let no_model = call("POST", "/api/v1/deployments/scorer", br#"{"replicas": 1}"#);
    assert_eq!(no_model.status, 400, "{no_model:?}");
    let applied = call(
        "POST",
        "/api/v1/deployments/scorer",
        br#"{"model": "scorer", "replicas": 1}"#,
    );
    assert_eq!(applied.status, 200, "{applied:?}");
    let typo = call("POST", "/api/v1/deployments/scorer", br#"{"replica": 2}"#);
    assert_eq!(typo.status, 400, "{typo:?}");
    assert!(typo.error().contains("unknown field"), "{typo:?}");
    let ready = wait_until(std::time::Duration::from_secs(60), || async {
        let d = call("GET", "/api/v1/deployments", b"").json();
        d["deployments"][0]["ready_replicas"] == 1
    })
    .await;
    assert!(
        ready,
        "{:?}",
        call("GET", "/api/v1/deployments", b"").json()
    );
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("examples/expected/image_scorer.json"))
            .expect("expected outputs"),
    )
    .expect("JSON");
    let request = serde_json::json!({"inputs": expected["inputs"]});
    for _ in 0..3 {
        let answer = call(
            "POST",
            "/v2/models/scorer/infer",
            request.to_string().as_bytes(),
        );
        assert_eq!(answer.status, 200, "{answer:?}");
        let got = answer.json()["outputs"][0]["data"].clone();
        let want = expected["outputs"][0]["data"].clone();
        let close = got.as_array().zip(want.as_array()).is_some_and(|(g, w)| {
            g.len() == w.len()
                && g.iter().zip(w).all(|(g, w)| {
                    (g.as_f64().unwrap_or(f64::NAN) - w.as_f64().unwrap_or(0.0)).abs() < 1e-4
                })
        });
        assert!(close, "{got} vs {want}");
    }
    // The pushed labels and task reach the model's config, where the page reads them.
    let config = call("GET", "/v2/models/scorer/config", b"").json();
    let task: serde_json::Value = serde_json::from_str(
        config["parameters"]["localml.task"]["string_value"]
            .as_str()
            .unwrap_or_else(|| panic!("{config}")),
    )
    .expect("task JSON");
    assert_eq!(
        task["labels"],
        serde_json::json!(["sky", "grass", "sand", "water", "stone"])
    );
    assert_eq!(
        (task["layout"].clone(), task["channels"].clone()),
        ("NHWC".into(), "BGR".into())
    );
    assert_eq!(task["mean"][0], 0.406, "as written in config.yaml: {task}");

    // This version's own figures and its last minutes.
    let models = call("GET", "/api/v1/models", b"").json();
    let scorer = models["models"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["name"] == "scorer"))
        .cloned()
        .unwrap_or_else(|| panic!("{models}"));
    assert_eq!(scorer["version_stats"]["requests_ok"], 3, "{scorer}");
    assert_eq!(scorer["recent"]["requests_ok"], 3, "{scorer}");
    assert!(
        scorer["recent"]["p50_ms"].as_f64().is_some_and(|v| v > 0.0),
        "{scorer}"
    );
    assert!(
        scorer["recent"]["rate_per_s"]
            .as_f64()
            .is_some_and(|v| v > 0.0),
        "{scorer}"
    );
    let windows: u64 = scorer["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|w| w["requests_ok"].as_u64()).sum())
        .unwrap_or(0);
    assert_eq!(windows, 3, "the windows hold the three requests: {scorer}");
    assert_eq!(scorer["task"], "image-classification");

    // Jobs, newest first, with their state.
    let submit = || {
        localml(&[
            "jobs",
            "submit",
            "--server",
            &scheduler.addr,
            "--model",
            "scorer",
        ])
        .trim()
        .to_string()
    };
    let first = submit();
    let id = submit();
    let listed = wait_until(std::time::Duration::from_secs(30), || async {
        let jobs = call("GET", "/api/v1/jobs", b"").json();
        jobs["jobs"][0]["id"] == id.as_str()
            && jobs["jobs"][1]["id"] == first.as_str()
            && jobs["jobs"][0]["state"] == "SUCCEEDED"
    })
    .await;
    assert!(listed, "{:?}", call("GET", "/api/v1/jobs", b"").json());
}

/// Runs `python3 tests/python/photo_reference.py ARGS`; fails the test when it fails.
fn photo_reference(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("tests/python/photo_reference.py"))
        .args(args)
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "photo_reference.py {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// "Try" from the page with a photo and with a .npy file: the page resizes and scales the
/// photo as image_scorer's config.yaml says (NHWC, BGR, ImageNet mean and std) into the
/// tensor Pillow and numpy make of it, the answer it shows is onnxruntime's on that tensor
/// with the top label named, and a .npy file of text_classifier's stored inputs gives the
/// stored outputs. Live updates (server-sent events) run meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_and_a_npy_file_become_the_models_inputs() {
    if !browser_available() {
        return;
    }
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--rest-listen", "127.0.0.1:0"]);
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let url = scheduler.rest_url.clone().expect("REST URL");
    let scratch = TempDir::new("try-inputs");
    let shots = screenshot_dir(&scratch);
    let photo = scratch.path().join("photo.png");
    let npy = scratch.path().join("tokens.npy");
    let (photo_s, npy_s) = (photo.to_string_lossy(), npy.to_string_lossy());
    photo_reference(&["make", &photo_s, &npy_s]);
    let key = scheduler.admin_key();
    let seen = browser_check(
        "try_check.mjs",
        &[&url, &key, &photo_s, &npy_s, &shots.to_string_lossy()],
    )
    .await;
    assert!(
        seen["live"].as_str().is_some_and(|l| l.starts_with("live")),
        "{seen}"
    );
    assert_eq!(seen["hint"], "resized to 16x12, BGR, NHWC", "{seen}");
    let seen_file = scratch.path().join("seen.json");
    std::fs::write(&seen_file, seen.to_string()).expect("write");
    let checked = photo_reference(&["check", &photo_s, &seen_file.to_string_lossy()]);
    eprintln!("{checked}");
    assert!(checked.contains("page inputs OK"), "{checked}");
    let shot = std::fs::metadata(shots.join("photo-phone.png")).map_or(0, |m| m.len());
    assert!(shot > 1000, "photo-phone.png: {shot} bytes");
}

/// The operator's side of the page: a job with its progress, a model uploaded through the
/// page (its hash computed in the browser, a progress bar), deployed from the page's form
/// and served; `localml models` and `localml deployments` show what the page did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_uploads_and_deploys_a_model_and_follows_jobs_from_the_page() {
    if !browser_available() {
        return;
    }
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--rest-listen", "127.0.0.1:0"]);
    let _w = Worker::start("w", &scheduler, &[]);
    let _od = Worker::start("od", &scheduler, &["--load", "on-demand"]);
    scheduler.wait_ready(&["w", "od"]).await;
    let id = localml(&[
        "jobs",
        "submit",
        "--server",
        &scheduler.addr,
        "--model",
        "image_classifier",
    ])
    .trim()
    .to_string();
    let url = scheduler.rest_url.clone().expect("REST URL");
    let scratch = TempDir::new("operate");
    let shots = screenshot_dir(&scratch);
    let key = scheduler.admin_key();
    let model_dir = repo_root().join("examples/models/image_scorer");
    let seen = browser_check(
        "operate_check.mjs",
        &[
            &url,
            &key,
            &id,
            &model_dir.to_string_lossy(),
            &shots.to_string_lossy(),
        ],
    )
    .await;
    assert!(
        seen["job"]
            .as_str()
            .is_some_and(|j| j.contains("succeeded")),
        "{seen}"
    );
    assert_eq!(seen["jobProgress"], serde_json::json!([3, 3]), "{seen}");
    let size = std::fs::metadata(model_dir.join("1/model.onnx"))
        .expect("model")
        .len()
        + std::fs::metadata(model_dir.join("1/labels.txt"))
            .expect("labels")
            .len();
    assert_eq!(
        seen["uploadProgress"],
        serde_json::json!([size, size]),
        "{seen}"
    );
    assert!(
        seen["upload"]
            .as_str()
            .is_some_and(|u| u.contains("pushed uploaded version 1 (2 files")),
        "{seen}"
    );
    assert!(
        seen["catalog"]
            .as_str()
            .is_some_and(|c| c.starts_with("uploaded1fp322")),
        "the page's catalog lists it (name, version, variants, files): {seen}"
    );
    let listed = localml(&["models", "list", "--server", &scheduler.addr]);
    assert!(listed.contains("uploaded"), "{listed}");
    let deployments = localml(&["deployments", "list", "--server", &scheduler.addr]);
    assert!(
        deployments
            .lines()
            .any(|l| l.starts_with("uploaded") && l.contains("od")),
        "{deployments}"
    );
    assert_eq!(
        seen["gpu"],
        serde_json::json!(["3.0 GiB of 12.0 GiB used", " 9.0 GiB free"]),
        "{seen}"
    );
    let shot = std::fs::metadata(shots.join("operate-desktop.png")).map_or(0, |m| m.len());
    assert!(shot > 1000, "operate-desktop.png: {shot} bytes");
}
