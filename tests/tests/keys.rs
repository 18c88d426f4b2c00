//! API keys with scopes on the client port (issue #10), with real processes: the first
//! admin key, keys created with the CLI, scopes, models, tenants, revocation across two
//! replicas on etcd, the defaults for listeners reachable from the LAN, Triton's Python
//! client with `headers=`, and no secret in any log.

use std::process::Command;
use std::time::{Duration, Instant};

use localml_cli::client::{self, Connection};
use localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use localml_proto::inference::{ModelMetadataRequest, ServerLiveRequest};
use localml_proto::localml::v1::admin_client::AdminClient;
use localml_proto::localml::v1::jobs_client::JobsClient;
use localml_proto::localml::v1::keys_client::KeysClient;
use localml_proto::localml::v1::*;
use localml_tests::*;
use tonic::Code;

async fn connect(scheduler_addr: &str, key: Option<&str>) -> Connection {
    client::connect_with_key(scheduler_addr, Duration::from_secs(10), key)
        .await
        .expect("connect")
}

/// Runs `localml` with `args` against `server` with `key`; (success, stdout, stderr).
fn localml(server: &str, key: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("localml"))
        .args(args)
        .args(["--server", server])
        .env("LOCALML_KEY", key)
        .output()
        .expect("run localml");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Creates a key with the CLI, as an operator does; returns the printed key.
fn create_key(scheduler: &Scheduler, admin: &str, args: &[&str]) -> String {
    let mut all = vec!["keys", "create"];
    all.extend_from_slice(args);
    let (ok, key, err) = localml(&scheduler.addr, admin, &all);
    assert!(ok && key.starts_with("lmk_"), "keys create {args:?}: {err}");
    key
}

fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("refused");
    (status.code(), status.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_scopes_models_and_tenants_with_auth_required() {
    let log = TempDir::new("keys-log");
    let log_file = log.path().join("processes.log");
    log_processes_to(Some(log_file.clone()));
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--auth", "required"]);
    let _w = Worker::start("w", &scheduler, &[]);
    log_processes_to(None);
    let admin_key = scheduler.admin_key();
    let mode = std::fs::metadata(scheduler.data_dir().join("admin.key"))
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .expect("admin.key");
    assert_eq!(mode, 0o600, "the admin key file is private");

    // No key: health answers, everything else is UNAUTHENTICATED, naming the fix.
    let mut open = GrpcInferenceServiceClient::new(connect(&scheduler.addr, None).await);
    assert!(open.server_live(ServerLiveRequest {}).await.is_ok());
    let (code, message) = code_of(
        open.model_metadata(ModelMetadataRequest {
            name: "image_classifier".into(),
            version: String::new(),
        })
        .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("authorization: Bearer"), "{message}");
    let mut no_key_admin = AdminClient::new(connect(&scheduler.addr, None).await);
    assert_eq!(
        code_of(no_key_admin.list_workers(ListWorkersRequest {}).await).0,
        Code::Unauthenticated
    );
    // Malformed and unknown keys say so, and only so.
    let mut bad = AdminClient::new(connect(&scheduler.addr, Some("lmk_123")).await);
    let (code, message) = code_of(bad.list_workers(ListWorkersRequest {}).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("malformed"), "{message}");
    let forged = format!("lmk_{}.{}", "0".repeat(16), "1".repeat(64));
    let mut bad = AdminClient::new(connect(&scheduler.addr, Some(&forged)).await);
    let (_, message) = code_of(bad.list_workers(ListWorkersRequest {}).await);
    assert!(message.contains("unknown"), "{message}");

    // The admin key from the data directory works; the CLI finds it through LOCALML_KEY.
    scheduler.wait_ready(&["w"]).await;
    let (ok, table, err) = localml(&scheduler.addr, &admin_key, &["workers"]);
    assert!(ok && table.contains('w'), "{err}");

    // An infer key runs inference but cannot cordon.
    let infer = create_key(
        &scheduler,
        &admin_key,
        &["--name", "app", "--scope", "infer"],
    );
    let mut app = client::inference_client(connect(&scheduler.addr, Some(&infer)).await);
    app.model_infer(image_request(1))
        .await
        .expect("infer key infers");
    let (ok, _, err) = localml(&scheduler.addr, &infer, &["cordon", "w"]);
    assert!(!ok, "an infer key cordoned a worker");
    assert!(err.contains("'admin' scope"), "{err}");

    // A key limited to one model cannot use another.
    let text_only = create_key(
        &scheduler,
        &admin_key,
        &[
            "--name",
            "texts",
            "--scope",
            "infer",
            "--models",
            "text_classifier",
        ],
    );
    let mut texts = client::inference_client(connect(&scheduler.addr, Some(&text_only)).await);
    let (code, message) = code_of(texts.model_infer(image_request(1)).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("image_classifier"), "{message}");

    // Tenants: a jobs key sees only its own tenant's jobs.
    let school = create_key(
        &scheduler,
        &admin_key,
        &["--name", "school", "--scope", "jobs"],
    );
    let clinic = create_key(
        &scheduler,
        &admin_key,
        &["--name", "clinic", "--scope", "jobs"],
    );
    let mut a = JobsClient::new(connect(&scheduler.addr, Some(&school)).await);
    let mut b = JobsClient::new(connect(&scheduler.addr, Some(&clinic)).await);
    let job = a
        .submit(SubmitJobRequest {
            request: Some(image_request(1)),
            ..Default::default()
        })
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(job.tenant, "school", "the tenant comes from the key");
    let (code, _) = code_of(
        a.submit(SubmitJobRequest {
            request: Some(image_request(1)),
            tenant: "clinic".into(),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(code, Code::PermissionDenied, "naming another tenant");
    assert_eq!(
        code_of(b.get(GetJobRequest { id: job.id.clone() }).await).0,
        Code::NotFound,
        "clinic cannot read school's job"
    );
    assert_eq!(
        code_of(b.cancel(CancelJobRequest { id: job.id.clone() }).await).0,
        Code::NotFound,
        "clinic cannot cancel school's job"
    );
    let listed = b
        .list(ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.jobs.is_empty(),
        "clinic lists none: {:?}",
        listed.jobs
    );
    assert_eq!(
        code_of(
            b.list(ListJobsRequest {
                tenant: "school".into(),
                ..Default::default()
            })
            .await
        )
        .0,
        Code::PermissionDenied
    );
    let own = a
        .get(GetJobRequest { id: job.id.clone() })
        .await
        .expect("own job")
        .into_inner();
    assert_eq!(own.id, job.id);

    // Revoked and expired keys are refused with the reason.
    let (ok, listing, err) = localml(&scheduler.addr, &admin_key, &["keys", "list"]);
    assert!(
        ok && listing.contains("school") && listing.contains("active"),
        "{err}"
    );
    let (ok, _, err) = localml(&scheduler.addr, &admin_key, &["keys", "revoke", "app"]);
    assert!(ok, "{err}");
    let revoked = wait_until(SOON, || {
        let mut app = app.clone();
        async move {
            app.model_infer(image_request(1))
                .await
                .err()
                .is_some_and(|s| {
                    s.code() == Code::Unauthenticated && s.message().contains("revoked")
                })
        }
    })
    .await;
    assert!(revoked, "a revoked key stops working");
    let short = create_key(
        &scheduler,
        &admin_key,
        &["--name", "short", "--scope", "infer", "--expires", "1s"],
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut expired = client::inference_client(connect(&scheduler.addr, Some(&short)).await);
    let (code, message) = code_of(expired.model_infer(image_request(1)).await);
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("expired"), "{message}");

    // No secret in any log: the scheduler and worker logs (debug level) of this whole
    // run, and the CLI's output, hold none of the keys created. A planted line proves
    // the search finds a key when one is there.
    let logged = std::fs::read_to_string(&log_file).expect("log");
    assert!(
        logged.contains("API key created"),
        "the log was captured at debug level"
    );
    // The worker's join token (the harness made it with `localml token create`) too.
    let token = join_token(&scheduler.addr);
    let secrets = [
        &admin_key, &infer, &text_only, &school, &clinic, &short, &token,
    ];
    let secret_part = |key: &str| key.split('.').nth(1).unwrap_or_default().to_string();
    let leaks = |text: &str| -> Vec<String> {
        secrets
            .iter()
            .filter(|k| text.contains(&secret_part(k)))
            .map(|k| k.split('.').next().unwrap_or_default().to_string())
            .collect()
    };
    let planted = format!("{logged}\nplanted: {}\n", secrets[2]);
    assert_eq!(leaks(&planted).len(), 1, "the search finds a planted key");
    assert!(
        leaks(&logged).is_empty(),
        "keys in the log: {:?}",
        leaks(&logged)
    );
    assert!(
        !logged.contains("PRIVATE KEY"),
        "a private key (the CA's, a worker's) in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_stops_working_on_every_replica() {
    let etcd = Etcd::start();
    let store = etcd.store_address("keys");
    let one = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--store", &store, "--auth", "required"],
    );
    let two = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--store", &store, "--auth", "required"],
    );
    let admin = one.admin_key();
    let key = create_key(&one, &admin, &["--name", "reader", "--scope", "admin"]);
    // The key created through replica one works on replica two.
    let mut on_two = AdminClient::new(connect(&two.addr, Some(&key)).await);
    let works = wait_until(SOON, || {
        let mut c = on_two.clone();
        async move { c.list_workers(ListWorkersRequest {}).await.is_ok() }
    })
    .await;
    assert!(works, "a key reaches every replica");
    let (ok, _, err) = localml(&one.addr, &admin, &["keys", "revoke", "reader"]);
    assert!(ok, "{err}");
    let start = Instant::now();
    let refused = wait_until(SOON, || {
        let mut c = on_two.clone();
        async move {
            c.list_workers(ListWorkersRequest {})
                .await
                .err()
                .is_some_and(|s| s.message().contains("revoked"))
        }
    })
    .await;
    println!(
        "revoked on replica one, refused on replica two after {:?}",
        start.elapsed()
    );
    assert!(
        refused,
        "replica two refuses the revoked key without a restart"
    );
    // Replica two's own admin key is its own; both work.
    let second_admin = two.admin_key();
    assert_ne!(second_admin, admin);
    let mut c = AdminClient::new(connect(&two.addr, Some(&second_admin)).await);
    on_two = AdminClient::new(connect(&two.addr, Some(&admin)).await);
    assert!(c.list_workers(ListWorkersRequest {}).await.is_ok());
    assert!(on_two.list_workers(ListWorkersRequest {}).await.is_ok());
}

/// The error that ends `stream` (bounded wait), skipping the answers before it.
async fn error_ending<T: std::fmt::Debug>(stream: &mut tonic::Streaming<T>) -> tonic::Status {
    use futures::StreamExt;
    let ended = tokio::time::timeout(SOON, async {
        loop {
            match stream.next().await {
                Some(Ok(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ended");
    ended
        .expect("an error, not a silent end")
        .expect_err("an error")
}

/// A ModelStreamInfer stream and a Jobs Watch opened with a key end with
/// UNAUTHENTICATED when the key is revoked, instead of serving on until the client hangs
/// up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_end_when_their_key_is_revoked() {
    use futures::StreamExt;
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--auth", "required"]);
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let admin = scheduler.admin_key();
    let key = create_key(
        &scheduler,
        &admin,
        &["--name", "streamer", "--scope", "infer", "--scope", "jobs"],
    );
    let mut inference = GrpcInferenceServiceClient::new(connect(&scheduler.addr, Some(&key)).await);
    let (requests, outbound) = futures::channel::mpsc::unbounded();
    requests.unbounded_send(image_request(1)).expect("send");
    let mut answers = inference
        .model_stream_infer(outbound)
        .await
        .expect("stream opened")
        .into_inner();
    let first = tokio::time::timeout(SOON, answers.next())
        .await
        .expect("an answer");
    assert!(
        matches!(first, Some(Ok(ref a)) if a.error_message.is_empty()),
        "{first:?}"
    );
    let mut jobs = JobsClient::new(connect(&scheduler.addr, Some(&key)).await);
    let mut watch = jobs
        .watch(WatchJobsRequest { ids: vec![] })
        .await
        .expect("watch opened")
        .into_inner();

    let (ok, _, err) = localml(&scheduler.addr, &admin, &["keys", "revoke", "streamer"]);
    assert!(ok, "{err}");
    let started = Instant::now();
    // The request stream stays open (the sender is alive): only the revocation ends it.
    let status = error_ending(&mut answers).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("revoked"), "{status:?}");
    let status = error_ending(&mut watch).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // A key that expires: its open watch ends at the expiry, with nothing revoked.
    let short = create_key(
        &scheduler,
        &admin,
        &["--name", "short", "--scope", "jobs", "--expires", "3s"],
    );
    let mut jobs = JobsClient::new(connect(&scheduler.addr, Some(&short)).await);
    let mut watch = jobs
        .watch(WatchJobsRequest { ids: vec![] })
        .await
        .expect("watch opened")
        .into_inner();
    let status = error_ending(&mut watch).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{status:?}");
    eprintln!(
        "streams ended {:?} after `localml keys revoke` returned",
        started.elapsed()
    );
    drop(requests);
}

/// An address of this PC other than loopback, as another PC on the LAN reaches it.
fn lan_address() -> std::net::IpAddr {
    if_addrs::get_if_addrs()
        .expect("list this PC's addresses")
        .into_iter()
        .find(|i| !i.is_loopback() && !i.is_link_local() && i.ip().is_ipv4())
        .map(|i| i.ip())
        .expect("this PC has no IPv4 address but loopback")
}

fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_reachable_from_the_lan_requires_tls_and_keys_unless_insecure() {
    // 0.0.0.0: reachable from the LAN; TLS and keys are required though nobody said so.
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--listen", "0.0.0.0:0"]);
    let ca = read_ca_pem(&scheduler.data_dir());
    // The certificate names this PC's LAN address though the listener is a wildcard, so
    // a client on the LAN verifies it without --tls-san.
    let lan = format!("https://{}:{}", lan_address(), port_of(&scheduler.addr));
    let connect_tls = |key: Option<String>| {
        let (lan, ca) = (lan.clone(), ca.clone());
        async move {
            client::connect_with(&lan, Duration::from_secs(10), key.as_deref(), Some(&ca))
                .await
                .expect("connect over TLS")
        }
    };
    let mut no_key = AdminClient::new(connect_tls(None).await);
    assert_eq!(
        code_of(no_key.list_workers(ListWorkersRequest {}).await).0,
        Code::Unauthenticated
    );
    let mut with_key = AdminClient::new(connect_tls(Some(scheduler.admin_key())).await);
    assert!(with_key.list_workers(ListWorkersRequest {}).await.is_ok());
    // Plain HTTP/2 to the TLS port gets nothing; and no key is sent in clear text to
    // another host at all: the client refuses before connecting, and says to use https.
    let plain = format!("{}:{}", lan_address(), port_of(&scheduler.addr));
    let mut in_clear = AdminClient::new(connect(&plain, None).await);
    assert!(in_clear.list_workers(ListWorkersRequest {}).await.is_err());
    let refused = client::connect_with_key(&plain, Duration::from_secs(10), Some("lmk_x.y")).await;
    assert!(
        matches!(refused, Err(client::ConnectError::KeyInClear { .. })),
        "a key for a plain LAN address"
    );
    let (ok, _, err) = localml(&plain, &scheduler.admin_key(), &["workers"]);
    assert!(
        !ok && err.contains("not sending an API key in clear text") && err.contains("https://"),
        "{err}"
    );
    // Without a key the plain connection is tried; the TLS port answers it with nothing
    // a client can read, and the CLI hints to use https.
    let (ok, _, err) = localml(&plain, "", &["workers"]);
    assert!(!ok && err.contains("use --server https://"), "{err}");

    // TLS off on a LAN listener needs --insecure: the scheduler does not start.
    let dir = TempDir::new("tls-off");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(bin("localml-scheduler"))
            .args(["--listen", "0.0.0.0:0", "--cluster-listen", "127.0.0.1:0"])
            .args(["--client-tls", "off", "--data-dir"])
            .arg(dir.path())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the scheduler stops at once")
    .expect("run the scheduler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("client_tls") && stderr.contains("--insecure"),
        "{stderr}"
    );

    // --insecure: the operator's explicit choice; open and in clear, with a warning on
    // /readyz.
    let insecure = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &[
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let mut open =
        AdminClient::new(connect(&format!("127.0.0.1:{}", port_of(&insecure.addr)), None).await);
    assert!(open.list_workers(ListWorkersRequest {}).await.is_ok());
    let http = insecure.http_addr.clone().expect("http listener");
    let (code, body) = http_get(&http, "/readyz").expect("readyz");
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("warning: --insecure") && body.contains("without TLS"),
        "{body}"
    );

    // Loopback without --auth required stays open (what `localml up` relies on).
    let local = Scheduler::start_open();
    let mut open = AdminClient::new(connect(&local.addr, None).await);
    assert!(open.list_workers(ListWorkersRequest {}).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_serves_tls_from_the_cluster_ca() {
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--auth", "required", "--client-tls", "required"],
    );
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let https = format!("https://{}", scheduler.addr);
    let admin = scheduler.admin_key();
    let ca = read_ca_pem(&scheduler.data_dir());
    let ca_file = scheduler.data_dir().join("ca.pem");
    let ca_hash = localml_trust::sha256_hex(ca.as_bytes());
    let home = TempDir::new("tls-home");
    let cli = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(bin("localml"))
            .args(args)
            .env_remove("LOCALML_KEY")
            .env_remove("LOCALML_CA")
            .env("HOME", home.path())
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .envs(env.iter().copied())
            .output()
            .expect("run localml");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };

    // `localml ca` from another PC: no key, no CA yet; the PEM it prints is the CA the
    // join token pins, and its sha256 goes to stderr with the advice to compare it.
    let (ok, pem, err) = cli(&["ca", "--server", &https], &[]);
    assert!(ok, "{err}");
    assert_eq!(pem, ca);
    assert!(
        err.contains(&ca_hash) && err.contains("not verified"),
        "{err}"
    );
    assert!(join_token(&https).starts_with(&format!("K10{ca_hash}::")));
    // With the hash from the operator: verified; with another: refused, naming both.
    let (ok, pem, err) = cli(&["ca", "--server", &https, "--sha256", &ca_hash], &[]);
    assert!(ok && pem == ca && !err.contains("not verified"), "{err}");
    let wrong = "ab".repeat(32);
    let (ok, _, err) = cli(&["ca", "--server", &https, "--sha256", &wrong], &[]);
    assert!(
        !ok && err.contains(&wrong) && err.contains(&ca_hash),
        "{err}"
    );

    // The CLI over https: without the CA it says how to get it; with --ca, LOCALML_CA or
    // the credentials file's `ca` it works.
    let (ok, _, err) = cli(&["workers", "--server", &https], &[("LOCALML_KEY", &admin)]);
    assert!(!ok && err.contains("localml ca --server"), "{err}");
    let ca_path = ca_file.to_string_lossy().into_owned();
    let (ok, out, err) = cli(
        &["--ca", &ca_path, "workers", "--server", &https],
        &[("LOCALML_KEY", &admin)],
    );
    assert!(ok && out.contains('w'), "{err}");
    std::fs::create_dir_all(home.path().join("config/localml")).expect("mkdir");
    std::fs::copy(&ca_file, home.path().join("config/localml/ca.pem")).expect("copy");
    std::fs::write(
        home.path().join("config/localml/credentials.yaml"),
        format!("server: {https}\nkey: {admin}\nca: ca.pem\n"),
    )
    .expect("write credentials");
    let (ok, _, err) = cli(&["workers", "--server", &https], &[]);
    assert!(ok, "credentials file with a relative ca: {err}");
    // Its `server` is the default for commands without --server.
    let (ok, out, err) = cli(&["workers"], &[]);
    assert!(ok && out.contains('w'), "credentials file's server: {err}");
    let (ok, _, err) = cli(&["workers", "--server", "127.0.0.1:1"], &[]);
    assert!(
        !ok && err.contains("127.0.0.1:1"),
        "--server still wins: {err}"
    );

    // Inference from Rust over TLS, with an infer key.
    let (ok, key, err) = cli(
        &[
            "keys",
            "create",
            "--name",
            "tls-client",
            "--scope",
            "infer",
            "--server",
            &https,
        ],
        &[("LOCALML_KEY", &admin), ("LOCALML_CA", &ca_path)],
    );
    assert!(ok, "{err}");
    let key = key.trim().to_string();
    let channel = client::connect_with(&https, Duration::from_secs(10), Some(&key), Some(&ca))
        .await
        .expect("connect over TLS");
    let mut inference = GrpcInferenceServiceClient::new(channel);
    let metadata = inference
        .model_metadata(ModelMetadataRequest {
            name: "image_classifier".into(),
            version: String::new(),
        })
        .await
        .expect("metadata over TLS");
    assert_eq!(metadata.into_inner().name, "image_classifier");
    // A CA that did not sign the scheduler's certificate fails the handshake.
    let other =
        localml_trust::ca::ClusterCa::generate(std::time::SystemTime::now()).expect("another CA");
    let stranger = client::connect_with(
        &https,
        Duration::from_secs(10),
        Some(&key),
        Some(other.cert_pem()),
    )
    .await;
    if let Ok(channel) = stranger {
        let mut c = GrpcInferenceServiceClient::new(channel);
        assert!(c.server_live(ServerLiveRequest {}).await.is_err());
    }

    // Triton's Python client with ssl=True, root_certificates=ca.pem and headers=.
    if tritonclient_available() {
        check_with_tritonclient_tls(&scheduler.addr, Some(&key), Some(&ca_file)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triton_python_client_sends_the_key_in_headers() {
    if !tritonclient_available() {
        return;
    }
    let scheduler = Scheduler::start_full(TEST_SCHEDULER_CONFIG, &["--auth", "required"]);
    let _w = Worker::start("w", &scheduler, &[]);
    scheduler.wait_ready(&["w"]).await;
    let key = create_key(
        &scheduler,
        &scheduler.admin_key(),
        &["--name", "triton", "--scope", "infer"],
    );
    check_with_tritonclient(&scheduler.addr, Some(&key)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_file_is_imported_and_a_bad_one_stops_the_start() {
    // As the Helm chart's Secret: a key in the scheduler's format, made elsewhere.
    let dir = TempDir::new("admin-key-file");
    let file = dir.path().join("key");
    let key = format!(
        "lmk_{}.{}",
        "0123456789abcdef",
        "fedcba9876543210".repeat(4)
    );
    std::fs::write(&file, format!("{key}\n")).expect("write");
    let path = file.to_string_lossy().into_owned();
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--auth", "required", "--admin-key-file", &path],
    );
    let mut admin = AdminClient::new(connect(&scheduler.addr, Some(&key)).await);
    assert!(admin.list_workers(ListWorkersRequest {}).await.is_ok());
    let mut keys = KeysClient::new(connect(&scheduler.addr, Some(&key)).await);
    let listed = keys
        .list_keys(ListKeysRequest {})
        .await
        .expect("list")
        .into_inner();
    assert!(
        listed.keys.iter().any(|k| k.name == "admin@file"),
        "{listed:?}"
    );

    // A file that holds no key: the scheduler does not start, and says which file
    // without repeating what is in it.
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "hunter2-not-a-key\n").expect("write");
    let out = Command::new(bin("localml-scheduler"))
        .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path().join("state"))
        .arg("--admin-key-file")
        .arg(&bad)
        .output()
        .expect("run the scheduler");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("does not hold an API key") && stderr.contains("bad"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("hunter2"),
        "the file's content is not echoed: {stderr}"
    );
}

/// An operator opens inference of chosen models to everyone on the LAN without a key
/// (a kiosk): `localml keys create --anonymous --scope infer --models ...`. Callers without
/// a key may run those models, over gRPC and REST, and nothing else; the page's
/// `/api/v1/access` says what is open; revoking the key closes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_key_opens_chosen_models_to_callers_without_a_key() {
    let scheduler = Scheduler::start_full(
        TEST_SCHEDULER_CONFIG,
        &["--auth", "required", "--rest-listen", "127.0.0.1:0"],
    );
    let _w = Worker::start("w", &scheduler, &[]);
    let admin_key = scheduler.admin_key();
    scheduler.wait_ready(&["w"]).await;
    let rest = scheduler
        .rest_url
        .clone()
        .expect("REST URL")
        .split_once("://")
        .expect("a URL")
        .1
        .to_string();
    let mut nobody = client::inference_client(connect(&scheduler.addr, None).await);
    assert_eq!(
        code_of(nobody.model_infer(image_request(1)).await).0,
        Code::Unauthenticated,
        "closed before the anonymous key"
    );
    let access = http(&rest, "GET", "/api/v1/access", &[], b"");
    assert_eq!(access.status, 200, "{access:?}");
    assert!(access.json()["anonymous"].is_null(), "{access:?}");

    // Anything but infer on listed models is refused, saying why.
    for args in [
        &["--name", "wide", "--scope", "infer", "--anonymous"][..],
        &[
            "--name",
            "admin-for-all",
            "--scope",
            "admin",
            "--models",
            "image_classifier",
            "--anonymous",
        ],
    ] {
        let mut all = vec!["keys", "create"];
        all.extend_from_slice(args);
        let (ok, _, err) = localml(&scheduler.addr, &admin_key, &all);
        assert!(!ok && err.contains("anonymous key"), "{args:?}: {err}");
    }
    let mut create = vec!["keys", "create"];
    create.extend_from_slice(&[
        "--name",
        "kiosk",
        "--scope",
        "infer",
        "--models",
        "image_classifier",
        "--anonymous",
    ]);
    let (ok, _, err) = localml(&scheduler.addr, &admin_key, &create);
    assert!(ok, "{err}");
    assert!(
        err.contains("without a key"),
        "the CLI says what it opened: {err}"
    );

    // gRPC without a key: the listed model runs; another model and admin calls do not.
    let response = nobody
        .model_infer(image_request(1))
        .await
        .expect("an opened model runs without a key")
        .into_inner();
    assert_eq!(response.model_name, "image_classifier");
    let mut text = image_request(1);
    text.model_name = "text_classifier".into();
    let (code, message) = code_of(nobody.model_infer(text).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.contains("'kiosk'") && message.contains("image_classifier"),
        "{message}"
    );
    let mut no_key_admin = AdminClient::new(connect(&scheduler.addr, None).await);
    assert_eq!(
        code_of(no_key_admin.list_workers(ListWorkersRequest {}).await).0,
        Code::Unauthenticated
    );

    // REST likewise; the page's access call says what is open to everyone.
    let access = http(&rest, "GET", "/api/v1/access", &[], b"");
    let open = &access.json()["anonymous"];
    assert_eq!(open["key"], "kiosk", "{access:?}");
    assert_eq!(open["models"][0], "image_classifier", "{access:?}");
    let body = serde_json::json!({"inputs": [{
        "name": "image", "datatype": "FP32", "shape": [1, 3, 32, 32],
        "data": vec![0.5f32; 3 * 32 * 32],
    }]})
    .to_string();
    let answer = http(
        &rest,
        "POST",
        "/v2/models/image_classifier/infer",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(answer.status, 200, "{answer:?}");
    let workers = http(&rest, "GET", "/api/v1/workers", &[], b"");
    assert_eq!(workers.status, 401, "{workers:?}");

    // Revoked: closed again.
    let (ok, _, err) = localml(&scheduler.addr, &admin_key, &["keys", "revoke", "kiosk"]);
    assert!(ok, "{err}");
    let closed = wait_until(SOON, || {
        let mut nobody = nobody.clone();
        async move {
            matches!(nobody.model_infer(image_request(1)).await, Err(s) if s.code() == Code::Unauthenticated)
        }
    })
    .await;
    assert!(
        closed,
        "the revoked anonymous key still serves callers without a key"
    );
    let access = http(&rest, "GET", "/api/v1/access", &[], b"");
    assert!(access.json()["anonymous"].is_null(), "{access:?}");

    // Logged: at every start while one is valid, and when one is created.
    let (ok, _, err) = localml(
        &scheduler.addr,
        &admin_key,
        &[
            "keys",
            "create",
            "--name",
            "lobby",
            "--scope",
            "infer",
            "--models",
            "image_classifier",
            "--anonymous",
        ],
    );
    assert!(ok, "{err}");
    let mut scheduler = scheduler;
    scheduler.process.kill9();
    let data_dir = scheduler.data_dir();
    let mut restarted = Command::new(bin("localml-scheduler"))
        .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
        .args(["--auth", "required", "--config"])
        .arg(data_dir.parent().expect("dir").join("scheduler.yaml"))
        .arg("--data-dir")
        .arg(&data_dir)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the scheduler again");
    let (lines, seen) = std::sync::mpsc::channel::<String>();
    let outputs: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(restarted.stdout.take().expect("stdout")),
        Box::new(restarted.stderr.take().expect("stderr")),
    ];
    for reader in outputs {
        let lines = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(reader)
                .lines()
                .map_while(Result::ok)
            {
                let _ = lines.send(line);
            }
        });
    }
    // Reads the scheduler's lines into `log` until one says `what` (false after SOON).
    fn wait_for(
        seen: &std::sync::mpsc::Receiver<String>,
        log: &mut Vec<String>,
        what: impl Fn(&str) -> bool,
    ) -> bool {
        let end = std::time::Instant::now() + SOON;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            let Ok(line) = seen.recv_timeout(left) else {
                return false;
            };
            let found = what(&line);
            log.push(line);
            if found {
                return true;
            }
        }
        false
    }
    let mut log = Vec::new();
    let started = wait_for(&seen, &mut log, |l| {
        l.contains("anonymous key") && l.contains("lobby")
    });
    let address = log
        .iter()
        .find_map(|l| l.split("listening on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string);
    let created = address.is_some_and(|address| {
        let (ok, _, err) = localml(
            &address,
            &admin_key,
            &[
                "keys",
                "create",
                "--name",
                "hall",
                "--scope",
                "infer",
                "--models",
                "tensor_stats",
                "--anonymous",
            ],
        );
        assert!(ok, "{err}");
        wait_for(&seen, &mut log, |l| {
            l.contains("anonymous key") && l.contains("tensor_stats")
        })
    });
    let _ = restarted.kill();
    let _ = restarted.wait();
    assert!(
        started,
        "no start-up warning for the anonymous key: {log:#?}"
    );
    assert!(created, "no warning when one was created: {log:#?}");
}
