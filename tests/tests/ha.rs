//! Scheduler high availability on a real etcd: two replicas, three workers reporting to
//! both; kill -9 the leader under load. The other replica takes over the job dispatcher,
//! synchronous requests sent to it all succeed, cordons are shared, no job is lost.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use localml_cli::client;
use localml_proto::localml::v1::jobs_client::JobsClient;
use localml_proto::localml::v1::*;
use localml_store::{Store, StoreAddress};
use localml_tests::*;

const CONFIG: &str =
    "report_interval_ms: 200\nworker_grace_period_ms: 3000\njobs:\n  retry_ms: 200\n";

async fn leader_pid(store: &dyn Store) -> Option<u32> {
    let kv = store.get("leader").await.ok()??;
    let identity = String::from_utf8_lossy(&kv.value).into_owned();
    // host-PID-random
    let mut parts = identity.rsplitn(3, '-');
    parts.next();
    parts.next()?.parse().ok()
}

async fn set_cordon(
    admin: &mut localml_proto::localml::v1::admin_client::AdminClient<client::Connection>,
    worker: &str,
    cordoned: bool,
) {
    admin
        .set_cordon(SetCordonRequest {
            worker: worker.into(),
            cordoned,
        })
        .await
        .expect("set cordon");
}

async fn cordoned_on(scheduler: &Scheduler, name: &str) -> bool {
    scheduler
        .workers()
        .await
        .iter()
        .any(|w| w.status.as_ref().is_some_and(|s| s.name == name) && w.cordoned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_other_replica_takes_over_when_the_leader_dies() {
    let etcd = Etcd::start();
    let address = etcd.store_address("ha");
    let replicas = [
        Scheduler::start_full(CONFIG, &["--store", &address]),
        Scheduler::start_full(CONFIG, &["--store", &address]),
    ];
    let both = format!("{},{}", replicas[0].cluster_addr, replicas[1].cluster_addr);
    let _workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| Worker::start_reporting_to(n, &both, &models_dir(), &["--throttle", "20"]))
        .collect();
    for r in &replicas {
        r.wait_ready(&["w1", "w2", "w3"]).await;
    }
    let store = StoreAddress::parse(&address, std::path::Path::new("/x"))
        .expect("address")
        .open()
        .await
        .expect("open etcd");
    assert!(
        wait_until(SOON, || async {
            leader_pid(store.as_ref()).await.is_some()
        })
        .await,
        "a leader is elected"
    );
    let pid = leader_pid(store.as_ref()).await.expect("leader");
    let (leader, survivor) = match replicas.iter().position(|r| r.process.pid() == pid) {
        Some(0) => (0, 1),
        Some(_) => (1, 0),
        None => panic!("leader pid {pid} is not one of the replicas"),
    };
    let mut replicas = replicas.into_iter().collect::<Vec<_>>();

    // A cordon set through one replica applies on the other.
    let mut admin = replicas[survivor].admin().await;
    set_cordon(&mut admin, "w3", true).await;
    let shared = wait_until(SOON, || cordoned_on(&replicas[leader], "w3")).await;
    assert!(
        shared,
        "the cordon reached the other replica through the store"
    );
    set_cordon(&mut admin, "w3", false).await;
    let cleared = wait_until(SOON, || async {
        !cordoned_on(&replicas[leader], "w3").await
    })
    .await;
    assert!(cleared, "uncordon shared too");

    // Jobs submitted through the survivor, run by the leader.
    let example = &expected_examples()[0];
    let key = replicas[survivor].admin_key();
    let channel = client::connect_with_key(
        &replicas[survivor].addr,
        Duration::from_secs(10),
        Some(&key),
    )
    .await
    .expect("connect");
    let mut jobs = JobsClient::new(channel);
    let ids = submit_jobs(&mut jobs, example, "ha", 60).await;

    // Synchronous load on the survivor throughout the failover.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load: Vec<_> = (0..3)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            let addr = replicas[survivor].addr.clone();
            tokio::spawn(async move {
                let mut oip = inference_client(&addr).await;
                while !stop.load(Ordering::Relaxed) {
                    match oip.model_infer(image_request(1)).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(s) => {
                            eprintln!("sync request failed: {s:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let killed = Instant::now();
    replicas[leader].process.kill9();
    let survivor_pid = replicas[survivor].process.pid();
    let took_over = wait_until(SOON, || async {
        leader_pid(store.as_ref()).await == Some(survivor_pid)
    })
    .await;
    let gap = killed.elapsed();
    assert!(took_over, "the survivor did not take over within {SOON:?}");
    eprintln!(
        "failover gap: {:.2} s from kill -9 to the new leader",
        gap.as_secs_f64()
    );

    let finished = wait_until(Duration::from_secs(120), || async {
        let mut all = true;
        let mut jobs = jobs.clone();
        for id in &ids {
            let job = jobs
                .get(GetJobRequest { id: id.clone() })
                .await
                .map(|r| r.into_inner().state);
            all &= job.ok() == Some(JobState::Succeeded as i32);
        }
        all
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("synchronous requests to the survivor: {ok} succeeded, {failed} failed");
    assert!(finished, "every job submitted before the failover succeeds");
    assert_eq!(
        failed, 0,
        "every synchronous request to the survivor succeeds"
    );
    assert!(ok > 50, "load ran: {ok}");
}

fn worker_state_reason(workers: &[WorkerInfo], name: &str) -> Option<(i32, String)> {
    workers
        .iter()
        .find(|w| w.status.as_ref().is_some_and(|s| s.name == name))
        .map(|w| (w.state, w.state_reason.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_reporting_to_one_replica_is_known_to_all_through_its_lease() {
    let etcd = Etcd::start();
    let address = etcd.store_address("leases");
    let a = Scheduler::start_full(CONFIG, &["--store", &address]);
    let b = Scheduler::start_full(CONFIG, &["--store", &address]);
    // Reaches replica A only (say, B is across a link it cannot use).
    let mut lonely = Worker::start_reporting_to(
        "lonely",
        &a.cluster_addr,
        &models_dir(),
        &["--labels", "room=lab"],
    );
    a.wait_ready(&["lonely"]).await;
    b.wait_ready(&["lonely"]).await;
    // B routes to it from the stored registration.
    let mut request = image_request(1);
    request.parameters.insert(
        "localml.selector".into(),
        localml_proto::inference::InferParameter {
            parameter_choice: Some(
                localml_proto::inference::infer_parameter::ParameterChoice::StringParam(
                    "room=lab".into(),
                ),
            ),
        },
    );
    let response = b
        .inference()
        .await
        .model_infer(request)
        .await
        .expect("B routes to a worker it knows from the store")
        .into_inner();
    assert_eq!(client::served_by(&response).as_deref(), Some("lonely"));
    // The worker dies: nobody renews its lease; B learns it from the store.
    lonely.process.kill9();
    let expired = wait_until(SOON, || async {
        worker_state_reason(&b.workers().await, "lonely").is_some_and(|(state, reason)| {
            state == WorkerState::NotReady as i32 && reason.contains("lease expired")
        })
    })
    .await;
    assert!(
        expired,
        "NotReady on B through the lease: {:?}",
        worker_state_reason(&b.workers().await, "lonely")
    );
    assert!(
        wait_until(SOON, || async {
            a.worker_state("lonely").await == Some(WorkerState::NotReady)
        })
        .await,
        "and on A by its own grace period"
    );
}

/// Submits `n` jobs of `example` (idempotency keys `prefix-i`); their ids.
async fn submit_jobs(
    jobs: &mut JobsClient<client::Connection>,
    example: &Expected,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let job = jobs
            .submit(SubmitJobRequest {
                request: Some(client::request(
                    &example.model,
                    &example.version,
                    &example.inputs,
                )),
                idempotency_key: format!("{prefix}-{i}"),
                ..Default::default()
            })
            .await
            .expect("submit")
            .into_inner();
        ids.push(job.id);
    }
    ids
}

/// Whether the replica whose metrics listener is `http` says it leads (None: no answer).
fn says_it_leads(http: &str) -> Option<bool> {
    let (status, body) = http_get(http, "/metrics")?;
    (status == 200).then_some(())?;
    sample(&body, "localml_scheduler_leader").map(|v| v == 1.0)
}

/// What a job's record says about its end: state, worker, finish time, attempts.
async fn job_ends(
    jobs: &mut JobsClient<client::Connection>,
    ids: &[String],
) -> Vec<(i32, String, u64, u32)> {
    let mut ends = Vec::new();
    for id in ids {
        let job = jobs
            .get(GetJobRequest { id: id.clone() })
            .await
            .expect("get job")
            .into_inner();
        ends.push((job.state, job.worker, job.finished_unix_ms, job.attempts));
    }
    ends
}

/// The leader on its own links (a network namespace), cut off from etcd while it runs
/// jobs, its link to workers and clients still up: it stops acting as leader before the
/// other replica takes over (so no two leaders run jobs), the other does, every job
/// submitted before the cut succeeds, and once the link is back the old leader stands by
/// and no job's record changes again (none ends twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_steps_down_before_the_other_takes_over() {
    let Some(net) = Netns::with_links(2) else {
        return;
    };
    let store_link = &net.links[1];
    let etcd = Etcd::start_also_on(Some(&store_link.host_ip));
    let port = etcd.endpoint.rsplit(':').next().expect("port");
    let over_link = format!("etcd://{}:{port}/partition", store_link.host_ip);
    let a = Scheduler::start_in_netns(CONFIG, &["--store", &over_link, "--http-listen", "0"], &net);
    let a_http = a.http_addr.clone().expect("metrics address");
    let store = StoreAddress::parse(&etcd.store_address("partition"), std::path::Path::new("/x"))
        .expect("address")
        .open()
        .await
        .expect("open etcd");
    let a_pid = a.process.pid();
    assert!(
        wait_until(SOON, || async {
            leader_pid(store.as_ref()).await == Some(a_pid)
        })
        .await,
        "the first replica leads"
    );
    let b = Scheduler::start_full(CONFIG, &["--store", &etcd.store_address("partition")]);
    let both = format!("{},{}", a.cluster_addr, b.cluster_addr);
    // The workers listen on the host's side of the cluster link, which both replicas reach.
    let listen = format!("{}:0", net.host_ip());
    let _workers: Vec<Worker> = ["w1", "w2", "w3"]
        .iter()
        .map(|n| {
            let extra = ["--throttle", "300", "--listen", &listen];
            Worker::start_reporting_to(n, &both, &models_dir(), &extra)
        })
        .collect();
    for r in [&a, &b] {
        r.wait_ready(&["w1", "w2", "w3"]).await;
    }

    let example = &expected_examples()[0];
    let channel = client::connect_with_key(&b.addr, Duration::from_secs(10), Some(&b.admin_key()))
        .await
        .expect("connect");
    let mut jobs = JobsClient::new(channel);
    let ids = submit_jobs(&mut jobs, example, "partition", 60).await;
    let started = wait_until(SOON, || async {
        let ends = job_ends(&mut jobs.clone(), &ids).await;
        ends.iter()
            .filter(|e| e.0 == JobState::Succeeded as i32)
            .count()
            >= 3
    })
    .await;
    assert!(started, "the leader runs jobs");

    // Cut the leader's store link; watch who acts as leader, every 50 ms.
    let cut = Instant::now();
    net.set_link_n(1, false);
    let b_pid = b.process.pid();
    let (mut a_stopped, mut b_leads) = (None, None);
    while cut.elapsed() < SOON && (a_stopped.is_none() || b_leads.is_none()) {
        if a_stopped.is_none() && says_it_leads(&a_http) == Some(false) {
            a_stopped = Some(cut.elapsed());
        }
        if b_leads.is_none() && leader_pid(store.as_ref()).await == Some(b_pid) {
            b_leads = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "after the cut: the old leader stopped at {a_stopped:?}, the other leads at {b_leads:?}"
    );
    let a_stopped = a_stopped.expect("the cut-off leader stops leading");
    let b_leads = b_leads.expect("the other replica takes over");
    assert!(
        a_stopped < b_leads,
        "the cut-off leader stopped at {a_stopped:?}, after the other took over at {b_leads:?}"
    );

    let finished = wait_until(Duration::from_secs(120), || async {
        job_ends(&mut jobs.clone(), &ids)
            .await
            .iter()
            .all(|e| e.0 == JobState::Succeeded as i32)
    })
    .await;
    assert!(finished, "every job submitted before the cut succeeds");
    let ends = job_ends(&mut jobs, &ids).await;
    let rerun = ends.iter().filter(|e| e.3 > 1).count();
    eprintln!(
        "jobs sent to a worker more than once: {rerun} of {}",
        ids.len()
    );

    // The link back: the old leader follows the store again (a cordon set through the
    // other reaches it) and stands by; what it ran during the cut is not recorded again.
    net.set_link_n(1, true);
    let mut admin = b.admin().await;
    set_cordon(&mut admin, "w3", true).await;
    assert!(
        wait_until(SOON, || cordoned_on(&a, "w3")).await,
        "the old leader follows the store again once its link is back"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        says_it_leads(&a_http),
        Some(false),
        "the old leader stands by"
    );
    assert_eq!(leader_pid(store.as_ref()).await, Some(b_pid));
    assert_eq!(
        job_ends(&mut jobs, &ids).await,
        ends,
        "no job's record changed after every job had ended"
    );
}

/// Catalog files with etcd and two replicas: a push is acknowledged once its files are on
/// both (the receiving replica has the other copy them); a file pushed while the other
/// replica was down is fetched from the first when a worker asks the second for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_files_are_kept_on_two_replicas_and_fetched_from_each_other() {
    let etcd = Etcd::start();
    let address = etcd.store_address("blobs");
    let store = StoreAddress::parse(&address, std::path::Path::new("/x"))
        .expect("address")
        .open()
        .await
        .expect("open etcd");
    let registered = |n: usize| {
        let store = Arc::clone(&store);
        async move {
            wait_until(SOON, || async {
                store
                    .list("replicas/")
                    .await
                    .is_ok_and(|(kvs, _)| kvs.len() == n)
            })
            .await
        }
    };
    let a = Scheduler::start_full(CONFIG, &["--store", &address]);
    assert!(registered(1).await, "replica A registers for copies");
    let blob = |s: &Scheduler, sha: &str| s.data_dir().join("blobs/sha256").join(sha);
    let examples = repo_root().join("examples/models");
    let text = examples.join("text_classifier");
    let text_sha = localml_trust::sha256_file(&text.join("2/model.onnx")).expect("hash");
    // Alone, a push is acknowledged with the file on this replica only.
    localml(&[
        "models",
        "push",
        &text.to_string_lossy(),
        "--name",
        "alone",
        "--server",
        &a.addr,
    ]);
    assert!(blob(&a, &text_sha).is_file());

    let mut b = Scheduler::start_full(CONFIG, &["--store", &address]);
    assert!(registered(2).await, "replica B registers for copies");
    let scorer = examples.join("image_scorer");
    localml(&[
        "models",
        "push",
        &scorer.to_string_lossy(),
        "--name",
        "paired",
        "--server",
        &a.addr,
    ]);
    // Acknowledged: both files are on B too, byte for byte.
    for file in ["1/model.onnx", "1/labels.txt"] {
        let bytes = std::fs::read(scorer.join(file)).expect("example");
        let sha = localml_trust::sha256_hex(&bytes);
        let copy = std::fs::read(blob(&b, &sha)).unwrap_or_default();
        assert!(
            copy == bytes,
            "{file} is on replica B when the push returns"
        );
    }
    assert!(!blob(&b, &text_sha).exists(), "pushed before B ran");

    // A worker that reaches B only is assigned "alone": B fetches its file from A.
    let empty = TempDir::new("ha-empty-repository");
    let _w =
        Worker::start_reporting_to("w", &b.cluster_addr, empty.path(), &["--load", "on-demand"]);
    b.wait_ready(&["w"]).await;
    localml(&[
        "deployments",
        "apply",
        "alone",
        "--model",
        "alone",
        "--replicas",
        "1",
        "--server",
        &b.addr,
    ]);
    let serving = wait_until(Duration::from_secs(60), || async {
        b.workers().await.iter().any(|w| {
            w.status
                .as_ref()
                .is_some_and(|s| s.models.iter().any(|m| m.name == "alone"))
        })
    })
    .await;
    assert!(serving, "the worker serves the model B fetched from A");
    assert_eq!(
        std::fs::read(blob(&b, &text_sha)).unwrap_or_default(),
        std::fs::read(text.join("2/model.onnx")).expect("example"),
        "B holds the file now"
    );

    // B dies without a word while its registration still stands: a push to A cannot be
    // put on two replicas, so it is refused as not durable (its files kept for a retry).
    b.process.kill9();
    let out = std::process::Command::new(bin("localml"))
        .args([
            "models",
            "push",
            &examples.join("tensor_stats").to_string_lossy(),
        ])
        .args(["--name", "unpaired", "--server", &a.addr])
        .env("LOCALML_KEY", a.admin_key())
        .output()
        .expect("run localml");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("not durable yet"),
        "{stderr}"
    );

    // A third replica that joins later copies every file the catalog references from the
    // others in the background, with no worker or push asking it (B's registration, dead,
    // still stands: that copy fails and A gives it); not the files of the refused push.
    let c_config = format!("{CONFIG}replica_sync_interval_ms: 1000\n");
    let c = Scheduler::start_full(&c_config, &["--store", &address]);
    let mut referenced = vec![(text_sha.clone(), text.join("2/model.onnx"))];
    for file in ["1/model.onnx", "1/labels.txt"] {
        let path = scorer.join(file);
        referenced.push((localml_trust::sha256_file(&path).expect("hash"), path));
    }
    let synced = wait_until(Duration::from_secs(90), || async {
        referenced
            .iter()
            .all(|(sha, path)| std::fs::read(blob(&c, sha)).ok() == std::fs::read(path).ok())
    })
    .await;
    assert!(
        synced,
        "replica C holds every referenced file, byte for byte"
    );
    let stats_sha =
        localml_trust::sha256_file(&examples.join("tensor_stats/1/model.onnx")).expect("hash");
    assert!(
        blob(&a, &stats_sha).is_file() && !blob(&c, &stats_sha).exists(),
        "the refused push's file stays on A only"
    );
}
