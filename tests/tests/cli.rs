//! The `localml` command line as a user runs it, and Triton's own Python client.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use localml_tests::*;

/// Children of `pid`, from /proc.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the command name (which may contain spaces): state ppid ...
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .unwrap_or_default();
        if after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
            == Some(pid)
        {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn localml(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("localml"))
        .args(args)
        .output()
        .expect("run localml");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn localml_up_serves_infer_and_stops_without_orphans() {
    let state = TempDir::new("up-state");
    let mut up = Command::new(bin("localml"))
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--rest-listen",
            "127.0.0.1:0",
            "--workers",
            "2",
            "--data-dir",
        ])
        .arg(state.path())
        .arg("--models")
        .arg(models_dir())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start localml up");
    let pid = up.id();
    let _stop = KillOnPanic(pid);
    let mut lines = BufReader::new(up.stdout.take().expect("stdout")).lines();
    let mut next_line = || {
        lines
            .next()
            .expect("localml up exited before printing its endpoints")
            .expect("read line")
    };
    let endpoint = loop {
        if let Some(rest) = next_line().split("Triton gRPC): ").nth(1) {
            break rest.trim().to_string();
        }
    };
    let rest_url = loop {
        if let Some(rest) = next_line().split("Open Inference Protocol REST): ").nth(1) {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let workers = children(pid);
    assert_eq!(workers.len(), 2, "two worker processes: {workers:?}");

    // `localml infer` with a JSON file, a .npy file, and random inputs.
    let dir = TempDir::new("infer-inputs");
    let json_input = dir.path().join("tokens.json");
    std::fs::write(
        &json_input,
        serde_json::json!([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]]).to_string(),
    )
    .expect("write json");
    let npy_input = dir.path().join("tokens.npy");
    let tokens = localml_proto::tensor::TensorData::Int64((0..32).collect());
    let npy = localml_cli::npy::write(&[2, 16], &tokens).expect("int64 is writable");
    std::fs::write(&npy_input, npy).expect("write npy");
    for (input, shape) in [(&json_input, "[1, 4]"), (&npy_input, "[2, 4]")] {
        let arg = format!("token_ids={}", input.display());
        let (ok, stdout, stderr) = localml(&[
            "infer",
            "--server",
            &endpoint,
            "--model",
            "text_classifier",
            "--input",
            &arg,
        ]);
        assert!(ok, "{stderr}");
        assert!(stdout.contains("served by worker-"), "{stdout}");
        assert!(stdout.contains(&format!("logits FP32 {shape}")), "{stdout}");
    }
    let (ok, stdout, stderr) = localml(&[
        "infer",
        "--server",
        &endpoint,
        "--model",
        "image_classifier",
    ]);
    assert!(
        ok && stdout.contains("probabilities FP32 [1, 10]"),
        "{stdout}{stderr}"
    );
    let (ok, _, stderr) = localml(&["infer", "--server", &endpoint, "--model", "nope"]);
    assert!(
        !ok && stderr.contains("nope"),
        "clear error for an unknown model: {stderr}"
    );
    let (ok, stdout, _) = localml(&["workers", "--server", &endpoint]);
    assert!(
        ok && stdout.contains("worker-1")
            && stdout.contains("worker-2")
            && stdout.contains("Ready"),
        "{stdout}"
    );

    // The curl examples of the README and docs/rest.md, as written but for the port.
    let port = rest_url.rsplit(':').next().expect("port");
    for doc in ["README.md", "docs/rest.md"] {
        let examples = curl_examples(doc);
        assert!(examples.len() >= 3, "{doc}: {examples:?}");
        for example in examples {
            let command = example.replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"));
            let out = Command::new("sh")
                .args(["-c", &command])
                .output()
                .expect("run sh");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(out.status.success(), "{doc}: {command}: {out:?}");
            let expect = if example.contains("/infer") {
                "\"logits\""
            } else if example.contains("/health/ready") {
                "{\"ready\":true}"
            } else {
                "\"name\":\"text_classifier\""
            };
            assert!(stdout.contains(expect), "{doc}: {command}: {stdout}");
        }
    }

    // SIGTERM stops everything.
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = up.try_wait().expect("wait") {
            break Some(status);
        }
        if started.elapsed() > SOON {
            let _ = up.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let exit = exit.expect("localml up stopped after SIGTERM");
    assert!(exit.success(), "clean exit: {exit}");
    for w in workers {
        assert!(!alive(w), "worker process {w} outlived localml up");
    }
}

/// Kills a process when the test fails, so a failed test leaves no cluster behind (its
/// workers exit with it: they watch its standard input).
struct KillOnPanic(u32);

impl Drop for KillOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = Command::new("kill")
                .args(["-9", &self.0.to_string()])
                .status();
        }
    }
}

/// The `curl ... 127.0.0.1:8000` commands of `doc` (lines joined at a trailing `\\`).
fn curl_examples(doc: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(doc)).expect("read doc");
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        if current.is_empty() && !(line.starts_with("curl -s") && line.contains("127.0.0.1:8000")) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_python_client_works() {
    if !tritonclient_available() {
        return;
    }
    // Unmodified: no key, as on `localml up`'s open loopback listener.
    let scheduler = Scheduler::start_open();
    let _a = Worker::start("a", &scheduler, &[]);
    let _b = Worker::start("b", &scheduler, &[]);
    scheduler.wait_ready(&["a", "b"]).await;
    check_with_tritonclient(&scheduler.addr, None).await;
}

#[test]
fn missing_or_wrong_onnxruntime_library_is_a_one_line_error() {
    let dir = TempDir::new("badlib");
    let not_a_library = dir.path().join("libonnxruntime.so");
    std::fs::write(&not_a_library, b"this is not a shared library").expect("write");
    let cases = [
        (dir.path().join("missing.so"), "does not exist"),
        (not_a_library, "cannot load ONNX Runtime"),
    ];
    for (path, expected) in cases {
        let out = Command::new(bin("localml-worker"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--scheduler",
                "127.0.0.1:1",
                "--onnxruntime",
            ])
            .arg(&path)
            .arg("--models")
            .arg(models_dir())
            .env("RUST_LOG", "off")
            .output()
            .expect("run worker");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr}");
        assert!(lines[0].contains(expected), "{stderr}");
        assert!(
            lines[0].contains("localml runtime install"),
            "says how to fix it: {stderr}"
        );
    }
}

/// The catalog on one PC, as README shows it: `localml up --load on-demand` with an empty
/// repository, `localml models push`, `localml deployments apply`, `localml infer`.
#[test]
fn localml_up_on_demand_serves_a_pushed_model() {
    let state = TempDir::new("up-on-demand-state");
    let empty = TempDir::new("up-on-demand-models");
    let mut up = Command::new(bin("localml"))
        .args(["up", "--listen", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--rest-listen",
            "off",
            "--workers",
            "1",
            "--load",
            "on-demand",
        ])
        .arg("--data-dir")
        .arg(state.path())
        .arg("--models")
        .arg(empty.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start localml up");
    let _stop = KillOnPanic(up.id());
    let mut lines = BufReader::new(up.stdout.take().expect("stdout")).lines();
    let endpoint = loop {
        let line = lines
            .next()
            .expect("localml up exited before printing its endpoint")
            .expect("read line");
        if let Some(rest) = line.split("Triton gRPC): ").nth(1) {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let run = |args: &[&str]| {
        Command::new(bin("localml"))
            .args(args)
            .args(["--server", &endpoint])
            .env("RUST_LOG", "off")
            .output()
            .expect("run localml")
    };
    let image = models_dir().join("image_classifier");
    let pushed = run(&["models", "push", image.to_str().expect("utf-8")]);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );
    let applied = run(&[
        "deployments",
        "apply",
        "images",
        "--model",
        "image_classifier",
    ]);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let started = Instant::now();
    let answer = loop {
        let infer = run(&["infer", "--model", "image_classifier"]);
        if infer.status.success() {
            break String::from_utf8_lossy(&infer.stdout).into_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "not served within 60 s: {}",
            String::from_utf8_lossy(&infer.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(answer.contains("probabilities"), "{answer}");
    let _ = Command::new("kill")
        .args(["-TERM", &up.id().to_string()])
        .status();
    let _ = up.wait();
}
