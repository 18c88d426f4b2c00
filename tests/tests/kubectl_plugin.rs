//! The kubectl plugin against a live local cluster (real scheduler and workers): kubectl
//! finds it, the table commands print what the cluster holds, cordon/uncordon/drain act,
//! and the `top` dashboard renders in a terminal (tmux).

use std::process::Command;
use std::time::Duration;

use localml_tests::*;

/// PATH with the built binaries first, so kubectl finds `kubectl-localml`.
fn path_with_plugin() -> String {
    format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// `kubectl localml ARGS`: (success, stdout, stderr).
fn kubectl_localml(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("localml")
        .args(args)
        .env("PATH", path_with_plugin())
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .output()
        .expect("run kubectl (Debian package kubernetes-client; scripts/deps.sh --test)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn kubectl_finds_the_plugin() {
    bin("kubectl-localml");
    let out = Command::new("kubectl")
        .args(["plugin", "list"])
        .env("PATH", path_with_plugin())
        .output()
        .expect("run kubectl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("kubectl-localml"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_server_it_port_forwards_through_the_kube_context_and_says_why_it_cannot() {
    let (ok, _, err) = kubectl_localml(&["-n", "school", "status"]);
    assert!(!ok);
    assert!(
        err.contains("cannot port-forward to svc/localml in namespace school")
            && err.contains("--server"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_cordon_drain_and_the_live_dashboard() {
    let sysfs = laptop_sysfs("sysfs-plugin", false, "60", &[]);
    // An open loopback listener (as `localml up`'s): the plugin's key handling is tested
    // through the kube context below.
    let scheduler = Scheduler::start_open();
    let root = sysfs.path().to_string_lossy().to_string();
    let _laptop = Worker::start("laptop", &scheduler, &["--power-supply-root", &root]);
    let _desktop = Worker::start("desktop", &scheduler, &[]);
    scheduler.wait_ready(&["laptop", "desktop"]).await;
    let server = scheduler.addr.clone();
    let s = server.as_str();

    let (ok, out, err) = kubectl_localml(&["--server", s, "workers"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("laptop") && out.contains("desktop") && out.contains("battery"),
        "{out}"
    );
    let (ok, out, err) = kubectl_localml(&["--server", s, "models"]);
    assert!(
        ok && out.contains("image_classifier") && out.contains("text_classifier"),
        "{out}{err}"
    );

    // Jobs show up in `jobs` and `status`.
    let submitted = Command::new(bin("localml"))
        .args([
            "jobs",
            "submit",
            "--model",
            "image_classifier",
            "--count",
            "3",
            "--watch",
            "--server",
            s,
        ])
        .output()
        .expect("localml jobs submit");
    assert!(
        submitted.status.success(),
        "{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let (ok, out, err) = kubectl_localml(&["--server", s, "jobs"]);
    assert!(ok && out.matches("Succeeded").count() == 3, "{out}{err}");
    let (ok, out, err) = kubectl_localml(&["--server", s, "status"]);
    assert!(ok, "{err}");
    assert!(out.contains("2 ready, 0 not ready"), "{out}");
    assert!(out.contains("3 Succeeded"), "{out}");

    // `top` in a pipe (no terminal) prints plain-text frames.
    let (ok, out, err) =
        kubectl_localml(&["--server", s, "top", "--interval", "0.2", "--frames", "2"]);
    assert!(ok, "{err}");
    assert_eq!(out.matches("localml top - ").count(), 2, "{out}");
    assert!(
        out.contains("laptop") && out.contains("RAM used") && !out.contains('\x1b'),
        "{out}"
    );

    // Cordon, uncordon, drain.
    let (ok, out, _) = kubectl_localml(&["--server", s, "cordon", "laptop"]);
    assert!(ok && out.contains("cordoned"));
    assert!(scheduler
        .workers()
        .await
        .iter()
        .any(|w| w.cordoned && w.status.as_ref().is_some_and(|s| s.name == "laptop")));
    let (ok, _, _) = kubectl_localml(&["--server", s, "uncordon", "laptop"]);
    assert!(ok);
    let (ok, out, err) = kubectl_localml(&["--server", s, "drain", "desktop", "--timeout", "30"]);
    assert!(ok && out.contains("drained"), "{out}{err}");
    let (ok, _, err) = kubectl_localml(&["--server", s, "cordon", "nobody"]);
    assert!(!ok && err.contains("unknown worker 'nobody'"), "{err}");
    kubectl_localml(&["--server", s, "uncordon", "desktop"]);

    // The dashboard in a real terminal, under load.
    let session = format!("localml-top-{}", std::process::id());
    let plugin = bin("kubectl-localml");
    let started = Command::new("tmux")
        .args(["new-session", "-d", "-s", &session, "-x", "150", "-y", "30"])
        .arg(format!(
            "{} --server {s} top --interval 0.5",
            plugin.display()
        ))
        .status()
        .expect("tmux (Debian package tmux)");
    assert!(started.success());
    let load = {
        let addr = server.clone();
        tokio::spawn(async move {
            let mut c = inference_client(&addr).await;
            for _ in 0..400 {
                let _ = c.model_infer(image_request(1)).await;
            }
        })
    };
    let capture = || {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &session])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let rendered = wait_until(SOON, || async {
        let screen = capture();
        screen.contains("localml top")
            && screen.contains("laptop")
            && screen.contains("battery 60%")
            && screen.contains("image_classifier")
    })
    .await;
    let screen = capture();
    load.await.expect("load");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = capture();
    let _ = Command::new("tmux")
        .args(["kill-session", "-t", &session])
        .status();
    assert!(rendered, "dashboard did not render:\n{screen}");
    assert!(
        screen.contains("RAM used") && screen.contains("p99 ms"),
        "{screen}"
    );
    let bars = screen
        .match_indices('[')
        .filter(|(i, _)| {
            let cell = &screen[*i..];
            cell.len() >= 12
                && cell[1..11].chars().all(|c| c == '#' || c == '.')
                && cell[11..].starts_with(']')
        })
        .count();
    assert!(bars >= 2, "a RAM bar per worker:\n{screen}");
    assert!(after.contains("desktop"), "still drawing:\n{after}");
}

/// Without `--server`, the plugin reads the chart's admin key and CA Secrets, runs
/// `kubectl port-forward` to the release's Service, and talks through it over TLS
/// verified by that CA, with that key. No Kubernetes cluster here: a stand-in `kubectl`
/// records its arguments, answers the Secrets with the real scheduler's admin key and CA
/// (the scheduler requires keys and TLS, as the chart's does), and prints kubectl's
/// forwarding line for the real scheduler's port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_kube_context_it_port_forwards_to_the_charts_service() {
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--auth", "required", "--client-tls", "required"],
    );
    let _w = Worker::start("w1", &scheduler, &[]);
    scheduler.wait_ready(&["w1"]).await;
    let dir = TempDir::new("fake-kubectl");
    let log = dir.path().join("args");
    let fake = dir.path().join("kubectl");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\ncase \"$*\" in *\"admin-key\"*) echo '{}'; exit 0;; *\"localml-ca\"*) cat {}; exit 0;; esac\necho 'Forwarding from [::1]:1 -> 8001'\necho 'Forwarding from {} -> 8001'\nexec sleep 60\n",
            log.display(),
            scheduler.admin_key(),
            {
                read_ca_pem(&scheduler.data_dir());
                scheduler.data_dir().join("ca.pem").display().to_string()
            },
            scheduler.addr
        ),
    )
    .expect("write fake kubectl");
    Command::new("chmod")
        .arg("+x")
        .arg(&fake)
        .status()
        .expect("chmod");
    let out = Command::new(bin("kubectl-localml"))
        .args([
            "-n",
            "school",
            "--release",
            "library",
            "--context",
            "lan",
            "workers",
        ])
        .env("KUBECTL", &fake)
        .output()
        .expect("run kubectl-localml");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("w1"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let args = std::fs::read_to_string(&log).expect("kubectl was run");
    let calls: Vec<&str> = args.lines().collect();
    assert_eq!(
        calls,
        [
            "--context lan port-forward -n school svc/library-localml :8001",
            "--context lan get secret -n school library-localml-ca -o go-template={{index .data \"tls.crt\" | base64decode}}",
            "--context lan get secret -n school library-localml-admin-key -o go-template={{index .data \"key\" | base64decode}}",
        ]
    );
}
