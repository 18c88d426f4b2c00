//! The trust boundary between workers and the scheduler (issue #10), with real processes:
//! join tokens that pin the cluster CA, mutual TLS with certificates that name workers,
//! and a worker inference port that only takes clients with a certificate from the CA.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use localml_proto::inference::ServerLiveRequest;
use localml_proto::localml::v1::cluster_client::ClusterClient;
use localml_proto::localml::v1::{JoinRequest, LeaveRequest, StatusReport, WorkerStatus};
use localml_tests::*;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// A channel to the scheduler's cluster port, over TLS verified by the CA, presenting
/// `identity` (cert, key) when given.
async fn cluster_channel(scheduler: &Scheduler, identity: Option<(String, String)>) -> Channel {
    let ca = std::fs::read_to_string(operator_certificate(&scheduler.addr).ca).expect("ca.pem");
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Endpoint::from_shared(format!("https://{}", scheduler.cluster_addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connect over TLS")
}

/// Whether the worker `name` becomes Ready at `addr` (bounded wait).
async fn ready_at(scheduler: &Scheduler, name: &str, addr: &str) -> bool {
    wait_until(SOON, || async {
        scheduler.workers().await.iter().any(|w| {
            w.status
                .as_ref()
                .is_some_and(|s| s.name == name && s.inference_address == addr)
                && w.state == localml_proto::localml::v1::WorkerState::Ready as i32
        })
    })
    .await
}

fn status(name: &str) -> WorkerStatus {
    WorkerStatus {
        name: name.into(),
        inference_address: "127.0.0.1:9".into(),
        ..Default::default()
    }
}

/// The certificate and key a worker keeps in `dir`.
fn worker_identity(dir: &Path) -> (String, String) {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("credential file");
    (read("worker.pem"), read("worker.key"))
}

/// Runs a worker that is expected to stop by itself; returns its exit code and stderr.
fn run_worker_until_exit(
    scheduler: &Scheduler,
    name: &str,
    data_dir: &Path,
    token: Option<&str>,
) -> (Option<i32>, String) {
    let mut command = Command::new(bin("localml-worker"));
    command
        .args(["--name", name, "--listen", "127.0.0.1:0", "--scheduler"])
        .arg(&scheduler.cluster_addr)
        .args(["--intra-op-threads", "1", "--models"])
        .arg(models_dir())
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .env_remove("LOCALML_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(token) = token {
        command.env("LOCALML_TOKEN", token);
    }
    let mut child = command.spawn().expect("start worker");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code();
        }
        if start.elapsed() > SOON {
            let _ = child.kill();
            let _ = child.wait();
            panic!("worker {name} did not stop by itself within {SOON:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (code, reader.join().expect("stderr reader"))
}

#[tokio::test]
async fn a_worker_without_a_token_or_certificate_cannot_join_or_report() {
    let scheduler = Scheduler::start();
    let dir = TempDir::new("no-token");
    let (code, stderr) = run_worker_until_exit(&scheduler, "intruder", dir.path(), None);
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("no join token"), "{stderr}");

    let mut cluster = ClusterClient::new(cluster_channel(&scheduler, None).await);
    let join = cluster
        .join(JoinRequest {
            status: Some(status("intruder")),
            csr_pem: String::new(),
            credentials_only: false,
        })
        .await
        .expect_err("no credential");
    assert_eq!(join.code(), tonic::Code::Unauthenticated, "{join:?}");
    let report = cluster
        .report_status(StatusReport {
            worker_id: "w-0000000000000000".into(),
            status: Some(status("intruder")),
        })
        .await
        .expect_err("no certificate");
    assert_eq!(report.code(), tonic::Code::Unauthenticated, "{report:?}");
    let leave = cluster
        .leave(LeaveRequest {
            worker_id: "w-0000000000000000".into(),
        })
        .await
        .expect_err("no certificate");
    assert_eq!(leave.code(), tonic::Code::Unauthenticated, "{leave:?}");

    // A malformed token is refused with the reason, without echoing it.
    let secret_looking = "K10nothex::abcdef.0123456789abcdef0123456789abcdef";
    let mut request = tonic::Request::new(JoinRequest {
        status: Some(status("intruder")),
        csr_pem: "garbage".into(),
        credentials_only: false,
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {secret_looking}").parse().expect("ascii"),
    );
    let refused = cluster.join(request).await.expect_err("malformed");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("malformed"), "{refused:?}");
    assert!(
        !refused.message().contains("0123456789abcdef"),
        "{refused:?}"
    );

    // A valid token with a garbage CSR: INVALID_ARGUMENT, not a panic.
    let mut request = tonic::Request::new(JoinRequest {
        status: Some(status("intruder")),
        csr_pem:
            "-----BEGIN CERTIFICATE REQUEST-----\ngarbage\n-----END CERTIFICATE REQUEST-----\n"
                .into(),
        credentials_only: false,
    });
    let token = join_token(&scheduler.addr);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let refused = cluster.join(request).await.expect_err("garbage csr");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");

    // Plaintext is not spoken on the cluster port.
    let plain = Endpoint::from_shared(format!("http://{}", scheduler.cluster_addr))
        .expect("uri")
        .connect()
        .await;
    if let Ok(channel) = plain {
        let answer = ClusterClient::new(channel)
            .join(JoinRequest {
                status: Some(status("intruder")),
                csr_pem: String::new(),
                credentials_only: false,
            })
            .await;
        assert!(answer.is_err(), "plaintext join answered: {answer:?}");
    }
    assert!(scheduler.worker_state("intruder").await.is_none());
}

#[tokio::test]
async fn a_token_for_another_ca_is_refused_naming_both_hashes() {
    let scheduler = Scheduler::start();
    let token = join_token(&scheduler.addr);
    let served = localml_trust::sha256_hex(
        &std::fs::read(operator_certificate(&scheduler.addr).ca).expect("ca.pem"),
    );
    assert!(token.contains(&served), "the token pins the served CA");
    let pinned = "0".repeat(64);
    let wrong = token.replace(&served, &pinned);
    let dir = TempDir::new("wrong-ca");
    let (code, stderr) = run_worker_until_exit(&scheduler, "pc-wrong", dir.path(), Some(&wrong));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&served) && stderr.contains(&pinned),
        "names both hashes: {stderr}"
    );
    let secret = token.rsplit('.').next().expect("secret");
    assert!(
        !stderr.contains(secret),
        "the secret is never logged: {stderr}"
    );
    assert!(!dir.path().join("worker.key").exists());
    assert!(scheduler.worker_state("pc-wrong").await.is_none());
}

#[tokio::test]
async fn a_second_process_cannot_take_a_live_workers_name_or_act_for_another() {
    let scheduler = Scheduler::start();
    let dir = TempDir::new("pc-a");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let first = Worker::start("pc-a", &scheduler, &["--data-dir", &data_dir]);
    let _other = Worker::start("pc-b", &scheduler, &[]);
    scheduler.wait_ready(&["pc-a", "pc-b"]).await;

    // A token join under the live name: ALREADY_EXISTS.
    let request = localml_trust::ca::certificate_request("pc-a").expect("csr");
    let mut join = tonic::Request::new(JoinRequest {
        status: Some(status("pc-a")),
        csr_pem: request.cert_pem,
        credentials_only: false,
    });
    let token = join_token(&scheduler.addr);
    join.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("ascii"),
    );
    let mut anonymous = ClusterClient::new(cluster_channel(&scheduler, None).await);
    let taken = anonymous.join(join).await.expect_err("name taken");
    assert_eq!(taken.code(), tonic::Code::AlreadyExists, "{taken:?}");

    // A second process with a token and the same name does not replace the first.
    let _impostor = Worker::start("pc-a", &scheduler, &[]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let listed = scheduler.workers().await;
    let pc_a: Vec<_> = listed
        .iter()
        .filter(|w| w.status.as_ref().is_some_and(|s| s.name == "pc-a"))
        .collect();
    assert_eq!(pc_a.len(), 1, "{listed:?}");
    assert_eq!(
        pc_a[0].status.as_ref().map(|s| s.inference_address.clone()),
        Some(first.addr.clone())
    );

    // pc-a's certificate cannot report, join or leave as pc-b.
    let mut as_a =
        ClusterClient::new(cluster_channel(&scheduler, Some(worker_identity(dir.path()))).await);
    let b_id = listed
        .iter()
        .find(|w| w.status.as_ref().is_some_and(|s| s.name == "pc-b"))
        .map(|w| w.id.clone())
        .expect("pc-b listed");
    assert!(
        !b_id.starts_with("w1") && b_id.len() > 8,
        "random id: {b_id}"
    );
    let report = as_a
        .report_status(StatusReport {
            worker_id: b_id.clone(),
            status: Some(status("pc-b")),
        })
        .await
        .expect_err("not pc-a's");
    assert_eq!(report.code(), tonic::Code::PermissionDenied, "{report:?}");
    let report = as_a
        .report_status(StatusReport {
            worker_id: b_id.clone(),
            status: Some(status("pc-a")),
        })
        .await
        .expect_err("pc-b's id");
    assert_eq!(report.code(), tonic::Code::PermissionDenied, "{report:?}");
    let leave = as_a
        .leave(LeaveRequest { worker_id: b_id })
        .await
        .expect_err("not pc-a's");
    assert_eq!(leave.code(), tonic::Code::PermissionDenied, "{leave:?}");
    let join = as_a
        .join(JoinRequest {
            status: Some(status("pc-b")),
            csr_pem: String::new(),
            credentials_only: false,
        })
        .await
        .expect_err("not pc-a's name");
    assert_eq!(join.code(), tonic::Code::PermissionDenied, "{join:?}");
    scheduler.wait_ready(&["pc-a", "pc-b"]).await;
}

#[tokio::test]
async fn a_restarted_worker_rejoins_with_its_certificate_without_a_token() {
    use std::os::unix::fs::PermissionsExt;
    let scheduler = Scheduler::start();
    let dir = TempDir::new("restart");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let mut worker = Worker::start("pc-r", &scheduler, &["--data-dir", &data_dir]);
    scheduler.wait_ready(&["pc-r"]).await;
    // The worker may be Ready a moment before its files are on disk.
    let saved = wait_until(SOON, || async {
        ["worker.key", "worker.pem", "ca.pem"]
            .iter()
            .all(|f| dir.path().join(f).exists())
    })
    .await;
    assert!(saved, "the worker keeps its credentials in --data-dir");
    for file in ["worker.key", "worker.pem", "ca.pem"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .expect("credential file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    worker.process.kill9();
    // No token this time: the certificate is the credential.
    let again = Worker::start(
        "pc-r",
        &scheduler,
        &["--data-dir", &data_dir, "--token", ""],
    );
    let ok = ready_at(&scheduler, "pc-r", &again.addr).await;
    assert!(ok, "{:?}", scheduler.workers().await);
    let mut client = scheduler.inference().await;
    client
        .model_infer(image_request(1))
        .await
        .expect("served by the restarted worker");
}

/// Certificates valid for 15 s: the worker renews its certificate online two thirds into
/// it (a new key too), keeps reporting, and its inference port serves the new one: after
/// the first certificate expired, new TLS connections to the worker and inference
/// through the scheduler still work, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_renews_its_certificate_online_before_it_expires() {
    use std::os::unix::fs::PermissionsExt;
    let scheduler = Scheduler::start_with(&format!(
        "{TEST_SCHEDULER_CONFIG}worker_certificate_validity_s: 15\n"
    ));
    let dir = TempDir::new("renew");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let worker = Worker::start("pc-renew", &scheduler, &["--data-dir", &data_dir]);
    scheduler.wait_ready(&["pc-renew"]).await;
    let read = |file: &str| std::fs::read_to_string(dir.path().join(file)).unwrap_or_default();
    assert!(
        wait_until(SOON, || async { !read("worker.pem").is_empty() }).await,
        "the worker saves its certificate"
    );
    let (first_cert, first_key) = (read("worker.pem"), read("worker.key"));
    let first = localml_trust::ca::holder_pem(&first_cert).expect("certificate");
    let validity = first
        .not_after
        .duration_since(first.issued_at())
        .expect("not_after after issue");
    assert!(validity <= Duration::from_secs(16), "{validity:?}");

    // Renewed around 10 s after issue: a new certificate and a new key, still 0600.
    let renewed = wait_until(Duration::from_secs(40), || async {
        localml_trust::ca::holder_pem(&read("worker.pem"))
            .is_ok_and(|h| h.name == "pc-renew" && h.not_after > first.not_after)
    })
    .await;
    assert!(renewed, "no renewed certificate in {data_dir}");
    assert_ne!(
        read("worker.key"),
        first_key,
        "a new key with the new certificate"
    );
    for file in ["worker.key", "worker.pem"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .expect("credential file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }

    // Past the first certificate's end (plus a margin for whole seconds).
    let expired = first.not_after + Duration::from_secs(2);
    if let Ok(left) = expired.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    // A new TLS connection to the worker: it must present the renewed certificate.
    let mut direct = worker.inference().await;
    direct
        .model_infer(image_request(1))
        .await
        .expect("a new connection to the worker after the first certificate expired");
    // Still Ready (its reports use the new certificate), and serving through the scheduler.
    scheduler.wait_ready(&["pc-renew"]).await;
    let mut client = scheduler.inference().await;
    client
        .model_infer(image_request(1))
        .await
        .expect("inference through the scheduler after the renewal");
}

#[tokio::test]
async fn a_workers_inference_port_takes_only_clients_with_a_cluster_certificate() {
    let scheduler = Scheduler::start();
    let worker = Worker::start("pc-i", &scheduler, &[]);
    scheduler.wait_ready(&["pc-i"]).await;
    // Plaintext: refused.
    if let Ok(channel) = Endpoint::from_shared(format!("http://{}", worker.addr))
        .expect("uri")
        .connect()
        .await
    {
        let answer = client_live(channel).await;
        assert!(answer.is_err(), "plaintext answered");
    }
    // TLS that trusts the CA but presents no certificate: refused.
    let ca = std::fs::read_to_string(operator_certificate(&scheduler.addr).ca).expect("ca.pem");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("pc-i");
    let anonymous = Endpoint::from_shared(format!("https://{}", worker.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls");
    let refused = match anonymous.connect().await {
        Ok(channel) => client_live(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client without a certificate was served");
    // A certificate from another CA: refused.
    let other = localml_trust::ca::ClusterCa::generate(std::time::SystemTime::now()).expect("ca");
    let stranger = other
        .issue_operator("stranger", std::time::SystemTime::now())
        .expect("cert");
    let ca = std::fs::read_to_string(operator_certificate(&scheduler.addr).ca).expect("ca.pem");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .identity(Identity::from_pem(stranger.cert_pem, stranger.key_pem))
        .domain_name("pc-i");
    let foreign = Endpoint::from_shared(format!("https://{}", worker.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls");
    let refused = match foreign.connect().await {
        Ok(channel) => client_live(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a client with another CA's certificate was served");
    // Another worker's certificate from this CA (any join-token holder can get one):
    // refused, so nobody bypasses the scheduler's key, model and tenant checks.
    let dir = TempDir::new("peer");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let _peer = Worker::start("pc-peer", &scheduler, &["--data-dir", &data_dir]);
    scheduler.wait_ready(&["pc-peer"]).await;
    let saved = wait_until(SOON, || async { dir.path().join("worker.key").exists() }).await;
    assert!(saved, "the peer keeps its certificate");
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect("credential");
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(read("worker.pem"), read("worker.key")))
        .domain_name("pc-i");
    let channel = Endpoint::from_shared(format!("https://{}", worker.addr))
        .expect("uri")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("TLS admits a certificate from the CA");
    let refused = client_live(channel)
        .await
        .expect_err("a worker called a worker");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    // An operator certificate from `localml certs issue`: served.
    let mut operator = worker.inference().await;
    operator
        .server_live(ServerLiveRequest {})
        .await
        .expect("operator certificate accepted");
}

async fn client_live(channel: Channel) -> Result<(), tonic::Status> {
    localml_proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient::new(
        channel,
    )
    .server_live(ServerLiveRequest {})
    .await
    .map(|_| ())
}

/// First use binds a worker name: once a worker joined as pc-f with a token, another
/// PC with a token cannot take the name while pc-f is off (it would get pc-f's work)
/// until an operator runs `localml workers remove pc-f`; then it joins by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_cannot_take_the_name_of_a_worker_that_is_off_until_it_is_removed() {
    let scheduler = Scheduler::start();
    let mut first = Worker::start("pc-f", &scheduler, &[]);
    scheduler.wait_ready(&["pc-f"]).await;
    first.process.kill9();
    let gone = wait_until(SOON, || async {
        scheduler.worker_state("pc-f").await != Some(localml_proto::localml::v1::WorkerState::Ready)
    })
    .await;
    assert!(gone, "{:?}", scheduler.workers().await);

    // A token join under pc-f's name (no longer live): ALREADY_EXISTS, saying why.
    let token = join_token(&scheduler.addr);
    let join_as_f = || {
        let request = localml_trust::ca::certificate_request("pc-f").expect("csr");
        let mut join = tonic::Request::new(JoinRequest {
            status: Some(status("pc-f")),
            csr_pem: request.cert_pem,
            credentials_only: false,
        });
        join.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        join
    };
    let mut anonymous = ClusterClient::new(cluster_channel(&scheduler, None).await);
    let refused = anonymous.join(join_as_f()).await.expect_err("name bound");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    assert!(
        refused.message().contains("localml workers remove pc-f"),
        "{refused:?}"
    );

    // A new PC with a token waits (it retries) and joins once the name is freed.
    let dir = TempDir::new("pc-f-new");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let second = Worker::start("pc-f", &scheduler, &["--data-dir", &data_dir]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !dir.path().join("worker.pem").exists(),
        "no certificate for a bound name"
    );
    localml(&["workers", "remove", "pc-f", "--server", &scheduler.addr]);
    let joined = ready_at(&scheduler, "pc-f", &second.addr).await;
    assert!(joined, "{:?}", scheduler.workers().await);
    // Its certificate, issued within a second of the removal, is not taken for one of
    // the removed worker's: it keeps reporting past the grace period.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        scheduler.worker_state("pc-f").await,
        Some(localml_proto::localml::v1::WorkerState::Ready),
        "{:?}",
        scheduler.workers().await
    );
}

/// Names are bound to keys, not to certificates: a worker that was off past its
/// certificate's end joins again with its token and the key it kept, and gets its name
/// back without an operator. Names are lowercase (TLS compares names without case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_off_past_its_certificate_rejoins_with_its_token_and_key() {
    let scheduler = Scheduler::start_with(&format!(
        "{TEST_SCHEDULER_CONFIG}worker_certificate_validity_s: 12\n"
    ));
    let dir = TempDir::new("expired");
    let data_dir = dir.path().to_string_lossy().into_owned();
    let mut worker = Worker::start("pc-x", &scheduler, &["--data-dir", &data_dir]);
    scheduler.wait_ready(&["pc-x"]).await;
    assert!(
        wait_until(SOON, || async { dir.path().join("worker.pem").exists() }).await,
        "certificate saved"
    );
    worker.process.kill9();
    let (cert, key) = worker_identity(dir.path());
    let holder = localml_trust::ca::holder_pem(&cert).expect("certificate");
    let expired = holder.not_after + Duration::from_secs(1);
    if let Ok(left) = expired.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left).await;
    }
    // The harness gives it the join token again, as systemd's environment file does.
    let again = Worker::start("pc-x", &scheduler, &["--data-dir", &data_dir]);
    let back = ready_at(&scheduler, "pc-x", &again.addr).await;
    assert!(back, "{:?}", scheduler.workers().await);
    let (new_cert, new_key) = worker_identity(dir.path());
    assert_ne!(new_cert, cert, "a new certificate");
    assert_eq!(new_key, key, "for the key the name is bound to");

    // An upper-case name is refused with the reason, before any certificate is issued.
    let upper = TempDir::new("upper");
    let token = join_token(&scheduler.addr);
    let (code, stderr) = run_worker_until_exit(&scheduler, "PC-X", upper.path(), Some(&token));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("lowercase"), "{stderr}");
}

#[tokio::test]
async fn revoked_tokens_and_removed_workers_are_refused() {
    let scheduler = Scheduler::start();
    let token = localml(&[
        "token",
        "create",
        "--ttl",
        "1h",
        "--description",
        "to revoke",
        "--server",
        &scheduler.addr,
    ])
    .trim()
    .to_string();
    let parsed = localml_trust::token::JoinToken::parse(&token).expect("token format");
    let list = localml(&["token", "list", "--server", &scheduler.addr]);
    assert!(
        list.contains(&parsed.id) && list.contains("to revoke"),
        "{list}"
    );
    let secret = token.rsplit('.').next().expect("secret");
    assert!(!list.contains(secret), "{list}");
    localml(&["token", "revoke", &parsed.id, "--server", &scheduler.addr]);
    assert!(!localml(&["token", "list", "--server", &scheduler.addr]).contains(&parsed.id));

    let dir = TempDir::new("revoked-token");
    let (code, stderr) = run_worker_until_exit(&scheduler, "pc-late", dir.path(), Some(&token));
    assert_ne!(code, Some(0), "{stderr}");
    assert!(stderr.contains("unknown join token"), "{stderr}");
    assert!(
        !stderr.contains(secret),
        "the secret is never logged: {stderr}"
    );

    // `localml workers remove`: the worker's certificate is refused from then on.
    let _gone = Worker::start("pc-gone", &scheduler, &[]);
    scheduler.wait_ready(&["pc-gone"]).await;
    localml(&["workers", "remove", "pc-gone", "--server", &scheduler.addr]);
    let refused = wait_until(SOON, || async {
        scheduler.worker_state("pc-gone").await.is_none()
    })
    .await;
    assert!(refused, "{:?}", scheduler.workers().await);
    // It keeps trying with its revoked certificate and stays out.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        scheduler.worker_state("pc-gone").await.is_none(),
        "{:?}",
        scheduler.workers().await
    );
}
